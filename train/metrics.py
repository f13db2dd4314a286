"""Evaluation metrics: classification report, AUC, calibration (error, reliability bins), operating
points, prediction sets and what the unsure answer does.

Everything works on plain arrays: `probs` (N, K) rows summing to 1, `labels` (N,) class
indices, `predicted` (N,) the decided classes (decision.py). Classes absent from a (small)
split are reported with support 0, never a crash.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

BOOTSTRAP = 1000  # resamples behind every 95% interval


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC over the classes that have both positives and negatives."""
    aucs = [roc_auc_score(labels == k, probs[:, k]) for k in range(probs.shape[1])
            if 0 < (labels == k).sum() < len(labels)]
    return float(np.mean(aucs)) if aucs else None


def sensitivity_specificity(flagged: np.ndarray, positive: np.ndarray) -> tuple[float | None, float | None]:
    pos, neg = positive.sum(), (~positive).sum()
    sens = float((flagged & positive).sum() / pos) if pos else None
    spec = float((~flagged & ~positive).sum() / neg) if neg else None
    return sens, spec


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: |accuracy − confidence| averaged over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """The reliability diagram's bins: equal-width top-probability bins with their image count,
    mean top probability and accuracy of the top class (None for an empty bin)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        rows.append({"low": float(lo), "high": float(hi), "count": int(inside.sum()),
                     "confidence": float(confidence[inside].mean()) if inside.any() else None,
                     "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return rows


def set_report(members: np.ndarray, labels: np.ndarray, codes: Sequence[str]) -> dict:
    """What the prediction sets (boolean rows × classes) do on a split: coverage overall and per
    class, mean size, and the share of single-class sets."""
    covered = members[np.arange(len(labels)), labels]
    size = members.sum(axis=1)
    return {"coverage": float(covered.mean()), "mean_size": float(size.mean()),
            "single": float((size == 1).mean()),
            "per_class_coverage": {c: float(covered[labels == k].mean()) if (labels == k).any() else None
                                   for k, c in enumerate(codes)}}


def unsure_report(unsure: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> dict:
    """What the "uncertain" / "review" answer does on a split: how often it fires, how accurate
    the decided class is inside and outside it, and which share of the mistakes it catches."""
    correct = predicted == labels
    return {"rate": float(unsure.mean()) if len(labels) else 0.0,
            "accuracy_inside": float(correct[unsure].mean()) if unsure.any() else None,
            "accuracy_outside": float(correct[~unsure].mean()) if (~unsure).any() else None,
            "mistakes_caught": float(unsure[~correct].mean()) if (~correct).any() else None}


def classification_report(probs: np.ndarray, labels: np.ndarray, codes: Sequence[str],
                          predicted: np.ndarray | None = None) -> dict:
    """Headline metrics, per-class figures and the confusion matrix, JSON-ready; the decided
    classes are `predicted` (default: the arg-max)."""
    k = len(codes)
    predicted = probs.argmax(axis=1) if predicted is None else predicted
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(k), zero_division=0)
    present = support > 0
    per_class = {}
    for i, code in enumerate(codes):
        sens, spec = sensitivity_specificity(predicted == i, labels == i)
        per_class[code] = {"precision": float(precision[i]), "recall": float(recall[i]),
                           "f1": float(f1[i]), "support": int(support[i]),
                           "sensitivity": sens, "specificity": spec}
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_auc": macro_auc(probs, labels),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=range(k)).tolist(),
    }


def operating_point(probs: np.ndarray, labels: np.ndarray, codes: Sequence[str],
                    thresholds: dict[str, float]) -> dict[str, dict]:
    """Sensitivity and specificity of each thresholded high-risk class on this split."""
    result = {}
    for code, threshold in thresholds.items():
        i = list(codes).index(code)
        sens, spec = sensitivity_specificity(probs[:, i] >= threshold, labels == i)
        result[code] = {"threshold": threshold, "sensitivity": sens, "specificity": spec,
                        "support": int((labels == i).sum())}
    return result


def balanced_accuracy(labels: np.ndarray, decided: np.ndarray, classes: Sequence | None = None) -> float:
    """Mean recall over `classes` (default: those present in `labels`) — sklearn's
    balanced_accuracy_score, for resamples and subgroups where a class may be missing."""
    classes = np.unique(labels) if classes is None else classes
    return float(np.mean([np.mean(decided[labels == c] == c) for c in classes if (labels == c).any()]))


def grouped_resamples(groups: Sequence[str], n: int = BOOTSTRAP, seed: int = 0) -> list[np.ndarray]:
    """`n` bootstrap resamples of the rows' indices, drawn group by group: a lesion's images come
    and go together. (Written here: scipy.stats.bootstrap draws observations one by one, and a
    lesion's images are not independent — they share one diagnosis and one split.)"""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))]) for _ in range(n)]


def interval(samples: Sequence[float]) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap samples."""
    return float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))
