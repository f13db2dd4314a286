"""Attribution maps — Grad-CAM (the default), Integrated Gradients and Occlusion (captum) —
and the heat-map overlay.

Grad-CAM explains the answer's own forward pass, in the order pytorch-grad-cam uses
(base_cam.py): forward, choose the target, backward once. Only the layers after the last stage
(the head) lie between its output and the logits, so only they need gradients. Two ways:
- the pass that answers already returned the last stage's output (a frozen graph's or ONNX
  Runtime's, models/onnx.py: ACTIVATION): `GradCam.from_activation` runs the head again on it,
  with gradients, and backpropagates the decided class's logit through the head alone;
- else `GradCam.watch()` makes the last stage's output record gradients during the (eager) pass
  that answers; the caller decides the class from that pass's logits, then `Watched.maps(index)`
  backpropagates that class's logit. With the model's parameters frozen, autograd records only
  from the hooked stage on, so this backward pass too runs through the head alone. Why not captum's
LayerGradCam here: it runs its own forward pass inside `attribute`, so the answer would need a
second pass, or a callback handed into captum to pick the class; tests/test_explain.py pins this
Grad-CAM to captum's LayerGradCam and to a textbook implementation.

Every method's map is the evidence *for* the explained class (negative attributions are
dropped), one value per input pixel or per Grad-CAM cell, scaled to 0..1 by `upsample_heatmap`.
Integrated Gradients integrates from the mean colour (zeros after normalisation) in
`Settings.ig_steps` batched steps, and its pixel map is averaged over `ig_smooth` pixels so
that it ranks regions, as deletion and insertion test them; Occlusion greys out
`occlusion_window` squares of the model's input at the largest stride up to
`occlusion_stride` that tiles it exactly (no edge left unexamined), in batches.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, Occlusion

from .hooks import ThreadLocalHooks


def last_stage(model: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage, as timm's feature_info names it (blocks.6 for B0)."""
    return model.get_submodule(model.feature_info[-1]["module"])


class Watched:
    """What one watched pass kept: the last stage's output and the model's logits, of its first
    call (an ensemble's primary model on the plain view runs first)."""

    def __init__(self, grad: bool = True) -> None:
        self.grad = grad  # False: the activation is only kept (GradCam.keeping)
        self.activation: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def maps(self, index: int) -> torch.Tensor:
        """Grad-CAM (n, 1, h, w) of class `index` for every image of the pass (`cam`)."""
        if self.activation is None or self.logits is None:
            raise RuntimeError("no watched forward pass of the model")
        return cam(self.activation, self.logits, index)


def cam(activation: torch.Tensor, logits: torch.Tensor, index: int) -> torch.Tensor:
    """ReLU'd Grad-CAM (n, 1, h, w) of class `index`: the class logit's gradient with respect to
    the last stage's `activation` (from which autograd recorded `logits`), averaged over each
    channel, weighs the channel's activation."""
    (grads,) = torch.autograd.grad(logits[:, index].sum(), activation)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activation).sum(1, keepdim=True)).detach().float()


def head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The layers after the last stage, as one function (last stage's output → logits), for
    timm's EfficientNets (conv_head, bn2, then pooling and the classifier: the order of their
    forward_features and forward_head); None for a model of another shape."""
    parts = ("blocks", "conv_head", "bn2", "forward_head")
    if not all(hasattr(model, name) for name in parts) or last_stage(model) is not model.blocks[-1]:
        return None
    return lambda activation: model.forward_head(model.bn2(model.conv_head(activation)))


class GradCam(ThreadLocalHooks):
    """Grad-CAM of one model, on whatever forward pass runs inside `watch()` in the same thread.

    The hooks stay on the model and act only for the thread inside `watch()` (thread-local), so
    one model can serve several threads, as FeatureTap does (trust/features.py)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.head = head(model)  # None: maps only from watched passes
        self.hook(last_stage(model), self._keep_activation)
        self.hook(model, self._keep_logits)

    def _keep_activation(self, _module, _inputs, output: torch.Tensor) -> None:
        watched = getattr(self._local, "watched", None)
        if watched is None or watched.activation is not None:
            return
        if not watched.grad:
            watched.activation = output
        elif torch.is_grad_enabled():
            watched.activation = output.requires_grad_(True)  # a leaf: the graph starts here

    def _keep_logits(self, _module, _inputs, output: torch.Tensor) -> None:
        watched = getattr(self._local, "watched", None)
        if watched is not None and watched.activation is not None and watched.logits is None:
            watched.logits = output

    @contextmanager
    def watch(self) -> Iterator[Watched]:
        """The passes inside run with gradients; the first one's activation and logits are kept."""
        self._local.watched = watched = Watched()
        try:
            with torch.enable_grad(), torch.autocast(self._device_type(), enabled=False):
                yield watched
        finally:
            self._local.watched = None

    @contextmanager
    def keeping(self) -> Iterator[Watched]:
        """The passes inside keep the first one's last-stage output, without gradients: what a
        frozen graph or an ONNX export returns beside the logits (models/onnx.py: Exported)."""
        self._local.watched = watched = Watched(grad=False)
        try:
            yield watched
        finally:
            self._local.watched = None

    def from_activation(self, activation: torch.Tensor, index: int) -> torch.Tensor:
        """Grad-CAM (n, 1, h, w) of class `index` from the last stage's output of a pass that
        ran elsewhere (a frozen graph, ONNX Runtime): the head runs again on it, with gradients.
        Only for a model with a `head`."""
        with torch.enable_grad(), torch.autocast(self._device_type(), enabled=False):
            # a copy: the runtime's tensor may be an inference-mode one, which autograd refuses
            leaf = activation.detach().float().to(self._device_type()).clone().requires_grad_(True)
            return cam(leaf, self.head(leaf), index)

    def __call__(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Grad-CAM (n, 1, h, w) of class `index` for the images `x`, in its own pass."""
        with self.watch() as watched:
            self.model(x.float())
        return watched.maps(index)

    def _device_type(self) -> str:
        return next(self.model.parameters()).device.type


GRAD_CAM, INTEGRATED_GRADIENTS, OCCLUSION = "Grad-CAM", "Integrated Gradients", "Occlusion"
METHODS = (GRAD_CAM, INTEGRATED_GRADIENTS, OCCLUSION)  # the names the page and /explain take


@dataclass(frozen=True)
class Settings:
    """How the slower methods run. Chosen by `python -m benchmarks.explanation_settings`
    (docs/explanations.md): the cheapest setting within noise of the most faithful."""
    ig_steps: int = 8            # as faithful as 16 or 32, at half the time or less
    ig_smooth: int = 9           # pixels the IG map is averaged over, so that it ranks regions
    ig_per_batch: int = 2        # steps per backward pass: as fast as all 8 at once, a third of the memory
    occlusion_window: int = 32   # pixels of the model's input greyed out at a time
    occlusion_stride: int = 24   # (20 at 192 px) as faithful as 16 or 8, and faster
    per_batch: int = 16          # occluded copies per forward pass

    def stride(self, size: int) -> int:
        """The largest stride ≤ occlusion_stride whose windows end exactly at the input's edge."""
        span = max(size - self.occlusion_window, 0)
        return next((s for s in range(min(self.occlusion_stride, span), 0, -1) if span % s == 0), 1)


SHIPPED = Settings()


def attribution_map(model: torch.nn.Module, x: torch.Tensor, method: str, index: int,
                    settings: Settings = SHIPPED) -> torch.Tensor:
    """The map (n, 1, h, w) of `method` for class `index`, non-negative, in its own passes."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == GRAD_CAM:
        grad_cam = GradCam(model)
        try:
            return grad_cam(x, index)
        finally:
            grad_cam.remove()
    x = x.float()
    with torch.autocast(x.device.type, enabled=False):
        if method == INTEGRATED_GRADIENTS:
            steps, smooth = settings.ig_steps, settings.ig_smooth
            attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=index,
                                                        n_steps=steps, internal_batch_size=settings.ig_per_batch)
            attr = torch.nn.functional.avg_pool2d(attr.sum(1, keepdim=True).clamp(min=0), smooth, 1, smooth // 2)
        else:
            window, stride = min(settings.occlusion_window, *x.shape[-2:]), settings.stride(min(x.shape[-2:]))
            attr = Occlusion(model).attribute(
                x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
                baselines=0, target=index, perturbations_per_eval=settings.per_batch).sum(1, keepdim=True).clamp(min=0)
    return attr.detach()


def upsample_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1, 1, h, w) → (H, W) float32 in 0..1: bilinear, scaled by its maximum (zeros stay zero)."""
    up = LayerAttribution.interpolate(cam.float(), size, interpolate_mode="bilinear")[0, 0]
    peak = float(up.max())
    return (up / peak if peak > 0 else torch.zeros_like(up)).clamp(0, 1).cpu().numpy().astype(np.float32)


def stitched(cams, boxes: list[tuple[int, int, int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Every tile's Grad-CAM (n, 1, h, w) upsampled into place; overlaps keep the maximum;
    scaled by the largest value over the whole image."""
    full = np.zeros(shape, np.float32)
    for cam, (left, top, right, bottom) in zip(cams, boxes):
        up = LayerAttribution.interpolate(cam[None].float(), (bottom - top, right - left), interpolate_mode="bilinear")
        np.maximum(full[top:bottom, left:right], up[0, 0].clamp(min=0).cpu().numpy(), out=full[top:bottom, left:right])
    peak = float(full.max())
    return full / peak if peak > 0 else full


def heatmap(maps: torch.Tensor, size: tuple[int, int], boxes: list[tuple[int, int, int, int]] | None = None
            ) -> np.ndarray:
    """The heat-map over the whole image (H, W) in 0..1: one map upsampled, or every tile's
    map stitched into place (`boxes`)."""
    return upsample_heatmap(maps, size) if boxes is None else stitched(maps, boxes, size)


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the heat-map's total energy that falls inside the annotated region."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else None


def peak_inside(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    return bool(mask[np.unravel_index(int(heatmap.argmax()), heatmap.shape)])
