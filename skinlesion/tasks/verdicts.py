"""Verdict policies: how a task turns an answer into what a person is told.

A task module picks a policy and gives it its own words (dermoscopy.py: recall-first referral;
steel.py: manual review); the numbers a policy compares against — the recall-first thresholds,
the 90% prediction set — come from the model's decision rule. Both policies call an answer
unsure the same way: its prediction set holds more than the decided class (several classes are
plausible). An image that fails the modality check gets the task's refusal whatever the policy
(`refused`); an image unlike the training images (the familiarity check) is answered with a
`caution` (`caution`), and each policy leans to caution for it. Every verdict ends with the
task's disclaimer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .base import Task, Verdict

UNKNOWN = "unknown"  # the level of an image that fails the input check


def refused(task: Task, score: float, threshold: float) -> Verdict:
    """The verdict of an image the input check refuses: no diagnosis-like words at all."""
    return Verdict(UNKNOWN, task.refusal, f"The input check scores it {score:.2f}, over its threshold of "
                                          f"{threshold:.2f}: the model was not trained on images like this, so "
                                          f"the probabilities mean nothing here. Try {task.subject}.")


def caution(task: Task, measured: str | None) -> str:
    """What an answer for an image unlike the training images says first: the task's words, then
    how the model measured on such images (the model folder's figure, when it has one)."""
    return f"{task.unfamiliar}: on such images the model's accuracy was measured lower" + (
        f" ({measured})." if measured else ".")


def unsure(prediction_set: Sequence[str], decided: str) -> bool:
    """The one test of an unsure answer, for both policies: the set is not the decided class alone."""
    return set(prediction_set) != {decided}


def unsure_why(prediction_set: Sequence[str], task: Task) -> str:
    names = ", ".join(task.info(c).name for c in prediction_set)
    return f"The 90% prediction set holds {len(prediction_set)} classes: {names}."


@dataclass(frozen=True)
class RecallFirst:
    """A class of a high-risk group (tasks/base.py: HIGH_RISK) at or over its recall-first
    threshold refers; else a prediction set of several classes is uncertain; else the decided
    class is named. With a `caution` (an unfamiliar image): a high-risk class anywhere in the
    prediction set refers too, and otherwise the answer is uncertain, never clear."""
    refer: str                      # the headlines
    uncertain: str
    clear: str
    clear_means: str                # what "clear" says was not found

    def __call__(self, probabilities: Mapping[str, float], decided: str, prediction_set: Sequence[str],
                 thresholds: Mapping[str, float], task: Task, caution: str | None = None) -> Verdict:
        names = {c.code: c.name for c in task.classes}
        first = f"{caution} " if caution else ""
        flagged = [c for c in task.high_risk_codes if probabilities[c] >= thresholds.get(c, 0.5)]
        in_set = [c for c in task.high_risk_codes if caution and c in prediction_set and c not in flagged]
        if flagged or in_set:
            listed = ", ".join(f"{names[c]} ({probabilities[c]:.0%})" for c in flagged)
            why = (f"Probability at or above the high-sensitivity threshold for: {listed}. " if flagged else "") + (
                f"In the 90% prediction set: {', '.join(names[c] for c in in_set)}. " if in_set else "")
            return Verdict("refer", self.refer, f"{first}{why}{task.disclaimer}")
        if caution or unsure(prediction_set, decided):
            return Verdict("uncertain", self.uncertain, f"{first}{unsure_why(prediction_set, task)} {task.disclaimer}")
        return Verdict("clear", self.clear, f"Classified as {names[decided]} ({probabilities[decided]:.0%}); "
                                            f"{self.clear_means}. {task.disclaimer}")


@dataclass(frozen=True)
class ManualReview:
    """A prediction set of several classes goes to a person, and so does any answer with a
    `caution` (an unfamiliar image); else the decided class is named."""
    review: str                 # the headline of an answer a person must check
    found: str                  # the headline of an answer, with {name}: "Defect: {name}"

    def __call__(self, probabilities: Mapping[str, float], decided: str, prediction_set: Sequence[str],
                 thresholds: Mapping[str, float], task: Task, caution: str | None = None) -> Verdict:
        name = task.info(decided).name
        answer = f"{name} ({probabilities[decided]:.0%})"
        if caution or unsure(prediction_set, decided):
            return Verdict("review", self.review, (f"{caution} " if caution else "")
                           + f"Not sure enough for an automatic label: classified as {answer}. "
                           f"{unsure_why(prediction_set, task)} {task.disclaimer}")
        return Verdict("named", self.found.format(name=name), f"{answer}. {task.disclaimer}")
