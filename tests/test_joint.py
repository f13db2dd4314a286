"""The patient's record learnt together with the image's features (train/joint.py)."""
import json

import numpy as np
import pytest
import torch
from conftest import run_train

from train import joint, recordnet
from train.head import fit_head
from train.joint import JointHead


def test_the_joint_head_starts_as_the_network_and_learns_what_only_the_record_says():
    """Features that say nothing and a record column that says everything: the joint head answers
    as the network's classifier until trained, then from the record; trained alone at the image
    part's rate, the record's part would barely move (why it has its own)."""
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.integers(0, 2, 2000))
    features = torch.as_tensor(rng.normal(0, 1, (2000, 8)), dtype=torch.float32)
    record = torch.nn.functional.one_hot(y, 2).float()
    x = torch.cat([features, record], 1)
    image = torch.nn.Linear(8, 2)
    joint = JointHead(image, 2)
    with torch.no_grad():
        assert torch.allclose(joint(x), image(features), atol=1e-6)
    recall = {}
    for rate in (1e-4, 1e-2):
        joint = JointHead(image, 2)
        fit_head(joint, x, y, torch.ones(2), epochs=20, lr=1e-4, smoothing=0.0, seed=0,
                 groups=[{"params": joint.image.parameters()}, {"params": joint.record.parameters(), "lr": rate}])
        with torch.no_grad():
            recall[rate] = (joint(x).argmax(1) == y).float().mean().item()
    assert recall[1e-4] < 0.7 < 0.95 < recall[1e-2], recall


@pytest.mark.slow  # the command line in a new process: features, two heads, the record fitted, a table
def test_the_joint_head_is_measured_beside_the_record_as_it_ships(tiny_run, tmp_path):
    data, source = tiny_run.parent / "ham", tiny_run / "model"
    out = tmp_path / "joint.md"
    before = (source / "config.json").read_text()
    result = run_train("--model", source, "--data", data, "--out", out, "--passes", "1", "--epochs", "2",
                       module="train.joint")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in out.read_text().splitlines()[2:]]
    assert rows == ["image", "image + record (ships)", "head again", "head again + record", "joint head"]
    assert "— |" in out.read_text().splitlines()[3]  # the record as it ships is the reference row
    rows = json.loads(out.with_suffix(".json").read_text())  # what train.report renders into docs/results.md
    assert [r["lever"] for r in rows][4] == "joint head"
    assert rows[1]["val_ba_delta"] == 0 and all(0 <= r["test_ba"] <= 1 for r in rows)
    assert (source / "config.json").read_text() == before  # measured, not served


@pytest.mark.parametrize("command", [joint, recordnet], ids=["joint", "recordnet"])
def test_a_missing_folder_or_data_is_named_in_one_line(command, tmp_path):
    """Both commands read the folder and its records alike (train.joint.WithRecords): what is
    missing ends the command with one line naming it (SystemExit's message: no traceback)."""
    for args, said in ((["--model", tmp_path / "none", "--data", tmp_path], "model folder not found"),
                       (["--model", "assets/models/ham10000", "--data", tmp_path / "none"], "No such file")):
        with pytest.raises(SystemExit) as ended:
            command.main([*map(str, args), "--out", str(tmp_path / "t.md")])
        message = str(ended.value.code)
        assert said in message and message.startswith(f"python -m train.{command.__name__.split('.')[-1]}: ")
        assert "\n" not in message
    assert not (tmp_path / "t.md").exists()
