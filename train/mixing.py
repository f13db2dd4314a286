"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) of each training batch with the batch
reversed, as timm's Mixup in its "batch" mode; the CutMix box and its corrected share come from
timm (`cutmix_bbox_and_lam`).

Written here rather than used as timm's Mixup because that one turns the labels into soft
targets for a soft cross-entropy, which normalises class weights per image instead of per
weight: the loss here stays the recipe's class-weighted, label-smoothed criterion, taken on both
labels and weighted by the mix, λ·L(ŷ, y) + (1 − λ)·L(ŷ, y reversed). A teacher
(train/distill.py) sees the mixed batch as the student does."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from timm.data.mixup import cutmix_bbox_and_lam

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Mixing:
    mixup: float   # Beta(α, α) of MixUp's share; 0 = off
    cutmix: float  # Beta(α, α) of CutMix's box; 0 = off. Both on: one or the other per batch, even odds
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, x: torch.Tensor) -> float:
        """Mixes the batch `x` in place with itself reversed; λ, the share of each image's own."""
        kinds = [kind for kind, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)) if alpha > 0]
        if not kinds:
            return 1.0
        kind = kinds[self.rng.integers(len(kinds))]
        alpha = self.mixup if kind == "mixup" else self.cutmix
        lam = float(self.rng.beta(alpha, alpha))
        if kind == "cutmix":
            (top, bottom, left, right), lam = cutmix_bbox_and_lam(x.shape, lam)
            x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        else:
            other = x.flip(0).mul_(1.0 - lam)  # a copy, taken before x is scaled
            x.mul_(lam).add_(other)
        return float(lam)


def mixed_loss(criterion: Loss, lam: float) -> Loss:
    """The criterion on a batch mixed with share λ: on its own labels and on the reversed batch's."""
    if lam == 1.0:
        return criterion
    return lambda logits, y: lam * criterion(logits, y) + (1.0 - lam) * criterion(logits, y.flip(0))
