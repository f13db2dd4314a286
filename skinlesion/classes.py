"""The one source of truth for each task's classes.

A task's classes are a table (a tuple of `ClassInfo`); everything else — label order in the
model, colours on the page, which classes get a recall-first threshold — is read from it.
A second task is a second table in `TASKS`, not a fork of the code.
"""
from __future__ import annotations

from dataclasses import dataclass

MALIGNANT, PRE_MALIGNANT, BENIGN = "malignant", "pre-malignant", "benign"
# Risk groups whose classes get a recall-first operating threshold (a miss costs most).
HIGH_RISK = (MALIGNANT, PRE_MALIGNANT)


@dataclass(frozen=True)
class ClassInfo:
    code: str
    name: str
    description: str
    risk: str
    colour: str  # hex, used for the page and the plots


HAM10000 = (
    ClassInfo("akiec", "Actinic keratosis / intraepithelial carcinoma",
              "Rough, scaly sun-damage patch that can progress to squamous cell carcinoma.",
              PRE_MALIGNANT, "#e67e22"),
    ClassInfo("bcc", "Basal cell carcinoma",
              "The most common skin cancer; grows slowly and rarely spreads, but needs treatment.",
              MALIGNANT, "#c0392b"),
    ClassInfo("bkl", "Benign keratosis-like lesion",
              "Seborrhoeic keratosis, solar lentigo or lichen-planus-like keratosis; harmless.",
              BENIGN, "#8e9e5a"),
    ClassInfo("df", "Dermatofibroma",
              "A firm, harmless nodule of the skin, often on the legs.",
              BENIGN, "#6b8e9e"),
    ClassInfo("mel", "Melanoma",
              "A cancer of pigment cells; dangerous when missed, curable when caught early.",
              MALIGNANT, "#7b1e1e"),
    ClassInfo("nv", "Melanocytic nevus",
              "A common mole; benign, and by far the most frequent class in the data.",
              BENIGN, "#2e86c1"),
    ClassInfo("vasc", "Vascular lesion",
              "Cherry angioma, angiokeratoma, pyogenic granuloma or haemorrhage; benign.",
              BENIGN, "#8e44ad"),
)

TASKS: dict[str, tuple[ClassInfo, ...]] = {"ham10000": HAM10000}
DEFAULT_TASK = "ham10000"


def class_table(task: str = DEFAULT_TASK) -> tuple[ClassInfo, ...]:
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


def class_codes(task: str = DEFAULT_TASK) -> list[str]:
    """Label order of the model's outputs for `task`."""
    return [c.code for c in class_table(task)]


def high_risk_codes(task: str = DEFAULT_TASK) -> list[str]:
    return [c.code for c in class_table(task) if c.risk in HIGH_RISK]
