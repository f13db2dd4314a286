"""Answer size: a folder answers at its `test_input_size` (timm's key), and `python -m train.resolution`
chooses it on validation, keeping the training size unless a larger one wins by more than one image."""
import json
import shutil

import numpy as np
import pytest
import torch

from skinlesion import Predictor
from skinlesion.models.spec import read_config, read_spec, update_config
from skinlesion.transforms import model_input
from train import resolution


def test_a_folder_answers_at_its_test_input_size(model_folder, tmp_path, photo):
    folder = tmp_path / "larger"
    shutil.copytree(model_folder, folder)
    cfg = read_config(folder)["pretrained_cfg"]
    update_config(folder, pretrained_cfg={**cfg, "test_input_size": [3, 80, 80]})
    predictor = Predictor.from_pretrained(folder)
    assert predictor.spec.input_size == 80 and read_spec(model_folder).input_size == 64
    x = model_input([photo], predictor.spec)
    assert x.shape[-2:] == (80, 80)
    with torch.no_grad():
        expected = torch.softmax(predictor.primary(x) / predictor.spec.rule.temperature, -1)[0].numpy()
    seen = []
    predictor.primary.register_forward_pre_hook(lambda _, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    assert np.allclose(list(predictor.predict(photo).values()), expected, atol=1e-5)
    assert seen == [(80, 80)]  # what the network was given, not only what model_input makes


def test_a_larger_size_must_win_by_more_than_one_image_of_the_rarest_class():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 4)
    step = resolution.smallest_step(labels)
    assert step == pytest.approx(1 / (3 * 4))
    rows = [{"size": 224, "val_ba": 0.70}, {"size": 256, "val_ba": 0.70 + step / 2}, {"size": 288, "val_ba": 0.69}]
    assert resolution.best_size(rows, 224, step) == 224
    rows[2]["val_ba"] = 0.70 + 1.5 * step
    assert resolution.best_size(rows, 224, step) == 288


def test_train_resolution_measures_each_size_and_writes_the_chosen_one(model_folder, ham_folder, tmp_path):
    out, table = tmp_path / "out", tmp_path / "resolution.md"
    assert resolution.main(["--model", str(model_folder), "--data", str(ham_folder), "--sizes", "48", "80",
                            "--out", str(out), "--table", str(table)]) == 0
    written = json.loads(table.with_suffix(".json").read_text())
    rows = written["rows"]
    assert [r["size"] for r in rows] == [48, 64, 80]  # the training size is always measured
    assert all(0 <= r["val_ba"] <= 1 and 0 <= r["test_ba"] <= 1 and r["p50_ms"] > 0 for r in rows)
    record = read_config(out)["resolution"]
    chosen = resolution.best_size(rows, 64, record["smallest_step"])
    assert record["trained"] == 64 and record["answers"] == chosen == read_spec(out).input_size == written["chosen"]
    assert record["validation"] == {str(r["size"]): round(r["val_ba"], 4) for r in rows}
    assert read_config(out)["pretrained_cfg"]["input_size"] == [3, 64, 64]
    assert ("test_input_size" in read_config(out)["pretrained_cfg"]) == (chosen != 64)
    assert "(chosen)" in next(line for line in table.read_text().splitlines() if line.startswith(f"| {chosen} px"))
