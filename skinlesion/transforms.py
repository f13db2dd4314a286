"""Albumentations pipelines. They end in uint8 CHW tensors; `normalize` runs on the device.

Why uint8 out of the workers: a batch is 4× smaller than float32 through the loader queues,
and the mean/std arithmetic is free on the accelerator. The same `resize` is used when the
images are cached and at inference, so training and serving see identical pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2


def resize(size: int) -> A.Resize:
    """The whole image squashed to size×size: no crop, lesions often reach the border."""
    return A.Resize(size, size, interpolation=cv2.INTER_AREA)


def resizer(size: int):
    """Plain function array → array, for decoding into the in-memory cache."""
    transform = resize(size)
    return lambda image: transform(image=image)["image"]


@lru_cache(maxsize=8)
def eval_transform(size: int) -> A.Compose:
    return A.Compose([resize(size), ToTensorV2()])


@dataclass(frozen=True)
class Augmentation:
    """The training augmentations' probabilities and ranges: one object read by the albumentations
    pipeline (`train_transform`) and by the device path (train/device_augment.py), so the two
    cannot drift apart. `strength` scales the affine, the colour jitter and the noise's upper
    std (0: the eight poses alone); the other settings are the ranges at strength 1."""
    strength: float = 1.0                     # --aug-strength; 1 is what the bundled models used
    affine_p: float = 0.7                     # some images keep their exact pixels (only a pose)
    scale: float = 0.15                       # zoom ±15 % per axis: lesion size carries little
    translate: float = 0.05                   # shift ±5 % of a side: lesions are roughly centred
    rotate: float = 20.0                      # ± degrees, on top of the quarter turns
    colour_p: float = 0.8                     # colour jitter on most images ...
    brightness: float = 0.2                   # ... and mild: colour carries diagnosis
    contrast: float = 0.2
    saturation: float = 0.15
    hue: float = 0.03                         # of the full circle; a larger shift changes the lesion
    noise_or_blur_p: float = 0.3              # one of the two, a third of the time: camera variety
    noise_std: tuple[float, float] = (0.01, 0.04)   # of 255, per channel; the upper one scaled
    blur_taps: tuple[int, int] = (3, 5)       # Gaussian kernel sides (odd)
    blur_sigma: tuple[float, float] = (0.5, 3.0)    # albumentations' GaussianBlur default
    # Acquisition shift: what changes from one dermatoscope and clinic to the next.
    # `shift` scales the probabilities below (capped at 1) and the extra colour spread; 0 leaves
    # the pipeline above exactly as it was, so earlier models and their tests are unchanged.
    shift: float = 0.0                        # --aug-shift
    zoom_p: float = 0.5                       # a random resized crop: other devices frame the lesion
    zoom_area: tuple[float, float] = (0.35, 1.0)    # ... tighter, the lesion filling the frame
    zoom_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # 4:3 sensors either way round
    resolution_p: float = 0.4                 # one of downscale-then-upscale or sharpen: optics and
    downscale: tuple[float, float] = (0.35, 0.9)    # ... sensors differ in resolution and sharpness
    sharpen_alpha: tuple[float, float] = (0.1, 0.4)
    jpeg_p: float = 0.4                       # re-compression: archives and uploads store JPEG
    jpeg_quality: tuple[int, int] = (40, 95)
    colour_spread: float = 0.5                # brightness/contrast/saturation spreads × (1 + shift·this);
                                              # hue is left as it is: a hue shift changes the lesion
    gamma_p: float = 0.3                      # another tone curve (sensor, processing)
    gamma: tuple[float, float] = (80, 120)    # albumentations' percent: gamma 0.8..1.2
    vignette_p: float = 0.1                   # the circular field stop of contact dermatoscopes;
    vignette_radius: tuple[float, float] = (0.95, 1.35)  # ... radius in half-sides (corners at 1.41)

    def _around(self, centre: float, spread: float) -> tuple[float, float]:
        return centre - spread * self.strength, centre + spread * self.strength

    @property
    def scale_range(self) -> tuple[float, float]:
        return self._around(1.0, self.scale)

    @property
    def translate_range(self) -> tuple[float, float]:
        """As a fraction of the side."""
        return self._around(0.0, self.translate)

    @property
    def rotate_range(self) -> tuple[float, float]:
        """In degrees."""
        return self._around(0.0, self.rotate)

    @property
    def jitter(self) -> tuple[float, float, float, float]:
        """(brightness, contrast, saturation, hue) at this strength: ColorJitter's arguments."""
        s = self.strength
        wider = 1 + self.shift * self.colour_spread
        return self.brightness * s * wider, self.contrast * s * wider, self.saturation * s * wider, self.hue * s

    def shifted_p(self, p: float) -> float:
        """An acquisition-shift probability at this `shift`."""
        return min(1.0, p * self.shift)

    @property
    def noise_std_range(self) -> tuple[float, float]:
        return self.noise_std[0], self.noise_std[1] * self.strength


class CircularVignette(A.ImageOnlyTransform):
    """Black outside a centred circle (a soft edge), as a contact dermatoscope's field stop
    leaves it; the radius in half-sides of the image (the corners are at 1.41)."""

    def __init__(self, radius: tuple[float, float] = (0.95, 1.35), softness: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.radius, self.softness = radius, softness

    def get_params(self) -> dict[str, Any]:
        return {"radius": self.py_random.uniform(*self.radius)}

    def apply(self, img: np.ndarray, radius: float = 1.0, **params: Any) -> np.ndarray:
        h, w = img.shape[:2]
        y, x = np.ogrid[:h, :w]
        distance = np.hypot((y + 0.5) / (h / 2) - 1, (x + 0.5) / (w / 2) - 1)
        keep = np.clip((radius - distance) / self.softness, 0, 1).astype(np.float32)
        return (img * keep[..., None]).round().astype(img.dtype)


def acquisition_shift(size: int, a: Augmentation) -> tuple[list, list]:
    """The acquisition-shift steps (`a.shift` > 0), as (before the pose, after the colour):
    zoom first, so the crop is resized back to `size` before anything else; resolution, tone,
    vignette and JPEG last, in the order a camera and an archive apply them."""
    if a.shift <= 0:
        return [], []
    zoom = [A.RandomResizedCrop((size, size), scale=a.zoom_area, ratio=a.zoom_ratio,
                                interpolation=cv2.INTER_AREA, p=a.shifted_p(a.zoom_p))]
    late = [
        A.OneOf([A.Downscale(scale_range=a.downscale,
                             interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}),
                 A.Sharpen(alpha=a.sharpen_alpha)], p=a.shifted_p(a.resolution_p)),
        A.RandomGamma(gamma_limit=a.gamma, p=a.shifted_p(a.gamma_p)),
        CircularVignette(a.vignette_radius, p=a.shifted_p(a.vignette_p)),
        A.ImageCompression(quality_range=a.jpeg_quality, p=a.shifted_p(a.jpeg_p)),
    ]
    return zoom, late


def train_transform(size: int, augmentation: Augmentation = Augmentation()) -> A.Compose:
    """The training augmentations of every task: the eight dihedral poses (flips and quarter
    turns), a small affine, mild colour jitter, noise or blur. A dermoscopic image has no up
    or left; a steel strip image does (the rolling direction), but its defect type does not
    change with the pose. Scale and colour changes stay small: colour carries diagnosis.
    With `augmentation.shift` > 0, the acquisition-shift steps are added (`acquisition_shift`)."""
    a = augmentation
    brightness, contrast, saturation, hue = a.jitter
    zoom, late = acquisition_shift(size, a)
    return A.Compose([
        resize(size),
        *zoom,
        A.HorizontalFlip(),
        A.VerticalFlip(),
        A.RandomRotate90(),
        A.Affine(scale=a.scale_range, translate_percent=a.translate_range, rotate=a.rotate_range,
                 border_mode=cv2.BORDER_REFLECT_101, p=a.affine_p),
        A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=a.colour_p),
        A.OneOf([A.GaussNoise(std_range=a.noise_std_range),
                 A.GaussianBlur(blur_limit=a.blur_taps, sigma_limit=a.blur_sigma)], p=a.noise_or_blur_p),
        *late,
        ToTensorV2(),
    ])


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW (0..255) → float, normalised with the model config's mean/std (0..1 scale)."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, device=batch.device).view(1, -1, 1, 1) * 255
    return (batch.float() - mean_t) / std_t


class InputSpec(Protocol):
    """What the model's input needs of a model folder's spec (models/spec.ModelSpec)."""
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]


def model_input(images: Sequence[np.ndarray], spec: InputSpec, device: torch.device | str = "cpu",
                channels_last: bool = True) -> torch.Tensor:
    """Checked RGB arrays → the model's normalised input batch, resized as in training: the one
    way from an image to the model's input, for serving, evaluation and ensembling alike."""
    batch = torch.stack([eval_transform(spec.input_size)(image=rgb)["image"] for rgb in images]).to(device)
    x = normalize(batch, spec.mean, spec.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
