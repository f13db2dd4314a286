"""What an analysis returns (`Analysis`), and an image made ready for the model (`Prepared`).

Every way in — the page, each endpoint, the batch path, the command line — gets the same
`Analysis` from the Predictor (predictor.py) and presents it (app/views.py, batch.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .patient import Patient
from .skintone import group
from .tasks import Verdict
from .tiles import Box
from .trust.gallery import Neighbour


@dataclass
class Analysis:
    image: np.ndarray | None           # the checked RGB input, H×W×3 uint8 (None from analyse_many)
    probabilities: dict[str, float]    # calibrated, every class, summing to 1; a tiled image: the worst tile's
    decided: str                       # the decision rule's class
    verdict: Verdict                   # in the task's words
    prediction_set: list[str] = field(default_factory=list)  # 90% conformal set, in class order
    known: bool = True                 # not refused: an image of the task's kind (trust/modality.py; always
                                       # True for a model without checks)
    check_score: float | None = None   # the refusing check's score (None: the model has no check) …
    check_threshold: float | None = None  # … and its threshold: known = score ≤ threshold
    familiar: bool = True              # like the training images (trust/check.py); an unfamiliar image is
                                       # answered with caution (another device or clinic?)
    familiarity_score: float | None = None  # the familiarity check's score and threshold
    familiarity_threshold: float | None = None
    heatmap: np.ndarray | None = None  # H×W float32 in 0..1: `method`'s evidence for `target`; None: not asked
    target: str | None = None          # the class the heat-map explains
    method: str | None = None          # the method behind the heat-map (explain.METHODS)
    region: Box | None = None          # a tiled image: the worst tile
    tiles: int = 0                     # the number of tiles; 0: the whole image in one view
    similar: list[Neighbour] = field(default_factory=list)  # the nearest gallery cases, most similar first
                                       # (gallery.NEIGHBOURS; empty for an unknown image or no gallery)
    skin_ita: float | None = None      # the estimated skin tone's ITA° (skintone.estimate; a task of skin only)
    patient: Patient | None = None     # the patient's record the answer used (patient.py); None: the image alone

    @property
    def skin_tone(self) -> str | None:
        """The estimated skin tone's group (skintone.GROUPS); None when not estimated."""
        return group(self.skin_ita)


@dataclass
class Prepared:
    """A checked image as the model's input: one view, or its tiles."""
    x: torch.Tensor                    # n×C×H×W, normalised, on the device
    size: tuple[int, int]              # the image's height and width (at most images.WORKING_PIXELS)
    boxes: list[Box] | None = None     # the tiles' boxes; None: the whole image
    image: np.ndarray | None = None    # the RGB image, kept when a heat-map will need it
    pixels: int = 0                    # the source's pixels: what decoding it cost (a batch's budget)
    skin_ita: float | None = None      # skintone.estimate of the whole image, for a task of skin
