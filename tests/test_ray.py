"""python -m skinlesion predict --ray (skinlesion/ray_batch.py): the same CSV as one process."""
import csv
import shutil
import sys

import numpy as np
import pytest
from conftest import ROOT
from test_batch import run_predict

from skinlesion.tasks import get_task

pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow  # starts a local Ray instance (10-20 s) and two actors


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_ray_writes_the_single_process_csv_row_by_row(tmp_path):
    """13 bundled example images (dermoscopy and steel: some refused), a bad file and a missing
    path, analysed by two actors in batches of 4: the rows come back in input order, as one
    process writes them."""
    folder = tmp_path / "in"
    folder.mkdir()
    for image in [*(ROOT / "assets/examples/ham10000").glob("*.jpg"), *(ROOT / "assets/examples/neu").glob("*")]:
        shutil.copy(image, folder / image.name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    inputs = [folder, tmp_path / "missing.jpg"]
    one = run_predict(*inputs, "--batch-size", "4", "--out", tmp_path / "one.csv")
    assert one.returncode == 0, one.stderr[-2000:]
    spread = run_predict(*inputs, "--batch-size", "4", "--ray", "--workers", "2", "--out", tmp_path / "ray.csv")
    assert spread.returncode == 0, spread.stderr[-2000:]
    expected, rows = read(tmp_path / "one.csv"), read(tmp_path / "ray.csv")
    assert len(rows) == 15 and [r["file"] for r in rows] == [r["file"] for r in expected]
    assert list(rows[0]) == list(expected[0])  # the same columns
    assert sum(bool(r["error"]) for r in rows) == 2 and "13 of 15 files classified" in spread.stderr
    codes = get_task("ham10000").codes
    for got, want in zip(rows, expected):
        # one actor has one CPU (one torch thread), one process two: the last digit may differ
        assert np.allclose([float(got[c] or "nan") for c in codes], [float(want[c] or "nan") for c in codes],
                           atol=1e-5, equal_nan=True), got["file"]
        if want["check_score"]:
            assert abs(float(got["check_score"]) - float(want["check_score"])) <= 2e-4, got["file"]
        for column in ("decided", "verdict", "region", "error", "known", "familiar", "prediction_set", "level",
                       "skin_ita", "skin_tone"):
            assert got[column] == want[column], (got["file"], column)
    assert {r["known"] for r in rows if not r["error"]} == {"0", "1"}  # both answers were exercised


def test_ray_refuses_the_decision_log_and_an_image_taken_for_its_address(tmp_path):
    result = run_predict(ROOT / "assets/examples/ham10000/nv.jpg", "--ray", "--log-db", f"sqlite:///{tmp_path}/l.db",
                         "--out", tmp_path / "r.csv")
    assert result.returncode == 2 and "--log-db is not supported with --ray" in result.stderr
    records = run_predict(ROOT / "assets/examples/ham10000/nv.jpg", "--ray", "--patients", tmp_path / "p.csv",
                          "--out", tmp_path / "r.csv")
    assert records.returncode == 2 and "--patients is not supported with --ray" in records.stderr
    examples = ROOT / "assets/examples"
    misread = run_predict("--ray", examples / "ham10000", examples / "neu", "--out", tmp_path / "r.csv")  # ADDRESS?
    assert misread.returncode == 2 and "put --ray after the images" in misread.stderr


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    from skinlesion.ray_batch import RayMissing, ray_problem, ray_rows
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    assert ray_problem().endswith("pip install -r requirements-ray.txt")
    with pytest.raises(RayMissing, match="requirements-ray.txt"):
        next(ray_rows(None, "ham10000", ["x.jpg"]))
