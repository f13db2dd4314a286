"""The one source of truth for each task's classes.

A task's classes are a table (a tuple of `ClassInfo`); everything else — label order in the
model, colours on the page, which classes get a recall-first threshold — is read from it.
A second task is a second table in `CLASS_TABLES`, not a fork of the code; the rest of a
task (its data reader, model folder, texts) is in tasks.py.
"""
from __future__ import annotations

from dataclasses import dataclass

MALIGNANT, PRE_MALIGNANT, BENIGN = "malignant", "pre-malignant", "benign"
DEFECT = "defect"  # steel: every class is a defect; what matters is naming it right
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

NEU = (  # NEU surface defect database, hot-rolled steel strip
    ClassInfo("crazing", "Crazing", "A network of fine surface cracks.", DEFECT, "#6d4c41"),
    ClassInfo("inclusion", "Inclusion", "Non-metallic particles rolled into the surface.", DEFECT, "#5e35b1"),
    ClassInfo("patches", "Patches", "Irregular darker or lighter areas of the surface.", DEFECT, "#00897b"),
    ClassInfo("pitted_surface", "Pitted surface", "Small pits and craters scattered over the surface.",
              DEFECT, "#c0ca33"),
    ClassInfo("rolled-in_scale", "Rolled-in scale", "Oxide scale pressed into the strip during rolling.",
              DEFECT, "#f4511e"),
    ClassInfo("scratches", "Scratches", "Straight grooves along the rolling direction.", DEFECT, "#1e88e5"),
)

CLASS_TABLES: dict[str, tuple[ClassInfo, ...]] = {"ham10000": HAM10000, "neu": NEU}
DEFAULT_TASK = "ham10000"


def class_table(task: str = DEFAULT_TASK) -> tuple[ClassInfo, ...]:
    try:
        return CLASS_TABLES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(CLASS_TABLES)}") from None


def class_codes(task: str = DEFAULT_TASK) -> list[str]:
    """Label order of the model's outputs for `task`."""
    return [c.code for c in class_table(task)]


def high_risk_codes(task: str = DEFAULT_TASK) -> list[str]:
    return [c.code for c in class_table(task) if c.risk in HIGH_RISK]
