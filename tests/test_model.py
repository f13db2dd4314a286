import json
import logging
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from conftest import trained_looking
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from skinlesion.models.folder import write_atomically, write_json
from skinlesion.models.network import (
    INIT_LITE0,
    INIT_RANDOM,
    LITE_WEIGHTS,
    create_model,
    lite_state_dict,
    load_model_folder,
    save_model_folder,
    transplant_lite,
)
from skinlesion.models.spec import ModelFolderError, read_config, update_config
from skinlesion.tasks import get_task

HAM = get_task("ham10000")
CODES = HAM.codes


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = trained_looking(create_model(len(CODES), image_size=64)).eval()
    save_model_folder(model, tmp_path / "m", HAM, extra={"temperature": 1.3})
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
    loaded, spec = load_model_folder(folder)
    via_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert model(x).std() > 0.01  # a real comparison, not of constant outputs
        assert torch.equal(model(x), loaded(x))
        assert torch.allclose(model(x), via_timm(x), atol=1e-6)
    assert via_timm.pretrained_cfg["label_names"] == CODES
    assert spec.task.key == "ham10000" and spec.input_size == 64 and spec.rule.temperature == 1.3


def test_channels_last_models_save_fine(tmp_path):
    model = trained_looking(create_model(7, image_size=32)).to(memory_format=torch.channels_last).eval()
    save_model_folder(model, tmp_path / "m", HAM)
    loaded, _ = load_model_folder(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)


def test_config_that_does_not_match_the_weights_fails_clearly(saved):
    _, folder = saved
    config = read_config(folder)
    config.update(architecture="efficientnet_lite0")  # B0's weights, without squeeze-excite
    (folder / "config.json").write_text(json.dumps(config))
    mismatch = r"weights do not match config.json \(efficientnet_lite0, 7 classes\).*se\."
    with pytest.raises(ModelFolderError, match=mismatch):
        load_model_folder(folder)
    config.update(architecture="efficientnet_b0", num_classes=6, label_names=CODES[:6])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"labels \[.*\] are not the classes of task 'ham10000'"):
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


def offline(monkeypatch):
    monkeypatch.setattr("skinlesion.models.hub.hub_constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")


def test_pretrained_without_hub_transplants_lite0_weights(monkeypatch, caplog):
    offline(monkeypatch)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO):
        model = create_model(7, pretrained=True, image_size=32)
    assert time.perf_counter() - started < 30
    assert model.initialisation == INIT_LITE0 and model.num_classes == 7
    assert "transplanted the EfficientNet-Lite0 weights" in caplog.text
    source = lite_state_dict()
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.conv_head.weight, source["_conv_head.weight"])
    assert torch.equal(model.bn2.running_var, source["_bn1.running_var"])  # Lite0 names the head BN _bn1


def test_pretrained_without_hub_or_package_falls_back_to_random_with_a_message(monkeypatch, caplog):
    offline(monkeypatch)
    monkeypatch.setitem(LITE_WEIGHTS, "efficientnet_b0", ("no_such_weights_package", "models/x.pth"))
    with caplog.at_level(logging.WARNING):
        model = create_model(7, pretrained=True, image_size=32)
    assert model.initialisation == INIT_RANDOM
    assert "not from the Hub" in caplog.text and "no_such_weights_package is not installed" in caplog.text
    assert "training from random initialisation instead" in caplog.text


def grace_hopper_top3(model, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[int]:
    """ImageNet top-3 classes of matplotlib's bundled photograph (ImageNet mean/std at 224 px unless told)."""
    image = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    x = torch.tensor(np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))).permute(2, 0, 1) / 255
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        return model.eval()(x[None])[0].topk(3).indices.tolist()


@pytest.mark.parametrize("architecture, args", [("efficientnet_lite0", {}),
                                                ("efficientnet_b0", {"act_layer": "relu6"})])
def test_transplanted_weights_land_in_the_right_places(architecture, args):
    """A wrong mapping still trains (just worse), so check the function: with its 1,000-class
    head, the transplant must recognise ImageNet classes in a photograph of Grace Hopper in
    uniform: suit (834), military uniform (652), bow tie (457) — for Lite0 itself, and for B0
    with Lite0's activation, whose squeeze-excite gates start as an exact identity."""
    model = timm.create_model(architecture, num_classes=1000, **args)
    transplant_lite(model, lite_state_dict())
    assert grace_hopper_top3(model) == [834, 652, 457]


@pytest.mark.parametrize("architecture", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_larger_lites_transplant_and_see_the_uniform(architecture):
    """Lite1 and Lite2 from their packages, at their native sizes with their own (TF) mean/std:
    military uniform (652) first."""
    model = timm.create_model(architecture, num_classes=1000)
    transplant_lite(model, lite_state_dict(architecture))
    cfg = model.pretrained_cfg
    assert grace_hopper_top3(model, cfg["input_size"][-1], cfg["mean"], cfg["std"])[0] == 652


def test_transplant_refuses_a_model_it_does_not_fit():
    with pytest.raises(ValueError, match="does not fit|tensors to copy"):
        transplant_lite(timm.create_model("efficientnet_b1", num_classes=7), lite_state_dict())


def test_new_head_starts_at_uniform_probabilities():
    model = create_model(7, image_size=32).train()
    logits = model(torch.randn(4, 3, 32, 32))
    assert torch.allclose(logits, torch.zeros_like(logits))


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path):
    """skinlesion/models/folder.py: every model-folder file (and the checkpoint) is written this way."""
    path = tmp_path / "config.json"
    write_json(path, {"temperature": 1.0})

    def broken(tmp):
        tmp.write_text('{"temper')
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, broken)
    assert json.loads(path.read_text()) == {"temperature": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"] and path.stat().st_mode & 0o777 == 0o644
