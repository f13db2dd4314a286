"""Prediction sets: the classes that hold the true one with probability ≥ 1 − α (split conformal).

Score: LAC, 1 − p(class) on the calibrated probabilities (Sadinle et al. 2019; the smallest
sets on average). Calibration is Mondrian by class group (Vovk 2005; class-conditional
conformal): each class in `own_quantile` (the task's high-risk classes) gets its own quantile
from its validation images, so a rare malignant class keeps its coverage instead of lending it
to the common ones; the other classes share one quantile. Coverage then holds per high-risk
class and overall, with sets barely larger than plain LAC.

Why twenty lines and not a library: the sets must be computed at serving time from numbers in
config.json (one quantile per class), and a library would have to be imported by the app to
turn those numbers into a set. tests/test_conformal.py pins this code to crepes' Mondrian
conformal classifier (non-smoothed p-values) on the same scores.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

ALPHA = 0.10        # 90% prediction sets
SCORE = "LAC (1 - p), Mondrian by high-risk class"  # what config.json and the card say of the sets
SHARED = "shared"   # the calibration group of the classes without their own quantile


def nonconformity(probs: np.ndarray) -> np.ndarray:
    """LAC: 1 − the calibrated probability of each class."""
    return 1.0 - np.asarray(probs, dtype=np.float64)


def conformal_quantile(scores: np.ndarray, alpha: float = ALPHA) -> float:
    """The ⌈(n+1)(1−α)⌉-th smallest calibration score (1.0, every class, when n is too small)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(np.ceil((len(scores) + 1) * (1 - alpha)))
    return float(scores[k - 1]) if 0 < k <= len(scores) else 1.0


def fit_quantiles(probs: np.ndarray, labels: np.ndarray, codes: Sequence[str], own_quantile: Sequence[str],
                  alpha: float = ALPHA) -> dict[str, float]:
    """Per class, the score under which it joins a set, calibrated on (validation) `probs`."""
    scores = nonconformity(probs)[np.arange(len(labels)), labels]
    group = np.array([codes[k] if codes[k] in own_quantile else SHARED for k in labels])
    quantile = {g: conformal_quantile(scores[group == g], alpha) for g in {*own_quantile, SHARED}}
    return {code: quantile[code if code in own_quantile else SHARED] for code in codes}


def prediction_sets(probs: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Boolean rows × classes: which classes are in each row's set."""
    return nonconformity(probs) <= np.asarray(quantiles, dtype=np.float64)
