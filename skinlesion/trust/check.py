"""The familiarity check: is this image like the ones the model was trained on?

With a modality check in the model folder (modality.py), an image this check does not know is
still answered, marked unfamiliar (another device or clinic?) and its verdict leans to caution;
only a score past `far` — further than any but FAR_PASS_RATE of the validation images and their
strongly shifted copies reach — still refuses: the modality check's backstop for kinds of image
its negatives did not cover. Without a modality check (an older folder), failing this check
refuses the image, as it did before.

Scores, all from the features of the answer's own forward pass (features.py):
- per timm stage, the Mahalanobis distance of the image's per-channel feature statistics (mean
  and standard deviation over the image) from the reference images' (Lee et al., NeurIPS 2018,
  with a Ledoit-Wolf shrunk covariance). Statistics of several blocks, not only the last one,
  carry the low-level "is this dermoscopy" cues (Pacheco et al., CVPRW 2020): steel, photographs
  and synthetic images are far from skin in the early blocks even where the pooled features
  are not.
- the cosine distance of the pooled features to their k-th nearest neighbour in the reference
  gallery (deep k-NN, Sun et al., ICML 2022): semantic novelty the statistics miss.
Each score is scaled by its spread on the validation split (0 at the median, 1 at the 95th
percentile); the check's score is the largest, and an image passes when it is at most the
threshold, the validation quantile that lets PASS_RATE of validation images through.

The reference statistics come from the training images and one shifted copy of each
(train/outliers.shifted: colour casts, rescales, crops, recompression, rotations, vignettes),
so that images of the task taken elsewhere pass; the check never sees an image it should
refuse while it is fitted. The numbers are saved in the model folder (REFERENCE_FILE, beside
the gallery's pooled features) and in config.json under "input_check".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import load_file

from .features import POOLED

REFERENCE_FILE = "reference.safetensors"   # the check's matrices and the gallery's features
PASS_RATE = 0.975       # of validation images; the goal is ≥ 97% of test, so a little margin
FAR_PASS_RATE = 0.995   # of validation images and their strongly shifted copies: under `far`
K_NEAREST = 10          # Sun et al. found k from 10 to 50 alike; 10 suits a gallery of ~1,500
NEAREST = "nearest"     # the name of the k-NN score
METHOD = ("max of validation-scaled scores: Mahalanobis distance of per-channel statistics of every "
          "stage (Ledoit-Wolf) and k-NN cosine distance of the pooled features to the gallery")


def normalised(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.nn.functional.normalize(x.to(dtype), dim=1)


@dataclass(frozen=True)
class InputCheck:
    stages: tuple[str, ...]
    means: Mapping[str, torch.Tensor]        # per stage: the reference statistics' mean …
    precisions: Mapping[str, torch.Tensor]   # … and inverse (shrunk) covariance
    gallery: torch.Tensor                    # the gallery's L2-normalised pooled features
    centre: Mapping[str, float]              # per score: its validation median …
    spread: Mapping[str, float]              # … and 95th percentile minus the median
    threshold: float
    k: int = K_NEAREST
    refuses: bool = True                     # no modality check beside it: failing this check refuses
    far: float | None = None                 # beside one: a score over this still refuses (None: never)

    @cached_property
    def _double(self) -> dict[str, torch.Tensor]:
        return {**{f"{s}.mean": self.means[s].double() for s in self.stages},
                **{f"{s}.precision": self.precisions[s].double() for s in self.stages},
                "gallery": self.gallery.double()}

    def raw_scores(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each score of each row of `features` (FeatureTap.take()), unscaled. In float64: a row's
        score must not depend on the batch it came in (float32 products of 1 and of n rows differ
        by ~1e-6, enough to move an image that sits on the threshold across it)."""
        scores, double = {}, self._double
        for stage in self.stages:
            d = features[stage].double() - double[f"{stage}.mean"]
            scores[stage] = ((d @ double[f"{stage}.precision"]) * d).sum(1)
        similarity = normalised(features[POOLED], torch.float64) @ double["gallery"].T
        k = min(self.k, similarity.shape[1])
        scores[NEAREST] = 1 - similarity.topk(k, dim=1).values[:, -1]
        return scores

    def scores(self, features: Mapping[str, torch.Tensor]) -> np.ndarray:
        """The check's score of each row: the largest validation-scaled score."""
        raw = self.raw_scores(features)
        scaled = [(raw[name] - self.centre[name]) / self.spread[name] for name in raw]
        return torch.stack(scaled).amax(0).double().numpy()

    def assess(self, features: Mapping[str, torch.Tensor], rows: list[int], so_far: list):
        """Each row's score against the threshold (trust/__init__.py: a part's entry)."""
        scores = self.scores({n: f[rows] for n, f in features.items()})
        return [self._assess_one(float(score), found) for score, found in zip(scores, so_far)]

    def _assess_one(self, score: float, so_far):
        found = replace(so_far, familiar=score <= self.threshold, familiarity_score=score,
                        familiarity_threshold=self.threshold)
        if self.refuses:
            return replace(found, known=found.familiar, check_score=score, check_threshold=self.threshold)
        if self.far is not None and score > self.far and found.known:
            return replace(found, known=False, check_score=score, check_threshold=self.far)
        return found

    def to_config(self, **measured) -> dict:
        return {"method": METHOD, "stages": list(self.stages), "k": self.k, "threshold": self.threshold,
                "far": self.far, "centre": dict(self.centre), "spread": dict(self.spread),
                "pass_rate_target": PASS_RATE, "file": REFERENCE_FILE, **measured}

    def tensors(self) -> dict[str, torch.Tensor]:
        """What REFERENCE_FILE holds for the check."""
        return {**{f"{s}.mean": self.means[s].float().contiguous() for s in self.stages},
                **{f"{s}.precision": self.precisions[s].float().contiguous() for s in self.stages},
                "gallery.features": self.gallery.half().contiguous()}

    @classmethod
    def load(cls, folder: str | Path, config: Mapping, refuses: bool = True) -> "InputCheck | None":
        """The check of a model folder; None when its config.json has none (an older model).
        `refuses`: failing it refuses the image (no modality check beside it)."""
        settings = config.get("input_check")
        if not settings:
            return None
        tensors = load_file(str(Path(folder) / settings.get("file", REFERENCE_FILE)))
        stages = tuple(settings["stages"])
        return cls(stages, {s: tensors[f"{s}.mean"] for s in stages}, {s: tensors[f"{s}.precision"] for s in stages},
                   tensors["gallery.features"].float(), settings["centre"], settings["spread"],
                   float(settings["threshold"]), int(settings.get("k", K_NEAREST)), refuses,
                   None if settings.get("far") is None else float(settings["far"]))

    @classmethod
    def fit(cls, reference: Mapping[str, torch.Tensor], gallery_pooled: torch.Tensor,
            validation: Mapping[str, torch.Tensor], stages: tuple[str, ...], refuses: bool = True) -> "InputCheck":
        """Fit on the reference images' features (training images and their shifted copies),
        the gallery's pooled features and the validation images' features."""
        from sklearn.covariance import LedoitWolf  # here: serving never fits (scikit-learn costs ~100 MB)
        means, precisions = {}, {}
        for stage in stages:
            fitted = LedoitWolf().fit(reference[stage].double().numpy())
            means[stage] = torch.from_numpy(fitted.location_).float()
            precisions[stage] = torch.from_numpy(fitted.precision_).float()
        gallery = normalised(gallery_pooled).half().float()  # as stored, so the threshold fits what serves
        unscaled = cls(stages, means, precisions, gallery, {}, {}, 0.0)
        raw = {name: s.double().numpy() for name, s in unscaled.raw_scores(validation).items()}
        centre = {name: float(np.median(s)) for name, s in raw.items()}
        spread = {name: max(float(np.quantile(s, 0.95)) - centre[name], 1e-6) for name, s in raw.items()}
        scaled = cls(stages, means, precisions, gallery, centre, spread, 0.0)
        threshold = float(np.quantile(scaled.scores(validation), PASS_RATE, method="higher"))
        return cls(stages, means, precisions, gallery, centre, spread, threshold, refuses=refuses)
