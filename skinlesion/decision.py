"""The decision rule, in one place: logits → calibrated probabilities → decided class and 90%
prediction set, and the thresholds a task's verdict policy compares against (verdicts.py: the
words are the task's).

`DecisionRule.fit` (run by `python -m train.evaluate` on the validation split) chooses the
temperature, the per-class bias of the decided class, the recall-first thresholds of the
high-risk classes and the conformal quantiles of the prediction sets (conformal.py), and the
rule is stored in the model folder's config.json. Evaluation and serving both apply it with the
same methods, so the figures in the model card are the page's behaviour by construction.

Why a class bias: a model trained on imbalanced classes (nv is two thirds of HAM10000) puts
the arg-max where plain accuracy is best; balanced accuracy, the score this project selects
on, is best when rare classes win closer calls. Subtracting `tau · log(prior)` from the
log-probabilities (logit adjustment, one parameter fitted on validation) moves the decision
there without changing the probabilities shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .trust.conformal import ALPHA, SCORE, fit_quantiles, prediction_sets

SENSITIVITY_TARGET = 0.90         # recall-first operating point of the high-risk classes
BIAS_STRENGTHS = np.round(np.arange(0.0, 2.01, 0.05), 2)  # the tau grid of the logit adjustment


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises validation NLL (LBFGS on log T, so T stays > 0)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def fit_class_bias(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The logit adjustment `-tau · log(prior)` (prior: the split's class shares) whose decided
    classes have the best balanced accuracy; the smallest such tau, so ties keep the arg-max."""
    from sklearn.metrics import balanced_accuracy_score  # here: serving never fits, and saves ~100 MB
    k = probs.shape[1]
    prior = np.bincount(labels, minlength=k) / len(labels)
    log_prior = np.log(np.maximum(prior, 1.0 / len(labels)))
    log_probs = np.log(np.maximum(probs, 1e-12))
    scores = [balanced_accuracy_score(labels, (log_probs - tau * log_prior).argmax(1)) for tau in BIAS_STRENGTHS]
    tau = float(BIAS_STRENGTHS[int(np.argmax(scores))])
    return tau, -tau * log_prior


def recall_first_thresholds(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int],
                            target: float = SENSITIVITY_TARGET) -> dict[int, float]:
    """Per class, the highest probability threshold whose sensitivity is ≥ `target`.

    Flag class k when p_k ≥ threshold. With n positives, the ⌈target·n⌉-th highest positive
    score is that threshold; the highest keeps specificity as high as the target allows.
    """
    thresholds = {}
    for k in classes:
        scores = np.sort(probs[labels == k, k])[::-1]
        if len(scores):
            thresholds[k] = float(scores[int(np.ceil(target * len(scores))) - 1])
    return thresholds


@dataclass(frozen=True)
class DecisionRule:
    """What a model folder's config.json says about turning logits into an answer."""
    codes: tuple[str, ...]
    temperature: float = 1.0
    class_bias: tuple[float, ...] = ()      # added to log-probabilities before the arg-max; () = none
    thresholds: dict[str, float] = field(default_factory=dict)  # recall-first, high-risk classes
    quantiles: dict[str, float] = field(default_factory=dict)   # conformal: a class joins the set
                                            # when 1 − p(class) ≤ its quantile; {} = sets not fitted

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DecisionRule":
        return cls(codes=tuple(config["label_names"]), temperature=float(config.get("temperature", 1.0)),
                   class_bias=tuple(config.get("class_bias") or ()),
                   thresholds=dict(config.get("thresholds") or {}),
                   quantiles=dict((config.get("prediction_sets") or {}).get("quantiles") or {}))

    def to_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "class_bias": list(self.class_bias),
                "thresholds": self.thresholds, "sensitivity_target": SENSITIVITY_TARGET,
                "prediction_sets": {"coverage": 1 - ALPHA, "score": SCORE,
                                    "quantiles": self.quantiles}}

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, codes: Sequence[str],
            high_risk: Sequence[str]) -> tuple["DecisionRule", float]:
        """Fit on validation: temperature (NLL), class bias (balanced accuracy), then the
        thresholds on the calibrated probabilities (recall-first for the `high_risk` classes,
        the task's: Task.high_risk_codes) and the conformal quantiles (each high-risk class its
        own). Returns the rule and the bias strength tau."""
        # With no mistake on validation, NLL keeps falling as T → 0 (every probability → 1):
        # nothing to calibrate against, so the raw probabilities (T = 1) are kept.
        separable = bool((np.asarray(logits).argmax(1) == labels).all())
        rule = cls(tuple(codes), 1.0 if separable else fit_temperature(logits, labels))
        probs = rule.probabilities(logits)
        tau, bias = fit_class_bias(probs, labels)
        rule = cls(rule.codes, rule.temperature, tuple(float(b) for b in bias))
        risky = [i for i, c in enumerate(codes) if c in high_risk]
        thresholds = {codes[i]: t for i, t in recall_first_thresholds(probs, labels, risky).items()}
        quantiles = fit_quantiles(probs, labels, codes, high_risk)
        return cls(rule.codes, rule.temperature, rule.class_bias, thresholds, quantiles), tau

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (temperature-scaled softmax), float64, rows summing to 1."""
        return softmax(logits, self.temperature)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The decided class index of each row of calibrated probabilities."""
        probs = np.asarray(probs)
        if not self.class_bias:
            return probs.argmax(axis=-1)
        return (np.log(np.maximum(probs, 1e-12)) + np.asarray(self.class_bias)).argmax(axis=-1)

    def prediction_set(self, probs: np.ndarray) -> np.ndarray:
        """Boolean rows × classes: each row's 90% prediction set (conformal.py), always holding the
        decided class. (An empty conformal set only means the model errs less often than the
        10% the set may miss — a perfect classifier's set leaves out a tenth of its answers — so
        the decided class is added: coverage can only grow.) Every class when no sets are fitted."""
        probs = np.asarray(probs)
        if not self.quantiles:
            return np.ones(probs.shape, dtype=bool)
        members = prediction_sets(probs, [self.quantiles[c] for c in self.codes])
        decided = self.decide(probs)
        return members | (np.arange(probs.shape[-1]) == np.asarray(decided)[..., None])
