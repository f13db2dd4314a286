"""What an answer knows about its own limits, behind one entry.

    trust = Trust.load(folder, config, codes, net)    # the parts this model folder ships
    with trust.recording():                           # around the answer's own forward pass
        logits = net(x)
        features = trust.features()                   # what the pass recorded (features.py)
    assessments = trust.assess(features, rows)        # per row: known? familiar? the scores, similar cases

The parts, one file each, all reading the features of the answer's own pass (no second pass):
- modality.py: the modality check — is this an image of the task's kind at all (dermoscopy, a
  steel surface)? An image that fails it is refused (`known` False).
- check.py: the familiarity check — is it like the training images? One that is not is still
  answered, marked unfamiliar (`familiar` False), and its verdict leans to caution. In a folder
  without a modality check (an older model), failing it refuses, as before.
- gallery.py: the nearest confirmed training cases (shown only for an image that is not refused).
conformal.py is the arithmetic of the 90% prediction sets; their numbers are part of the
decision rule (decision.py) that every answer applies. features.py records the features.

A new part is one file with a class that has `stages` (the stages whose statistics it reads)
and `assess(features, rows, so_far) -> list[Assessment]` (the rows at once: one batched
computation, not one per image), and one line in `Trust.load`; an
`Assessment` field carries its finding to the `Analysis` (predictor.py), which has the same field.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Mapping, Protocol, Sequence

import torch

from .check import InputCheck
from .features import FeatureTap
from .gallery import Case, Gallery, Neighbour
from .modality import ModalityCheck

Features = Mapping[str, torch.Tensor]  # FeatureTap.take(): name → rows × d


@dataclass(frozen=True)
class Assessment:
    """The trust parts' findings about one image (the same names as Analysis' fields)."""
    known: bool = True                     # not refused: the modality check passed (True without a check)
    check_score: float | None = None       # the refusing check's score and threshold: known = score ≤ threshold
    check_threshold: float | None = None
    familiar: bool = True                  # like the training images: the familiarity check passed
    familiarity_score: float | None = None  # its score and threshold: familiar = score ≤ threshold
    familiarity_threshold: float | None = None
    similar: list[Neighbour] = field(default_factory=list)  # nearest gallery cases, most similar first


class Part(Protocol):
    stages: tuple[str, ...]

    def assess(self, features: Features, rows: Sequence[int], so_far: list[Assessment]) -> list[Assessment]: ...


class Trust:
    """The trust parts of a model folder and the FeatureTap that feeds them from the answer's pass."""

    def __init__(self, parts: Sequence[Part] = (), tap: FeatureTap | None = None):
        self.parts, self._tap = list(parts), tap
        self.modality = next((p for p in parts if isinstance(p, ModalityCheck)), None)
        self.check = next((p for p in parts if isinstance(p, InputCheck)), None)
        self.gallery = next((p for p in parts if isinstance(p, Gallery)), None)

    @classmethod
    def load(cls, folder: str | Path | None, config: Mapping, codes: Sequence[str], net) -> "Trust":
        """The parts `folder` ships (none for a folder without them, or no folder), with a
        FeatureTap on `net` (models/ensemble.Ensemble.tap: the primary model's plain view)."""
        if folder is None:
            return cls()
        modality = ModalityCheck.load(folder, config)
        check = InputCheck.load(folder, config, refuses=modality is None)
        gallery = Gallery.load(folder, codes, check.gallery if check else None)
        parts = [p for p in (modality, check, gallery) if p is not None]  # in this order: gallery reads `known`
        stages = list(dict.fromkeys(s for p in parts for s in p.stages))
        return cls(parts, net.tap(stages) if parts else None)

    def recording(self) -> ContextManager:
        """Record the features of the passes inside (none without parts)."""
        return self._tap.recording() if self._tap else nullcontext()

    def features(self, last: bool = False) -> dict[str, torch.Tensor] | None:
        """The features of the passes since the last call, inside `recording` (FeatureTap.take);
        `last`: nothing more is recorded until the next `recording`."""
        return self._tap.take(last) if self._tap else None

    def assess(self, features: Features | None, rows: Sequence[int] = (0,)) -> list[Assessment]:
        """Every part's finding for each of `rows` of `features` (one row per image; a tiled
        image: the tile answered)."""
        assessments = [Assessment() for _ in rows]
        for part in self.parts if features is not None else ():
            assessments = part.assess(features, list(rows), assessments)
        return assessments

    def cases(self, neighbours: Sequence[Neighbour]) -> list[Case]:
        """The gallery's cases (thumbnail, diagnosis, confirmation) of `neighbours`."""
        return [self.gallery.case(n) for n in neighbours] if self.gallery else []
