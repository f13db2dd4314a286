"""The modality check: is this an image of the task's kind at all (a dermoscopic image, a steel
surface)? An image that fails it is refused; one that passes is answered, and the familiarity
check (check.py) says whether it is also like the training images.

Why a second check: the familiarity check measures distance from the training images, and what
changes from one dermatoscope or clinic to the next — resolution, sharpness, zoom, lighting,
vignettes — moves the early stages' statistics far from them. Distance alone cannot tell
"another device" from "not dermoscopy". This check is a linear classifier (scikit-learn's
logistic regression, fitted in train/trust.py) over features of the answer's own pass — every
stage's channel statistics, standardised; not the pooled features (why: train/trust.py) — with outlier
exposure (Hendrycks et al., ICLR 2019): the images of the task and copies of them under strong
acquisition shifts (train/outliers.acquisition_shifted) on one side, families of other images
made at run time (train/outliers.families) on the other. Its threshold lets PASS_RATE of the
validation images and their shifted copies through. Its numbers are saved in the model folder
(REFERENCE_FILE, "modality.*") and in config.json under "modality_check".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import load_file

from .check import REFERENCE_FILE
from .features import POOLED

CONFIG_KEY = "modality_check"
PASS_RATE = 0.995       # of validation images and their shifted copies: refuse an image of the task rarely
                        # (another source's images, left out of the fit, passed at 0.972 with 0.99 and
                        # 0.979 with 0.995: python -m benchmarks.modality)
PREFIX = "modality."    # its tensors' names in REFERENCE_FILE
METHOD = ("logistic regression with outlier exposure over the standardised channel statistics of every stage: "
          "the task's images and shifted copies against run-time families of other images")


@dataclass(frozen=True)
class ModalityCheck:
    names: tuple[str, ...]      # the features it reads, in order: stage statistics (older folders: then POOLED)
    mean: torch.Tensor          # the standardisation of their concatenation …
    scale: torch.Tensor
    weights: torch.Tensor       # … and the classifier: score = standardised · weights + bias
    bias: float
    threshold: float            # an image of the task when its score is at most this

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages whose statistics it reads (the tap records POOLED anyway)."""
        return tuple(n for n in self.names if n != POOLED)

    def scores(self, features: Mapping[str, torch.Tensor]) -> np.ndarray:
        """Each row's score: higher is less like the task's images."""
        x = torch.cat([features[n].double() for n in self.names], 1)  # float64: as InputCheck.raw_scores, why
        return (((x - self.mean.double()) / self.scale.double()) @ self.weights.double() + self.bias).numpy()

    def assess(self, features: Mapping[str, torch.Tensor], rows: list[int], so_far: list):
        """Each row's score against the threshold (trust/__init__.py: a part's entry)."""
        scores = self.scores({n: features[n][rows] for n in self.names})
        return [replace(found, known=bool(score <= self.threshold), check_score=float(score),
                        check_threshold=self.threshold) for found, score in zip(so_far, scores)]

    def to_config(self, **measured) -> dict:
        return {"method": METHOD, "features": list(self.names), "bias": self.bias, "threshold": self.threshold,
                "pass_rate_target": PASS_RATE, "file": REFERENCE_FILE, **measured}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}{k}": getattr(self, k).float().contiguous() for k in ("mean", "scale", "weights")}

    @classmethod
    def load(cls, folder: str | Path, config: Mapping) -> "ModalityCheck | None":
        """The check of a model folder; None when its config.json has none (an older model)."""
        settings = config.get(CONFIG_KEY)
        if not settings:
            return None
        tensors = load_file(str(Path(folder) / settings.get("file", REFERENCE_FILE)))
        return cls(tuple(settings["features"]), *(tensors[f"{PREFIX}{k}"] for k in ("mean", "scale", "weights")),
                   float(settings["bias"]), float(settings["threshold"]))

    @classmethod
    def fit(cls, inside: Mapping[str, torch.Tensor], outside: Mapping[str, torch.Tensor],
            validation: Mapping[str, torch.Tensor], names: tuple[str, ...], c: float = 0.05,
            pass_rate: float = PASS_RATE) -> "ModalityCheck":
        """Fit on the features of the task's images (`inside`: training images and shifted copies)
        against other images (`outside`), the threshold on `validation` (validation images and
        shifted copies: `pass_rate` of them pass). `c`: the inverse L2 strength; strong, so that the weights spread over
        many features and carry to families the fit never saw. Both sides weigh the same."""
        from sklearn.linear_model import LogisticRegression  # here: serving never fits

        def stacked(features):
            return torch.cat([features[n].double() for n in names], 1).numpy()

        x_in, x_out = stacked(inside), stacked(outside)
        x = np.concatenate([x_in, x_out])
        mean, scale = x.mean(0), np.maximum(x.std(0), 1e-6)
        fitted = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(
            (x - mean) / scale, np.r_[np.zeros(len(x_in)), np.ones(len(x_out))])
        as_tensor = lambda a: torch.from_numpy(np.asarray(a)).float()  # noqa: E731
        unset = cls(names, as_tensor(mean), as_tensor(scale), as_tensor(fitted.coef_[0]),
                    float(fitted.intercept_[0]), 0.0)
        threshold = float(np.quantile(unset.scores(validation), pass_rate, method="higher"))
        return replace(unset, threshold=threshold)
