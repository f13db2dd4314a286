"""The network that answers: a model folder's own model, optionally with further models and
mirror views (test-time augmentation), averaged, as one module.

A model folder names its members and views in config.json (`python -m train.ensemble` writes
it; without the key the folder's model answers alone, on the plain view):

    "ensemble": {"temperature": 0.61,                       # the folder's own model's
                 "members": [{"folder": "members/lite0-224", "temperature": 0.85}],
                 "views": ["plain", "hflip"]}

`Ensemble(x)` returns log p, where p averages every member's temperature-scaled softmax over the
views (each member's temperature fitted alone on validation, so that no member dominates by
being over-confident). The decision rule (decision.py) takes log p as its logits: for one model
and the plain view, softmax(log_softmax(z) / T) = softmax(z / T), so a folder without
"ensemble" answers exactly as its model does, and a folder with one has its whole rule —
temperature, class bias, thresholds, prediction sets — fitted on what the ensemble outputs.

The folder's own model is the *primary*: its plain view runs first, and it is the pass whose
features the input check and the similar cases read (features.py); the heat-map explains it.
The other passes run inside `quiet()`, which `tap` points at the FeatureTap's pause.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..trust.features import FeatureTap
from .network import load_model_folder
from .spec import ModelFolderError, ModelSpec

ENSEMBLE_KEY = "ensemble"
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "plain": lambda x: x,
    "hflip": lambda x: x.flip(-1),   # mirror left-right
    "vflip": lambda x: x.flip(-2),   # mirror top-bottom
    # the rest of the square's symmetries (the dihedral group: a lesion has no up or left), as
    # flips and transposes, which ONNX exports (torch.rot90 it does not)
    "rot180": lambda x: x.flip(-2, -1),
    "transpose": lambda x: x.transpose(-2, -1),                    # mirror about the main diagonal
    "rot90": lambda x: x.flip(-1).transpose(-2, -1),               # a quarter turn anticlockwise
    "rot270": lambda x: x.flip(-2).transpose(-2, -1),              # a quarter turn clockwise
    "antitranspose": lambda x: x.flip(-2, -1).transpose(-2, -1),  # mirror about the other diagonal
}


def average(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """log of the mean of the probabilities, from their logs (logsumexp: no underflow)."""
    return torch.logsumexp(torch.stack(list(log_probs)), 0) - math.log(len(log_probs))


Normalisation = tuple[Sequence[float], Sequence[float]]  # (mean, std) per channel


def renormalise(x: torch.Tensor, given: Normalisation, wanted: Normalisation) -> torch.Tensor:
    """A batch normalised with `given` (mean, std), normalised with `wanted` instead: the same pixels."""
    if tuple(given[0]) == tuple(wanted[0]) and tuple(given[1]) == tuple(wanted[1]):
        return x
    mean, std = (x.new_tensor(given[k]).view(1, -1, 1, 1) for k in (0, 1))
    own_mean, own_std = (x.new_tensor(wanted[k]).view(1, -1, 1, 1) for k in (0, 1))
    return (x * std + mean - own_mean) / own_std


class Ensemble(torch.nn.Module):
    """Members (the primary first) with their temperatures, input sizes (None: the input as
    given; else resized to size×size, as the member was trained) and normalisations (None: the
    primary's; else the member's own (mean, std), from the primary's), averaged over `views`."""

    def __init__(self, models: Sequence[torch.nn.Module], temperatures: Sequence[float] | None = None,
                 sizes: Sequence[int | None] | None = None, views: Sequence[str] = ("plain",),
                 normalisations: Sequence[tuple[Normalisation, Normalisation] | None] | None = None):
        super().__init__()
        unknown = [v for v in views if v not in VIEWS]
        if unknown or not views or views[0] != "plain":
            raise ValueError(f"views must start with 'plain' and be among {', '.join(VIEWS)}: {list(views)}")
        self.members = torch.nn.ModuleList(models)
        self.temperatures = [float(t) for t in (temperatures or [1.0] * len(models))]
        self.sizes = list(sizes or [None] * len(models))
        self.normalisations = list(normalisations or [None] * len(models))
        self.views = tuple(views)
        self.quiet: Callable = nullcontext

    @property
    def primary(self) -> torch.nn.Module:
        return self.members[0]

    @property
    def single(self) -> bool:
        """One model, one view: its logits are the answer's (no averaging)."""
        return len(self.members) == 1 and self.views == ("plain",)

    @property
    def passes(self) -> int:
        return len(self.members) * len(self.views)

    def tap(self, stages: Sequence[str]) -> FeatureTap:
        """A FeatureTap on the primary that records only the primary's plain view."""
        tap = FeatureTap(self.primary, list(stages))
        self.quiet = tap.paused
        return tap

    def member_log_probs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every member's and view's log_softmax(z / T), the primary's plain view first."""
        parts = []
        for i, (model, temperature, size, normalisation) in enumerate(
                zip(self.members, self.temperatures, self.sizes, self.normalisations)):
            if size is not None and tuple(x.shape[-2:]) != (size, size):
                inputs = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            else:
                inputs = x
            if normalisation is not None:
                inputs = renormalise(inputs, *normalisation)
            for j, view in enumerate(self.views):
                with nullcontext() if i == j == 0 else self.quiet():
                    parts.append(torch.log_softmax(model(VIEWS[view](inputs)).float() / temperature, dim=-1))
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single:
            return self.primary(x)
        return average(self.member_log_probs(x))

    def describe(self, input_size: int) -> dict:
        """What answers, for metrics.json and the card: each model with its input size, the views."""
        models = [f"{getattr(m, 'pretrained_cfg', {}).get('architecture', type(m).__name__)} at {s or input_size} px"
                  for m, s in zip(self.members, self.sizes)]
        return {"models": models, "views": list(self.views), "passes": self.passes}


def load_ensemble(folder: str | Path) -> tuple[Ensemble, ModelSpec]:
    """The folder's model with the members and views its config names (model.py loads each);
    ModelFolderError when a member is missing, outside the folder, or answers other classes."""
    folder = Path(folder)
    model, spec = load_model_folder(folder)
    settings = spec.config.get(ENSEMBLE_KEY) or {}
    models, temperatures, sizes, normalisations = [model], [settings.get("temperature", 1.0)], [None], [None]
    for member in settings.get("members", []):
        where = (folder / member["folder"]).resolve()
        if not where.is_relative_to(folder.resolve()):
            raise ModelFolderError(f"{folder}: ensemble member {member['folder']!r} lies outside the folder")
        other, other_spec = load_model_folder(where)
        if (other_spec.codes, other_spec.preprocessing) != (spec.codes, spec.preprocessing):
            raise ModelFolderError(f"{where}: its classes or preprocessing differ from {folder}'s")
        models.append(other)
        temperatures.append(member.get("temperature", 1.0))
        sizes.append(other_spec.input_size)
        normalisations.append(((spec.mean, spec.std), (other_spec.mean, other_spec.std)))
    try:
        return Ensemble(models, temperatures, sizes, settings.get("views", ["plain"]), normalisations), spec
    except ValueError as error:
        raise ModelFolderError(f"{folder}: {error}") from None
