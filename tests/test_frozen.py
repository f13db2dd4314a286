"""PyTorch's frozen TorchScript graph (skinlesion/models/frozen.py): it answers as the eager
modules do on real images at batches 1, 8 and 32, for one model and for an ensemble of mirror
views, with the input check's features of the plain view alone; Grad-CAM draws from the frozen
pass's own last-stage output, as the eager pass draws; a network TorchScript cannot trace
answers eagerly, with a warning."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, analysed_counting_eager_passes

from skinlesion import Predictor
from skinlesion.models.onnx import ACTIVATION, ONNX_FILE, ONNX_KEY
from skinlesion.tasks import TASKS
from train.onnx import MAP_TOLERANCE, TOLERANCE, parity, parity_images


def folder_with_views(tmp_path, task: str = "neu", views: tuple[str, ...] = ("plain", "hflip", "vflip")):
    """A copy of the task's bundled folder answering on `views` (by default plain, mirrored both ways)."""
    folder = tmp_path / "views"
    shutil.copytree(ROOT / "assets" / "models" / task, folder, ignore=shutil.ignore_patterns(ONNX_FILE))
    config = json.loads((folder / "config.json").read_text())
    config.pop(ONNX_KEY, None)
    config["ensemble"] = {"temperature": 1.0, "views": list(views), "members": []}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_frozen_graph_answers_as_the_eager_modules(task, bundled_torch_models):
    frozen, eager = bundled_torch_models[task], Predictor.from_pretrained(task=task, engine="eager")
    assert (frozen.engine, eager.engine, eager.runtime) == ("torch", "eager", None)
    found = parity(eager, frozen, parity_images(eager, None, limit=8))
    assert found["max_probability_difference"] <= TOLERANCE and found["decided_known_familiar_identical"], found
    assert found["max_map_difference"] <= MAP_TOLERANCE, found
    assert frozen.runtime.graph() is not None  # the frozen graph answered, not the eager fallback


def test_mirror_views_frozen_answer_as_eager_with_the_plain_views_features(tmp_path):
    folder = folder_with_views(tmp_path)
    frozen, eager = Predictor.from_pretrained(folder), Predictor.from_pretrained(folder, engine="eager")
    assert frozen.engine == "torch" and frozen.net.passes == 3
    images = parity_images(eager, None, limit=6)
    found = parity(eager, frozen, images)
    assert found["max_probability_difference"] <= TOLERANCE and found["decided_known_familiar_identical"], found
    assert found["max_map_difference"] <= MAP_TOLERANCE, found
    x = frozen.prepare(images[0]).x
    logits, features = frozen.runtime(torch.cat([x, x]))
    activation = features.pop(ACTIVATION)
    with eager.trust.recording(), eager.grad_cam.keeping() as kept:
        with torch.inference_mode():
            expected_logits = eager.net(torch.cat([x, x]))
        expected = eager.trust.features(last=True)
    assert torch.allclose(logits, expected_logits, atol=1e-4)
    assert activation.shape == kept.activation.shape and activation.shape[0] == 2  # the plain view's
    assert torch.allclose(activation, kept.activation, atol=1e-3, rtol=1e-3)
    assert set(features) == set(expected)  # one row per image: the plain view's, not the mirrors'
    for name, rows in features.items():
        assert rows.shape == expected[name].shape and rows.shape[0] == 2
        assert torch.allclose(rows, expected[name], atol=1e-3, rtol=1e-3), name
    a, b = frozen.analyse(images[0], method=None), eager.analyse(images[0], method=None)
    assert a.similar and [n.index for n in a.similar] == [n.index for n in b.similar]


def test_the_squares_eight_symmetries_frozen_answer_as_eager(tmp_path):
    from skinlesion.models.ensemble import VIEWS
    folder = folder_with_views(tmp_path, views=tuple(VIEWS))
    frozen, eager = Predictor.from_pretrained(folder), Predictor.from_pretrained(folder, engine="eager")
    assert frozen.net.passes == 8 and frozen.runtime.graph() is not None
    found = parity(eager, frozen, parity_images(eager, None, limit=4))
    assert found["max_probability_difference"] <= TOLERANCE and found["decided_known_familiar_identical"], found


@pytest.mark.parametrize("views", [False, True])
def test_grad_cam_draws_from_the_frozen_pass_without_an_eager_one(views, bundled_torch_models, tmp_path):
    """The map comes from the answer's own frozen pass (its last-stage output through the head
    again): no eager pass of the network runs, and the map is the eager pass's."""
    folder = folder_with_views(tmp_path, "ham10000") if views else ROOT / "assets" / "models" / "ham10000"
    frozen = Predictor.from_pretrained(folder, engine="torch") if views else bundled_torch_models["ham10000"]
    eager = Predictor.from_pretrained(folder, engine="eager")
    image = sorted((ROOT / "assets" / "examples" / "ham10000").glob("*.jpg"))[0]
    assert frozen.runtime.graph() is not None and ACTIVATION in frozen.runtime.names
    a, eager_passes = analysed_counting_eager_passes(frozen, image)
    b = eager.analyse(image)
    assert eager_passes == 0 and a.method == b.method == "Grad-CAM" and a.decided == b.decided
    assert a.heatmap.shape == b.heatmap.shape and a.heatmap.max() > 0.5
    assert np.abs(a.heatmap - b.heatmap).max() < 1e-4
    for target in frozen.codes[:2]:  # another class's map from the same pass
        assert np.abs(frozen.analyse(image, target=target).heatmap - eager.analyse(image, target=target).heatmap
                      ).max() < 1e-4


def test_a_network_torchscript_cannot_trace_answers_eagerly(tmp_path, monkeypatch, caplog):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("this network cannot be traced")
    monkeypatch.setattr(torch.jit, "trace", refuse)
    folder = folder_with_views(tmp_path)
    predictor, eager = Predictor.from_pretrained(folder), Predictor.from_pretrained(folder, engine="eager")
    image = parity_images(eager, None, limit=1)[0]
    with caplog.at_level(logging.WARNING, logger="skinlesion.models.frozen"):
        a = predictor.analyse(image, method=None)
    assert predictor.runtime.graph() is None and "could not be frozen" in caplog.text
    b = eager.analyse(image, method=None)
    assert a.decided == b.decided and a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
