"""A network that takes the patient's record as an input, trained end to end (train/recordnet.py)."""
import json

import numpy as np
import pytest
import torch
from conftest import run_train

from skinlesion.patient import Patient
from train import recordnet
from train.recordnet import RecordNetwork, dropped


def test_the_record_network_starts_as_the_cnn_and_its_record_part_changes_the_answer():
    """At first the record adds nothing (its last layer is zero); once that layer is not zero,
    two records give two answers for the same image."""
    cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    cnn.pretrained_cfg, cnn.num_classes = {}, 3
    net = RecordNetwork(cnn, 4).eval()
    x, records = torch.randn(2, 3, 2, 2), torch.eye(4)[:2]
    with torch.no_grad():
        assert torch.equal(net(x, records), cnn(x))
        torch.nn.init.normal_(net.record[-1].weight)
        answers = net(x[:1].repeat(2, 1, 1, 1), records)
    assert not torch.allclose(answers[0], answers[1])


def test_fields_are_dropped_each_on_its_own_and_never_invented():
    rng = np.random.default_rng(0)
    whole = [Patient(age=50.0, sex="male", site="back")] * 3000
    given = dropped(whole, 0.3, rng)
    for field in ("age", "sex", "site"):
        kept = np.mean([getattr(p, field) is not None for p in given])
        assert 0.66 < kept < 0.74, (field, kept)
    assert np.mean([not p.given for p in given]) == pytest.approx(0.3 ** 3, abs=0.01)
    assert dropped([Patient()], 0.0, rng) == [Patient()] and dropped(whole[:5], 0.0, rng) == whole[:5]
    assert all(not p.given for p in dropped(whole[:5], 1.0, rng))


@pytest.mark.slow  # the command line in a new process: a network trained with its records, then a table
def test_the_record_network_is_measured_beside_the_record_as_it_ships(tiny_run, tmp_path):
    data, source = tiny_run.parent / "ham", tiny_run / "model"
    out, weights = tmp_path / "recordnet.md", tmp_path / "recordnet.pt"
    before = (source / "config.json").read_text()
    result = run_train("--model", source, "--data", data, "--out", out, "--epochs", "2", "--weights", weights,
                       module="train.recordnet")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in out.read_text().splitlines()[2:]]
    assert rows == ["image", "image + record (ships)", "record network, no record", "record network",
                    "record network, no record + record"]
    assert "— |" in out.read_text().splitlines()[3]  # the record as it ships is the reference row
    rows = json.loads(out.with_suffix(".json").read_text())  # what train.report renders into docs/results.md
    assert rows[1]["val_ba_delta"] == 0 and all(0 <= r["test_ba"] <= 1 for r in rows)
    assert rows[3]["train_minutes"] > 0 and rows[0]["train_minutes"] is None
    kept = torch.load(weights, weights_only=False)
    assert [h["epoch"] for h in kept["history"]] == [1, 2] and "record.2.weight" in kept["state_dict"]
    assert (source / "config.json").read_text() == before  # measured, not served


def test_a_folder_without_a_record_model_is_named_at_once(model_folder, tmp_path):
    """The teacher is the folder's own answer with the record: a folder with none cannot teach,
    which is said before the data is read (here there is none to read)."""
    with pytest.raises(SystemExit) as ended:
        recordnet.main(["--model", str(model_folder), "--data", str(tmp_path / "none"),
                        "--out", str(tmp_path / "t.md")])
    assert str(ended.value.code) == (f"python -m train.recordnet: {model_folder} has no record model "
                                     "(python -m train.patient fits one)")
    assert not (tmp_path / "t.md").exists()
