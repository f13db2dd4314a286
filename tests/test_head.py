"""A model's classifier trained again on its frozen features (train/head.py)."""
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import ROOT, run_train

from skinlesion import Predictor
from skinlesion.models.card import card_body, read_metrics
from skinlesion.models.network import WEIGHTS_FILE
from skinlesion.models.spec import read_spec
from skinlesion.ops.record import sha256
from train.head import augmented, fit_head
from train.loop import class_weights


def test_inverse_class_weights_give_a_rare_class_more_of_the_decision():
    """Two overlapping classes, one 20 times rarer: the inverse weights recall more of the rare one."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.concatenate([rng.normal(0, 1, (2000, 4)), rng.normal(1, 1, (100, 4))]), dtype=torch.float32)
    y = torch.as_tensor(np.r_[np.zeros(2000), np.ones(100)], dtype=torch.int64)
    recall = {}
    for scheme in ("none", "inverse"):
        head = torch.nn.Linear(4, 2)
        torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
        fit_head(head, x, y, class_weights(y.numpy(), 2, scheme), epochs=20, lr=1e-2, smoothing=0.0, seed=0)
        with torch.no_grad():
            recall[scheme] = (head(x[y == 1]).argmax(1) == 1).float().mean().item()
    assert recall["none"] < 0.3 < 0.6 < recall["inverse"], recall


def test_the_augmented_passes_are_the_runs_augmentation_repeatable_by_seed():
    spec = read_spec(ROOT / "assets" / "models" / "ham10000")  # its run's acquisition shift, from config.json
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (spec.input_size, spec.input_size, 3), dtype=np.uint8) for _ in range(4)]
    first, again, other = (augmented(images, spec, seed) for seed in (3, 3, 4))
    assert all(a.shape == i.shape and a.dtype == np.uint8 for a, i in zip(first, images))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert not all(np.array_equal(a, i) for a, i in zip(first, images))


@pytest.mark.slow  # the command line in a new process: the split decoded, features, a folder written
def test_the_head_trains_again_and_the_network_stays(tiny_run, tmp_path):
    data, source = tiny_run.parent / "ham", tiny_run / "model"
    out = tmp_path / "head"
    result = run_train("--model", source, "--data", data, "--out", out, "--passes", "1", "--epochs", "2",
                       "--lr", "1e-2", module="train.head")
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = (safetensors.torch.load_file(f / WEIGHTS_FILE) for f in (source, out))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}, changed
    record = json.loads((out / "config.json").read_text())["training"]["head"]
    assert record["sha256"] == sha256(source / WEIGHTS_FILE) and record["passes"] == 1
    assert record["class_weights"] == "inverse"
    spec = read_spec(out)
    assert spec.preprocessing == read_spec(source).preprocessing
    assert f"frozen features of the folder `run` (sha256 {record['sha256'][:12]}…)" in card_body(
        spec, read_metrics(source))
    assert Predictor.from_pretrained(out).analyse(next(data.glob("**/*.jpg")), method=None).decided in spec.codes
