"""Features of several blocks, taken from the model's own forward pass.

The input check (check.py) and the similar cases read what the model computes anyway: forward
hooks on timm's stages (`feature_info`) keep each stage's per-channel mean and standard
deviation over the image, and the pooled features before the classifier. No second pass, and
the heat-map's pass (captum's) feeds them as well as a plain one.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..hooks import ThreadLocalHooks

POOLED = "pooled"  # the name of the pooled pre-logit features (model.global_pool's output)


def stage_names(model: torch.nn.Module) -> list[str]:
    """timm's stage modules (blocks.0, 1, 2, 4 and 6 for B0), in order."""
    return [info["module"] for info in model.feature_info]


def channel_statistics(x: torch.Tensor) -> torch.Tensor:
    """n×C×H×W → n×2C: each channel's mean and standard deviation over the image."""
    flat = x.detach().float().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2, unbiased=False)], dim=1)


class FeatureTap(ThreadLocalHooks):
    """Forward hooks on named modules. Inside `recording()`, every pass appends its features;
    `take()` returns what was recorded since the last take, as {name: n×d float32 CPU tensor}.
    Outside `recording` the hooks do nothing. What is recorded is the calling thread's own, so
    one Predictor can serve several threads."""

    def __init__(self, model: torch.nn.Module, stages: list[str]):
        super().__init__()
        self.stages = list(stages)
        for name in self.stages:
            self.hook(model.get_submodule(name), self._hook(name, channel_statistics))
        self.hook(model.global_pool, self._hook(POOLED, self._flat))

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().flatten(1)

    def _hook(self, name: str, reduce):
        def hook(_module, _inputs, output):
            seen = getattr(self._local, "seen", None)
            if seen is not None:
                seen.setdefault(name, []).append(reduce(output).cpu())
        return hook

    @contextmanager
    def recording(self) -> Iterator["FeatureTap"]:
        self._local.seen = {}
        try:
            yield self
        finally:
            self._local.seen = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Passes inside are not recorded (an ensemble's other members and views: ensemble.py)."""
        seen = getattr(self._local, "seen", None)
        self._local.seen = None
        try:
            yield
        finally:
            self._local.seen = seen

    def take(self, last: bool = False) -> dict[str, torch.Tensor]:
        """The features of the passes since the last take (inside `recording`), row by row;
        `last`: nothing more is recorded until the next `recording` (a heat-map's further passes,
        Occlusion's occluded copies, are not the answer's)."""
        seen = getattr(self._local, "seen", None)
        if seen is None:
            raise RuntimeError("FeatureTap.take() outside recording()")
        self._local.seen = None if last else {}
        return {name: torch.cat(parts) for name, parts in seen.items()}
