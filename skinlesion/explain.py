"""Attribution maps through captum — Grad-CAM (the default), Integrated Gradients, Occlusion —
and the heat-map overlay.

Grad-CAM: the forward function handed to captum returns the explained class's logit and keeps
the logits, so one forward/backward pass gives both the heat-map and the probabilities. With
the model's parameters frozen, autograd records only from the hooked stage on: the backward
pass runs through the head alone and costs little next to the forward pass.

Every method's map is the evidence *for* the explained class (negative attributions are
dropped), one value per input pixel or per Grad-CAM cell, scaled to 0..1 by `upsample_heatmap`.
Integrated Gradients integrates from the mean colour (zeros after normalisation) in
`Settings.ig_steps` batched steps, and its pixel map is averaged over `ig_smooth` pixels so
that it ranks regions, as deletion and insertion test them; Occlusion greys out
`occlusion_window` squares of the model's input at the largest stride up to
`occlusion_stride` that tiles it exactly (no edge left unexamined), in batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from matplotlib import colormaps
from PIL import Image


def last_stage(model: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage, as timm's feature_info names it (blocks.6 for B0)."""
    return model.get_submodule(model.feature_info[-1]["module"])


def grad_cam(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
             index: int | Callable[[torch.Tensor], int] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ReLU'd Grad-CAM (n, 1, h, w) of class `index` for each of the n images, in float32, with
    the logits of the same pass and the index explained. `index` may be a function of the
    logits (the decision rule's choice), or None for the first image's arg-max."""
    seen: dict = {}

    def explained_logit(inputs: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        seen["logits"] = logits.detach()
        chosen = index(logits.detach()) if callable(index) else index
        seen["index"] = int(logits[0].argmax()) if chosen is None else int(chosen)
        return logits[:, seen["index"]]

    with torch.autocast(x.device.type, enabled=False):
        cam = LayerGradCam(explained_logit, layer).attribute(x.float(), relu_attributions=True)
    return cam.detach(), seen["logits"], seen["index"]


GRAD_CAM, INTEGRATED_GRADIENTS, OCCLUSION = "Grad-CAM", "Integrated Gradients", "Occlusion"
METHODS = (GRAD_CAM, INTEGRATED_GRADIENTS, OCCLUSION)  # the names the page and /explain take


@dataclass(frozen=True)
class Settings:
    """How the slower methods run. Chosen by `python -m benchmarks.explanation_settings`
    (docs/explanations.md): the cheapest setting within noise of the most faithful."""
    ig_steps: int = 8            # as faithful as 16 or 32, at half the time or less
    ig_smooth: int = 9           # pixels the IG map is averaged over, so that it ranks regions
    occlusion_window: int = 32   # pixels of the model's input greyed out at a time
    occlusion_stride: int = 24   # (20 at 192 px) as faithful as 16 or 8, and faster
    per_batch: int = 16          # occluded copies per forward pass

    def stride(self, size: int) -> int:
        """The largest stride ≤ occlusion_stride whose windows end exactly at the input's edge."""
        span = max(size - self.occlusion_window, 0)
        return next((s for s in range(min(self.occlusion_stride, span), 0, -1) if span % s == 0), 1)


SHIPPED = Settings()


def attribution_map(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, method: str = GRAD_CAM,
                    index: int | Callable[[torch.Tensor], int] | None = None, settings: Settings = SHIPPED
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The map (1, 1, h, w) of `method` for class `index` (as in `grad_cam`), non-negative, with
    the logits of the image and the index explained."""
    if method == GRAD_CAM:
        return grad_cam(model, layer, x, index)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    x = x.float()
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        logits = model(x)
    chosen = index(logits) if callable(index) else int(logits[0].argmax()) if index is None else int(index)
    with torch.autocast(x.device.type, enabled=False):
        if method == INTEGRATED_GRADIENTS:
            steps, smooth = settings.ig_steps, settings.ig_smooth
            attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=chosen,
                                                        n_steps=steps, internal_batch_size=steps)
            attr = torch.nn.functional.avg_pool2d(attr.sum(1, keepdim=True).clamp(min=0), smooth, 1, smooth // 2)
        else:
            window, stride = min(settings.occlusion_window, *x.shape[-2:]), settings.stride(min(x.shape[-2:]))
            attr = Occlusion(model).attribute(
                x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
                baselines=0, target=chosen, perturbations_per_eval=settings.per_batch).sum(1, keepdim=True).clamp(min=0)
    return attr.detach(), logits.detach(), int(chosen)


def upsample_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1, 1, h, w) → (H, W) float32 in 0..1: bilinear, scaled by its maximum (zeros stay zero)."""
    up = LayerAttribution.interpolate(cam.float(), size, interpolate_mode="bilinear")[0, 0]
    peak = float(up.max())
    return (up / peak if peak > 0 else torch.zeros_like(up)).clamp(0, 1).cpu().numpy().astype(np.float32)


OVERLAY_OPACITY = 0.45  # the heat-map's default weight over the image (API, page, Predictor)
COLOURS = colormaps["jet"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)  # a lookup table


def overlay(rgb: np.ndarray, heatmap: np.ndarray, opacity: float = OVERLAY_OPACITY) -> Image.Image:
    """The colour-mapped heat-map blended over the image; weak attributions stay see-through."""
    colours = COLOURS[(heatmap * 255).round().astype(np.uint8)]
    alpha = float(np.clip(opacity, 0, 1)) * np.sqrt(heatmap)[..., None]
    blended = rgb.astype(np.float32) / 255 * (1 - alpha) + colours * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the heat-map's total energy that falls inside the annotated region."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else None


def peak_inside(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    return bool(mask[np.unravel_index(int(heatmap.argmax()), heatmap.shape)])
