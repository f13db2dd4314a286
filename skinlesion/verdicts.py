"""Verdict policies: how a task turns an answer into what a person is told.

A task module picks a policy and gives it its own words (tasks/dermoscopy.py: recall-first
referral; tasks/steel.py: manual review); the numbers a policy compares against — the
recall-first thresholds, the review threshold — come from the model's DecisionRule. Every
verdict ends with the task's disclaimer, and names the explanation method actually shown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # only for type hints: tasks import this module
    from .decision import DecisionRule
    from .tasks.base import Task


@dataclass(frozen=True)
class Verdict:
    level: str      # a page colour: recall-first "refer", "uncertain", "clear"; manual review "review", "named"
    headline: str
    detail: str


class VerdictPolicy(Protocol):
    def __call__(self, probabilities: dict[str, float], decided: str, rule: DecisionRule, task: Task,
                 method: str | None) -> Verdict: ...


def normalised_entropy(probs: np.ndarray) -> float:
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(probs)))


def shown_where(method: str | None) -> str:
    return f" The {method} overlay shows where the model found it." if method else ""


@dataclass(frozen=True)
class RecallFirst:
    """A class of a high-risk group (tasks/base.py: HIGH_RISK) at or over its recall-first
    threshold refers; else a flat distribution is uncertain; else the decided class is named."""
    refer: str                      # the headlines
    uncertain: str
    clear: str
    clear_means: str                # what "clear" says was not found
    top_probability: float = 0.5    # under it (or over the entropy bound) the answer is uncertain
    entropy: float = 0.75           # normalised entropy, 0 (one class) .. 1 (all classes equal)

    def __call__(self, probabilities: dict[str, float], decided: str, rule: DecisionRule, task: Task,
                 method: str | None) -> Verdict:
        names = {c.code: c.name for c in task.classes}
        probs = np.array(list(probabilities.values()))
        flagged = [c for c in task.high_risk_codes if probabilities[c] >= rule.thresholds.get(c, 0.5)]
        if flagged:
            listed = ", ".join(f"{names[c]} ({probabilities[c]:.0%})" for c in flagged)
            return Verdict("refer", self.refer, f"Probability at or above the high-sensitivity threshold for: "
                                                f"{listed}. {task.disclaimer}")
        if probs.max() < self.top_probability or normalised_entropy(probs) > self.entropy:
            return Verdict("uncertain", self.uncertain,
                           f"No class is clearly ahead (top probability {probs.max():.0%}). {task.disclaimer}")
        return Verdict("clear", self.clear, f"Classified as {names[decided]} ({probabilities[decided]:.0%}); "
                                            f"{self.clear_means}. {task.disclaimer}")


@dataclass(frozen=True)
class ManualReview:
    """Under the review threshold (fitted on validation mistakes) a person looks; else the
    decided class is named."""
    review: str                 # the headline of an answer a person must check
    found: str                  # the headline of an answer, with {name}: "Defect: {name}"
    default_threshold: float = 0.5  # for a rule fitted without one

    def __call__(self, probabilities: dict[str, float], decided: str, rule: DecisionRule, task: Task,
                 method: str | None) -> Verdict:
        name = task.info(decided).name
        answer = f"{name} ({probabilities[decided]:.0%})"
        threshold = rule.review_threshold if rule.review_threshold is not None else self.default_threshold
        if max(probabilities.values()) < threshold:
            return Verdict("review", self.review, f"Not sure enough for an automatic label: classified as "
                                                  f"{answer}, under the review threshold of {threshold:.0%}. "
                                                  f"{task.disclaimer}")
        return Verdict("named", self.found.format(name=name), f"{answer}.{shown_where(method)} {task.disclaimer}")
