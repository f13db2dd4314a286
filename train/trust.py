"""The input check fitted and measured, and the reference gallery chosen (skinlesion/trust/check.py).

    features = forward_all(net, spec, images, options)            # logits + FeatureTap features
    check, report = fit_check(spec, features, splits, options)    # called by train/evaluate.py

The check is fitted on the task's own images only — the training split and one shifted copy of
each (train/outliers.shifted), the gallery, the validation split — and then measured: the test
split and a shifted copy of it must pass, the development families (train/outliers.py) must
not. The report goes into metrics.json under "input_check".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from skinlesion.colour import apply as preprocess
from skinlesion.models.ensemble import Ensemble
from skinlesion.models.folder import write_atomically
from skinlesion.models.spec import ModelSpec
from skinlesion.transforms import model_input
from skinlesion.trust.check import PASS_RATE, REFERENCE_FILE, InputCheck
from skinlesion.trust.features import stage_names

from .outliers import families, shifted
from .splits import SplitData

GALLERY_PER_CLASS = 250   # training images per class in the reference gallery (all of a rarer class)


@dataclass
class Forward:
    logits: np.ndarray                  # n × classes, float32
    features: dict[str, torch.Tensor]   # FeatureTap's, row by row


@torch.no_grad()
def forward_all(model: torch.nn.Module | Ensemble, spec: ModelSpec, images: Sequence[np.ndarray],
                device: torch.device, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                batch_size: int = 128) -> Forward:
    """Logits of the answering network (a model, or an Ensemble) and the features of its primary
    model's plain view, of RGB images of any size, resized as the Predictor does, in order."""
    model = model if isinstance(model, Ensemble) else Ensemble([model])
    tap = model.tap(stage_names(model.primary))
    model.eval()
    logits, parts = [], {}
    try:
        with tap.recording():
            for start in range(0, len(images), batch_size):
                x = model_input(images[start:start + batch_size], spec, device, channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits.append(model(x).float().cpu())
                for name, value in tap.take().items():
                    parts.setdefault(name, []).append(value)
    finally:
        tap.remove()
    return Forward(torch.cat(logits).numpy() if logits else np.zeros((0, spec.num_classes), np.float32),
                   {name: torch.cat(value) for name, value in parts.items()})


def gallery_indices(labels: np.ndarray, per_class: int = GALLERY_PER_CLASS, seed: int = 0) -> np.ndarray:
    """A class-balanced subset of the training split: up to `per_class` images of each class."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class]
                                   for k in np.unique(labels)]))


def _rows(features: dict[str, torch.Tensor], index: np.ndarray) -> dict[str, torch.Tensor]:
    return {name: value[torch.as_tensor(index)] for name, value in features.items()}


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score
    if not len(inside) or not len(outside):
        return None
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def fit_check(model: torch.nn.Module, spec: ModelSpec, splits: dict[str, SplitData], forwards: dict[str, Forward],
              device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool, batch_size: int,
              data_root: Path | None, outliers: int, seed: int = 0) -> tuple[InputCheck, np.ndarray, dict]:
    """Fit the check on the training split (and its shifted copy), the gallery and validation;
    measure it on test, shifted test and the development families made from `data_root` (the
    folder holding the tasks' data folders; None: the families without another task's images).
    Returns the check, the gallery's training-split indices and the report."""
    run = dict(device=device, amp_dtype=amp_dtype, channels_last=channels_last, batch_size=batch_size)
    # The splits' images went through the model's preprocessing when decoded (train/splits.py); the
    # shifted copies and the families are new images, so they go through it here, as serving would.
    steps = spec.preprocessing

    def prepared(images: list[np.ndarray]) -> list[np.ndarray]:
        return [preprocess(image, steps) for image in images]

    train_shifted = forward_all(model, spec, prepared(shifted(splits["train"].images, np.random.default_rng(seed))),
                                **run)
    reference = {name: torch.cat([forwards["train"].features[name], train_shifted.features[name]])
                 for name in train_shifted.features}
    gallery = gallery_indices(splits["train"].labels, seed=seed)
    stages = tuple(stage_names(model))
    check = InputCheck.fit(reference, forwards["train"].features["pooled"][torch.as_tensor(gallery)],
                           forwards["val"].features, stages)
    scores = {s: check.scores(forwards[s].features) for s in ("val", "test")}
    scores["shifted test"] = check.scores(forward_all(
        model, spec, prepared(shifted(splits["test"].images, np.random.default_rng(seed + 1))), **run).features)
    made = {name: forward_all(model, spec, prepared(images), **run).features
            for name, images in families(spec.task, data_root, seed, outliers).items()}
    refused = {name: check.scores(features) for name, features in made.items()}
    report = {"threshold": check.threshold, "method": check.to_config()["method"],
              **{f"{s.replace(' ', '_')}_pass": float((v <= check.threshold).mean()) for s, v in scores.items()},
              "families": {name: {"n": len(v), "refused": float((v > check.threshold).mean()),
                                  "auroc": _auroc(scores["test"], v)} for name, v in refused.items()},
              "single_scores": single_scores(check, forwards, made)}
    return check, gallery, report


def single_scores(check: InputCheck, forwards: dict[str, Forward], made: dict[str, dict]) -> dict[str, dict]:
    """Each of the check's scores alone, thresholded like the check (PASS_RATE of validation):
    the test pass rate and each family's refusal rate, to show what the combination adds."""
    raw = {split: check.raw_scores(forwards[split].features) for split in ("val", "test")}
    families_raw = {name: check.raw_scores(features) for name, features in made.items()}
    result = {}
    for score in raw["val"]:
        threshold = float(np.quantile(raw["val"][score].numpy(), PASS_RATE, method="higher"))
        result[score] = {"test_pass": float((raw["test"][score] <= threshold).float().mean()),
                         **{name: float((r[score] > threshold).float().mean()) for name, r in families_raw.items()}}
    return result


def save_reference(folder: Path, check: InputCheck, train: SplitData, gallery: np.ndarray) -> None:
    """The check's matrices and the gallery's features, labels and image ids (in the header's
    metadata), in one safetensors file."""
    tensors = {**check.tensors(), "gallery.labels": torch.as_tensor(train.labels[gallery], dtype=torch.int64)}
    ids = json.dumps([train.records[i].image_id for i in gallery])
    write_atomically(folder / REFERENCE_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"gallery_ids": ids}))
