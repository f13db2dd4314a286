"""What a task is: its class table, its data reader, where its annotations and bundled model
are, and the words the page and the model card use. Each task is one module of this package
defining `TASK = Task(...)`; the package collects them (tasks/__init__.py). A task's verdict is
a policy of verdicts.py in the task's words; the `Verdict` it returns and the policies' call
are defined here, so that this module imports nothing of the policies."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from ..data import Record
from ..patient import Patient

ASSETS = Path(__file__).resolve().parents[2] / "assets"

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


@dataclass(frozen=True)
class Verdict:
    level: str      # a page colour: "unknown"; recall-first "refer", "uncertain", "clear";
                    # manual review "review", "named"
    headline: str
    detail: str


class VerdictPolicy(Protocol):
    """An answer → what a person is told (verdicts.py). `thresholds`: the decision rule's
    recall-first thresholds of the high-risk classes; `caution`: what an answer for an image unlike
    the training images says first (verdicts.caution), None for a familiar one."""
    def __call__(self, probabilities: Mapping[str, float], decided: str, prediction_set: Sequence[str],
                 thresholds: Mapping[str, float], task: "Task", caution: str | None = None) -> Verdict: ...


@dataclass(frozen=True)
class Task:
    key: str                      # the name in config.json, on the command line and in the API
    title: str                    # the page's task selector
    subject: str                  # what an input is: "a dermoscopic image"
    refusal: str                  # the headline of an image the modality check refuses
    classes: tuple[ClassInfo, ...]  # in the model's output order
    load: Callable[[Path], list[Record]]  # a data folder → checked records
    annotation: Callable[[Path, str, tuple[int, int]], np.ndarray | None]  # where the finding is
    annotation_name: str          # "lesion masks"
    data_folder: str              # its folder's name inside a data root such as ../shared/data
    dataset: str
    license: str                  # Hugging Face licence id of the trained weights
    license_text: str
    citation: str
    intended_use: str
    out_of_scope: str
    limitations: str              # Markdown bullet list
    ethics: str                   # the page's "Data & ethics" text
    disclaimer: str               # said with every verdict
    verdict: VerdictPolicy        # verdicts.py: the policy, in the task's words
    confirmations: Callable[[Path], dict[str, str]] = lambda root: {}  # image id → how its label was confirmed
    groups: Callable[[Path], dict[str, dict[str, str]]] = lambda root: {}  # image id → {attribute: its group}
    patients: Callable[[Path], dict[str, Patient]] = lambda root: {}  # image id → its patient's record (patient.py)
    skin: bool = False            # images of skin: the estimated skin tone (skintone.py) is a subgroup too
    unfamiliar: str = "An image unlike the training images"  # its caution's first words (verdicts.caution)
    acquisition_shift: float = 0.0  # how strongly the images may change between devices and still be of the task:
                                    # the modality check's shifted copies (train/outliers.acquisition_shifted); 0: none
    default: bool = False         # the task the page, the API and the CLI use when none is named
    tile_large_images: bool = False  # long images (strips) analysed in tiles unless asked otherwise

    @property
    def model_folder(self) -> Path:
        """The bundled model: assets/models/<key>/."""
        return ASSETS / "models" / self.key

    @property
    def codes(self) -> list[str]:
        """Label order of the model's outputs."""
        return [c.code for c in self.classes]

    @property
    def high_risk_codes(self) -> list[str]:
        """Classes that get a recall-first threshold (none for a manual-review task)."""
        return [c.code for c in self.classes if c.risk in HIGH_RISK]

    def confirmation(self, confirmed: dict[str, str], image_id: str) -> str:
        """How an image's label was confirmed: `confirmations`' word, else the database's label."""
        return confirmed.get(image_id, f"label of the {self.dataset}")

    def info(self, code: str) -> ClassInfo:
        return next(c for c in self.classes if c.code == code)
