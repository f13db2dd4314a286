import json
import logging
import time

import pytest
import safetensors.torch
import timm
import torch

from conftest import trained_looking
from skinlesion.classes import class_codes
from skinlesion.model import (ModelFolderError, create_model, load_model_folder, read_config,
                              save_model_folder, update_config)

CODES = class_codes()


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = trained_looking(create_model(len(CODES), image_size=64)).eval()
    save_model_folder(model, tmp_path / "m", CODES, "cc-by-nc-sa-4.0", extra={"task": "ham10000", "temperature": 1.3})
    return model, tmp_path / "m"


def test_folder_is_in_timm_hub_format(saved):
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "efficientnet_b0" and config["num_classes"] == 7
    assert config["label_names"] == CODES and config["temperature"] == 1.3
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 64, 64] and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash"
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert cfg["license"] == "cc-by-nc-sa-4.0"


def test_round_trip_gives_identical_outputs_also_through_timm(saved):
    model, folder = saved
    x = torch.randn(2, 3, 64, 64)
    loaded, config = load_model_folder(folder)
    via_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert model(x).std() > 0.01  # a real comparison, not of constant outputs
        assert torch.equal(model(x), loaded(x))
        assert torch.allclose(model(x), via_timm(x), atol=1e-6)
    assert via_timm.pretrained_cfg["label_names"] == CODES
    assert config["task"] == "ham10000"


def test_channels_last_models_save_fine(tmp_path):
    model = trained_looking(create_model(7, image_size=32)).to(memory_format=torch.channels_last).eval()
    save_model_folder(model, tmp_path / "m", CODES, "cc-by-nc-sa-4.0")
    loaded, _ = load_model_folder(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)


def test_config_that_does_not_match_the_weights_fails_clearly(saved):
    _, folder = saved
    config = read_config(folder)
    config.update(num_classes=6, label_names=CODES[:6])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"weights do not match config.json \(efficientnet_b0, 6 classes\).*classifier"):
        load_model_folder(folder)


def test_label_count_mismatch_and_missing_files_are_named(saved, tmp_path):
    _, folder = saved
    update_config(folder, label_names=CODES[:5])
    with pytest.raises(ModelFolderError, match="5 label_names but num_classes = 7"):
        load_model_folder(folder)
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_model_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="has no config.json"):
        load_model_folder(tmp_path / "empty")


def test_weights_are_safetensors_only(saved):
    _, folder = saved
    state = safetensors.torch.load_file(folder / "model.safetensors")
    assert state["classifier.weight"].shape == (7, 1280)
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pth"))


def test_pretrained_without_hub_falls_back_quickly_with_a_message(monkeypatch, caplog):
    monkeypatch.setattr("skinlesion.model.hub_constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        model = create_model(7, pretrained=True, image_size=32)
    assert time.perf_counter() - started < 30
    assert "ImageNet weights for efficientnet_b0 could not be loaded" in caplog.text
    assert "training from random initialisation instead" in caplog.text
    assert model.num_classes == 7


def test_new_head_starts_at_uniform_probabilities():
    model = create_model(7, image_size=32).train()
    logits = model(torch.randn(4, 3, 32, 32))
    assert torch.allclose(logits, torch.zeros_like(logits))
