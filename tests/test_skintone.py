"""Estimated skin tone (skinlesion/skintone.py) and the results by subgroup (train/subgroups.py)."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import make_ham_folder, run_train

from skinlesion import skintone


def test_the_colour_conversion_and_the_angle_follow_their_definitions():
    lab = skintone.srgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 0]], np.uint8))
    assert np.allclose(lab[0], [100, 0, 0], atol=0.05)
    assert np.allclose(lab[1], [53.24, 80.09, 67.20], atol=0.05)  # sRGB red, D65 (CIE 1976)
    assert np.allclose(lab[2], [0, 0, 0], atol=0.05)
    assert skintone.ita(60.0, 10.0) == pytest.approx(45.0)
    assert skintone.ita(50.0, 20.0) == pytest.approx(0.0)
    groups = [skintone.group(a) for a in (56, 55, 42, 29, 11, -29, -31)]
    assert groups == ["very light", "light", "light", "intermediate", "tan", "brown", "dark"]
    assert skintone.group(None) is None


def test_the_serving_estimate_reads_the_skin_around_a_centred_lesion():
    """A dark lesion in the middle of light-brown skin: the ring (no mask) and the mask-based
    estimate agree, and neither is moved by the lesion."""
    skin = np.array([190, 140, 110], np.uint8)
    image = np.tile(skin, (300, 400, 1))
    lesion = np.zeros((300, 400), bool)
    lesion[90:210, 120:280] = True
    image[lesion] = (60, 35, 30)
    by_mask, served = skintone.skin_ita(image, lesion), skintone.estimate(image)
    plain = skintone.ita(*skintone.srgb_to_lab(skin[None])[0, [0, 2]])
    assert by_mask == pytest.approx(plain, abs=0.01) and served == pytest.approx(plain, abs=0.01)
    assert skintone.skin_ita(np.zeros((300, 400, 3), np.uint8)) is None  # nothing but vignette


@pytest.mark.slow
def test_subgroup_figures_can_be_recomputed_from_the_predictions_and_the_metadata(tiny_run, tmp_path):
    """python -m train.subgroups on a copy of a trained folder: metrics.json's figures of one
    group (female, test split) come back from predictions.csv and the metadata alone; the card
    shows the subgroup tables."""
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    data = make_ham_folder(tmp_path / "ham", per_class=70)
    metadata = data / "HAM10000_metadata.csv"
    with metadata.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row.update(sex=("female", "male")[i % 2], age=("35", "65", "")[i % 3])
    with metadata.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_train("--model", model, "--data", data, "--out", tmp_path / "out", module="train.subgroups")
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((model / "metrics.json").read_text())["subgroups"]
    assert found["attributes"] == ["age", "sex", "site", "skin tone"]
    female = found["splits"]["test"]["sex"]["female"]
    sex = {r["image_id"]: r["sex"] for r in rows}
    with (tmp_path / "out" / "predictions.csv").open(newline="") as f:
        mine = [r for r in csv.DictReader(f) if r["split"] == "test" and sex[r["image_id"]] == "female"]
    assert female["n"] == len(mine) >= 30
    labels = np.array([r["label"] for r in mine])
    decided = np.array([r["decided"] for r in mine])
    recall = [np.mean(decided[labels == c] == c) for c in female["classes"]]
    assert female["balanced_accuracy"]["value"] == pytest.approx(np.mean(recall))
    assert female["set_coverage"]["value"] == pytest.approx(np.mean([int(r["in_set"]) for r in mine]))
    low, high = female["balanced_accuracy"]["low"], female["balanced_accuracy"]["high"]
    assert low <= female["balanced_accuracy"]["value"] <= high
    assert found["splits"]["test"]["age"]["unknown"]["n"] > 0 and list(found["splits"]["test"]["age"])[-1] == "unknown"
    assert sum(found["training_counts"]["sex"].values()) == sum(found["training_counts"]["skin tone"].values()) > 0
    card = (model / "README.md").read_text()
    assert "### By subgroup" in card and "**sex**" in card and (model / "subgroups.png").is_file()
