"""The bundled default model (assets/model): it loads on the CPU, carries its calibration,
and its card tells the truth — checked on a fixed, committed list of test-split images."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from conftest import REAL_HAM, needs_real_ham
from skinlesion import Predictor
from skinlesion.inference import BUNDLED_MODEL
from skinlesion.model import read_card

TEST_IDS = Path(__file__).parent / "fixtures" / "bundled_model_test_ids.txt"


@pytest.fixture(scope="module")
def bundled():
    return Predictor.from_pretrained()


def card_results() -> dict[str, float]:
    meta, _ = read_card(BUNDLED_MODEL)
    return {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}


def test_bundled_model_loads_with_its_calibration(bundled):
    assert bundled.folder == BUNDLED_MODEL and bundled.device.type == "cpu"
    assert bundled.codes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert bundled.temperature > 0 and set(bundled.thresholds) == {"akiec", "bcc", "mel"}
    meta, body = read_card(BUNDLED_MODEL)
    assert meta["library_name"] == "timm" and meta["license"] == "cc-by-nc-sa-4.0"
    assert meta["model_status"] in ("placeholder", "release")
    assert "Intended use" in body and "Limitations of the data" in body


def test_card_and_metrics_json_give_the_same_numbers():
    test = json.loads((BUNDLED_MODEL / "metrics.json").read_text())["splits"]["test"]
    results = card_results()
    assert results["balanced_accuracy"] == round(test["balanced_accuracy"], 4)
    assert results["accuracy"] == round(test["accuracy"], 4)
    assert len(TEST_IDS.read_text().split()) == test["n"]


@needs_real_ham
def test_balanced_accuracy_on_the_committed_test_ids_matches_the_card(bundled):
    with (REAL_HAM / "HAM10000_metadata.csv").open(newline="") as f:
        labels = {row["image_id"]: row["dx"] for row in csv.DictReader(f)}
    ids = TEST_IDS.read_text().split()
    truth = [labels[i] for i in ids]
    predicted = []
    for image_id in ids:
        probs = bundled.predict(REAL_HAM / "images" / f"{image_id}.jpg")
        predicted.append(max(probs, key=probs.get))
    score = balanced_accuracy_score(truth, predicted)
    assert score == pytest.approx(card_results()["balanced_accuracy"], abs=0.01)
    assert np.mean(np.array(truth) == np.array(predicted)) == pytest.approx(card_results()["accuracy"], abs=0.01)
