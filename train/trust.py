"""The two input checks fitted and measured, and the reference gallery chosen
(skinlesion/trust/modality.py, skinlesion/trust/check.py).

    features = forward_all(net, spec, images, options)            # logits + FeatureTap features
    checks, gallery, report = fit_check(...)                      # called by train/evaluate.py

The familiarity check is fitted on the task's own images only — the training split and one
shifted copy of each (train/outliers.shifted), the gallery, the validation split — and measured:
the test split and a shifted copy of it must pass, the development families (train/outliers.py)
must not. The report goes into metrics.json under "input_check".

The modality check is fitted with outlier exposure: the training split, its shifted copies and
copies under strong acquisition shifts (train/outliers.acquisition_shifted) against the
development families. So each family's refusal rate is reported from a fit that left that family
out (leave one family out): a figure on images of a kind the fit never saw. Its report goes into
metrics.json under "modality_check".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
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
from skinlesion.trust.check import FAR_PASS_RATE, PASS_RATE, REFERENCE_FILE, InputCheck
from skinlesion.trust.features import POOLED, stage_names
from skinlesion.trust.modality import PASS_RATE as MODALITY_PASS_RATE
from skinlesion.trust.modality import ModalityCheck

from .outliers import acquisition_shifted, families, shifted
from .splits import SplitData

GALLERY_PER_CLASS = 250   # training images per class in the reference gallery (all of a rarer class)
MODALITY_ROWS = 12000     # at most this many images of the task fit the modality check (a random subset):
                          # more change its weights little and cost minutes of fitting


@dataclass
class Forward:
    logits: np.ndarray                  # n × classes, float32
    features: dict[str, torch.Tensor]   # FeatureTap's, row by row


@torch.no_grad()
def forward_all(model: torch.nn.Module | Ensemble, spec: ModelSpec, images: Sequence[np.ndarray],
                device: torch.device, amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                batch_size: int = 32) -> Forward:
    """Logits of the answering network (a model, or an Ensemble) and the features of its primary
    model's plain view, of RGB images of any size, resized as the Predictor does, in order.
    The defaults suit a CPU: channels_last (the model is put in that format too) and batches of
    32 ran a Lite0's three views at 2.4 times the images per second of NCHW batches of 128 on 2
    cores (a batch's activations then stay in the caches); a GPU takes larger batches."""
    model = model if isinstance(model, Ensemble) else Ensemble([model])
    if channels_last:
        model.to(memory_format=torch.channels_last)
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


def gallery_indices(labels: np.ndarray, per_class: int = GALLERY_PER_CLASS, seed: int = 0,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """A class-balanced subset of the training split: up to `per_class` images of each class,
    among the `allowed` rows (default: all; train/evaluate.py allows the task's own data only)."""
    rng = np.random.default_rng(seed)
    allowed = np.ones(len(labels), bool) if allowed is None else allowed
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero((labels == k) & allowed))[:per_class]
                                   for k in np.unique(labels[allowed])]))


@dataclass
class Checks:
    """What fit_check fits: the modality check (refuses), the familiarity check (cautions; past
    its `far` score it refuses too), applied to many images at once as the Predictor applies them."""
    modality: ModalityCheck
    familiarity: InputCheck

    def answered(self, features: dict[str, torch.Tensor], modality: ModalityCheck | None = None) -> np.ndarray:
        """Not refused, row by row; `modality`: another fit of the modality check (a family left out)."""
        modality = modality or self.modality
        far = self.familiarity.far if self.familiarity.far is not None else np.inf
        return (modality.scores(features) <= modality.threshold) & (self.familiarity.scores(features) <= far)

    def familiar(self, features: dict[str, torch.Tensor]) -> np.ndarray:
        return self.familiarity.scores(features) <= self.familiarity.threshold


def _rows(features: dict[str, torch.Tensor], index: np.ndarray) -> dict[str, torch.Tensor]:
    return {name: value[torch.as_tensor(index)] for name, value in features.items()}


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score
    if not len(inside) or not len(outside):
        return None
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def fit_check(model: torch.nn.Module | Ensemble, spec: ModelSpec, splits: dict[str, SplitData],
              forwards: dict[str, Forward], device: torch.device, amp_dtype: torch.dtype | None,
              channels_last: bool, batch_size: int, data_root: Path | None, outliers: int, seed: int = 0,
              own: np.ndarray | None = None) -> tuple[Checks, np.ndarray, dict, tuple[str, Forward]]:
    """Fit both checks on the training split (and its shifted copies), the gallery and validation;
    measure them on test, shifted test and the development families made from `data_root` (the
    folder holding the tasks' data folders; None: the families without another task's images).
    `own`: the training rows of the task's own data (the gallery's choice; default: all).
    Returns the checks, the gallery's training-split indices, the report ({"input_check": the
    familiarity check's, "modality_check": the modality check's}) and the pass over the most
    shifted copies of the test split, with their name (what an unfamiliar image costs, where no
    other source is at hand)."""
    run = dict(device=device, amp_dtype=amp_dtype, channels_last=channels_last, batch_size=batch_size)
    # The splits' images went through the model's preprocessing when decoded (train/splits.py); the
    # shifted copies and the families are new images, so they go through it here, as serving would.
    steps = spec.preprocessing

    primary = model.primary if isinstance(model, Ensemble) else model

    def passed(images: list[np.ndarray], net: torch.nn.Module = model) -> Forward:
        return forward_all(net, spec, [preprocess(image, steps) for image in images], **run)

    def features(images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The checks read the primary's plain view alone: the other models and views need not run."""
        return passed(images, primary).features

    rng = np.random.default_rng(seed)
    train_shifted = features(shifted(splits["train"].images, rng))
    reference = _joined([forwards["train"].features, train_shifted])
    gallery = gallery_indices(splits["train"].labels, seed=seed, allowed=own)
    stages = tuple(stage_names(primary))
    check = InputCheck.fit(reference, forwards["train"].features[POOLED][torch.as_tensor(gallery)],
                           forwards["val"].features, stages, refuses=False)
    test_shifted = passed(shifted(splits["test"].images, np.random.default_rng(seed + 1)))
    made = {name: features(images) for name, images in families(spec.task, data_root, seed, outliers).items()}

    # The modality check lets through what changes between devices: for a task that names such
    # shifts (Task.acquisition_shift), strongly shifted copies of training and validation images
    strength = spec.task.acquisition_shift
    heavy, strong_test = {}, None  # features of strongly shifted copies; the test copies' whole pass
    if strength > 0:
        for i, s in enumerate(("train", "val", "test"), 2):
            images = acquisition_shifted(splits[s].images, spec.input_size, strength, seed + i)
            if s == "test":
                strong_test = passed(images)
                heavy[s] = strong_test.features
            else:
                heavy[s] = features(images)
    inside = _joined([reference, *([heavy["train"]] if heavy else [])])
    chosen = np.sort(rng.permutation(len(inside[POOLED]))[:MODALITY_ROWS])
    own = np.ones(len(splits["train"].labels), bool) if own is None else own
    own_inside = np.tile(own, len(inside[POOLED]) // len(own))[chosen]  # the rows of the task's own data
    inside = _rows(inside, chosen)
    validation = _joined([forwards["val"].features, *([heavy["val"]] if heavy else [])])
    # Not the pooled features: with them, fits let a source they never saw through less often (0.966
    # against 0.972) and refused the other task less often when they never saw it (0.957 against
    # 0.973; python -m benchmarks.modality, docs/results.md).
    names = stages

    def modality_without(left_out: str | None, rows: np.ndarray | None = None) -> ModalityCheck:
        outside = _joined([f for name, f in made.items() if name != left_out])
        return ModalityCheck.fit(inside if rows is None else _rows(inside, rows), outside, validation, names)

    modality = modality_without(None)
    # Another source among the training images (--extra-data): its images, measured by a fit that
    # never saw them, are what a dermatoscope the fit never saw looks like to the check.
    unseen_source = {}
    if not own.all():
        without = modality_without(None, np.flatnonzero(own_inside))
        others = _rows(forwards["train"].features, np.flatnonzero(~own))
        unseen_source = {"n": int((~own).sum()), "pass": passes(without, others)}
    far = float(np.quantile(check.scores(validation), FAR_PASS_RATE, method="higher"))
    checks = Checks(modality, replace(check, far=far))
    unseen = {name: modality_without(name) for name in made} if len(made) > 1 else {}
    measured = {"val": forwards["val"].features, "test": forwards["test"].features,
                "shifted test": test_shifted.features, **({"strongly shifted test": heavy["test"]} if heavy else {})}

    familiarity = {"threshold": check.threshold, "far": far, "method": check.to_config()["method"],
                   **{f"{s.replace(' ', '_')}_pass": passes(check, f) for s, f in measured.items()},
                   "families": {name: {"n": len(f[POOLED]), "refused": 1 - passes(check, f),
                                       "auroc": _auroc(check.scores(measured["test"]), check.scores(f))}
                                for name, f in made.items()},
                   "single_scores": single_scores(check, forwards, made)}
    modality_report = {"threshold": modality.threshold, "method": modality.to_config()["method"],
                       "pass_rate_target": MODALITY_PASS_RATE, "unseen_source": unseen_source,
                       **{f"{s.replace(' ', '_')}_pass": float(checks.answered(f).mean()) for s, f in measured.items()},
                       "sets": {s: rates(checks, f) for s, f in measured.items()},
                       "families": {name: {**rates(checks, f, unseen.get(name)),
                                           "refused_by_the_shipped_fit": float(1 - checks.answered(f).mean()),
                                           "unseen_by_the_fit": name in unseen}
                                    for name, f in made.items()}}
    shift = ("strongly shifted test", strong_test) if strong_test is not None else ("shifted test", test_shifted)
    return checks, gallery, {"input_check": familiarity, "modality_check": modality_report}, shift


def passes(check: InputCheck | ModalityCheck, features: dict[str, torch.Tensor]) -> float:
    """The share of rows whose score is at most the check's threshold."""
    return float((check.scores(features) <= check.threshold).mean())


def _joined(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def rates(checks: Checks, features: dict[str, torch.Tensor], modality: ModalityCheck | None = None) -> dict:
    """Of a set of images: the share answered (not refused), refused, and answered but unfamiliar.
    `modality`: the modality check to apply (default: the shipped one; a family's left-out fit)."""
    known, familiar = checks.answered(features, modality), checks.familiar(features)
    return {"n": int(len(known)), "answered": float(known.mean()), "refused": float(1 - known.mean()),
            "unfamiliar": float((known & ~familiar).mean())}


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


def save_reference(folder: Path, checks: Checks | InputCheck, train: SplitData, gallery: np.ndarray) -> None:
    """The checks' matrices and the gallery's features, labels and image ids (in the header's
    metadata), in one safetensors file."""
    found = checks.familiarity.tensors() | checks.modality.tensors() if isinstance(checks, Checks) else checks.tensors()
    tensors = {**found, "gallery.labels": torch.as_tensor(train.labels[gallery], dtype=torch.int64)}
    ids = json.dumps([train.records[i].image_id for i in gallery])
    write_atomically(folder / REFERENCE_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"gallery_ids": ids}))
