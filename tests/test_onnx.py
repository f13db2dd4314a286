"""The ONNX Runtime engine: the bundled folders' exports answer as PyTorch does on real images
at batch sizes 1, 8 and 32; a folder without an export answers in PyTorch; the command line's
--engine gives the same CSV; `python -m train.onnx` exports and checks a folder."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, analysed_counting_eager_passes

from skinlesion import Predictor
from skinlesion.models.onnx import ACTIVATION, ONNX_FILE, ONNX_KEY
from skinlesion.tasks import TASKS
from train.onnx import MAP_TOLERANCE, TOLERANCE, parity, parity_images


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_shipped_export_answers_as_pytorch_at_batches_1_8_32(task, bundled_models, bundled_torch_models):
    onnx, torch_ = bundled_models[task], bundled_torch_models[task]
    assert (onnx.engine, torch_.engine) == ("onnx", "torch")
    found = parity(torch_, onnx, parity_images(torch_, None, limit=32))  # one full batch of the largest size
    assert found["max_probability_difference"] <= TOLERANCE and found["decided_known_familiar_identical"], found
    assert ACTIVATION in onnx.runtime.names and found["max_map_difference"] <= MAP_TOLERANCE, found
    assert found["batches"] == [1, 8, 32]


def test_a_folder_without_an_export_answers_in_pytorch(tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(ROOT / "assets" / "models" / "neu", folder, ignore=shutil.ignore_patterns(ONNX_FILE))
    config = json.loads((folder / "config.json").read_text())
    del config[ONNX_KEY]
    (folder / "config.json").write_text(json.dumps(config))
    assert Predictor.from_pretrained(folder).engine == "torch"
    with pytest.raises(ValueError, match="no ONNX model"):
        Predictor.from_pretrained(folder, engine="onnx")
    with pytest.raises(ValueError, match="unknown engine"):
        Predictor.from_pretrained(folder, engine="tensorrt")


def test_a_heat_map_is_drawn_in_pytorch_beside_an_onnx_answer(bundled_models, bundled_torch_models):
    image = sorted((ROOT / "assets" / "examples" / "ham10000").glob("*.jpg"))[0]
    onnx, torch_ = bundled_models["ham10000"], bundled_torch_models["ham10000"]
    for method in (None, "Grad-CAM", "Occlusion"):
        a, b = onnx.analyse(image, method=method), torch_.analyse(image, method=method)
        assert a.decided == b.decided and a.probabilities == pytest.approx(b.probabilities, abs=TOLERANCE)
        assert (a.heatmap is None) == (method is None)
        if method:
            assert abs(a.heatmap - b.heatmap).max() < 1e-3


def test_an_export_without_the_activation_draws_grad_cam_from_an_eager_pass(tmp_path, bundled_torch_models):
    """A folder exported before the last stage's output was an output answers on ONNX Runtime
    and draws its Grad-CAM map from a watched eager pass: the same map."""
    folder = tmp_path / "older"
    shutil.copytree(ROOT / "assets" / "models" / "neu", folder)
    config = json.loads((folder / "config.json").read_text())
    config[ONNX_KEY]["outputs"].remove(ACTIVATION)
    (folder / "config.json").write_text(json.dumps(config))
    older = Predictor.from_pretrained(folder)
    assert older.engine == "onnx" and ACTIVATION not in older.runtime.names
    image = sorted((ROOT / "assets" / "examples" / "neu").glob("*"))[0]
    a, eager_passes = analysed_counting_eager_passes(older, image)
    b = bundled_torch_models["neu"].analyse(image)
    assert eager_passes == 1 and a.decided == b.decided and abs(a.heatmap - b.heatmap).max() < 1e-3


@pytest.mark.slow
def test_the_command_line_gives_the_same_csv_on_either_engine(tmp_path):
    images = sorted((ROOT / "assets" / "examples" / "ham10000").glob("*.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    rows = {}
    for engine in ("onnx", "torch"):
        out = tmp_path / f"{engine}.csv"
        subprocess.run([sys.executable, "-m", "skinlesion", "predict", *map(str, images), str(bad), "--out", str(out),
                        "--engine", engine], check=True, cwd=ROOT, capture_output=True)
        with out.open(newline="") as f:
            rows[engine] = list(csv.DictReader(f))
    codes = TASKS["ham10000"].codes
    assert len(rows["onnx"]) == len(rows["torch"]) == len(images) + 1
    for a, b in zip(rows["onnx"], rows["torch"]):
        assert {k: v for k, v in a.items() if k not in (*codes, "check_score")} == \
            {k: v for k, v in b.items() if k not in (*codes, "check_score")}
        assert all(abs(float(a[c] or 0) - float(b[c] or 0)) <= TOLERANCE for c in codes)


@pytest.mark.slow
@pytest.mark.parametrize("views", [False, True])
def test_train_onnx_exports_checks_and_records_a_folder(views, tmp_path):
    """The plain folder, and one answering on the square's eight symmetries (rotations included)."""
    if views:
        from test_frozen import folder_with_views

        from skinlesion.models.ensemble import VIEWS
        folder = folder_with_views(tmp_path, views=tuple(VIEWS))
    else:
        folder = tmp_path / "neu"
        shutil.copytree(ROOT / "assets" / "models" / "neu", folder, ignore=shutil.ignore_patterns(ONNX_FILE))
    done = subprocess.run([sys.executable, "-m", "train.onnx", str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    entry = json.loads((folder / "config.json").read_text())[ONNX_KEY]
    assert entry["file"] == ONNX_FILE and (folder / ONNX_FILE).is_file() and entry["outputs"][0] == "logits"
    assert entry["parity"]["max_probability_difference"] <= TOLERANCE
    assert Predictor.from_pretrained(folder).engine == "onnx"
