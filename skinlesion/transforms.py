"""Albumentations pipelines. They end in uint8 CHW tensors; `normalize` runs on the device.

Why uint8 out of the workers: a batch is 4× smaller than float32 through the loader queues,
and the mean/std arithmetic is free on the accelerator. The same `resize` is used when the
images are cached and at inference, so training and serving see identical pixels.
"""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2


def resize(size: int) -> A.Resize:
    """The whole image squashed to size×size: no crop, lesions often reach the border."""
    return A.Resize(size, size, interpolation=cv2.INTER_AREA)


def resizer(size: int):
    """Plain function array → array, for decoding into the in-memory cache."""
    transform = resize(size)
    return lambda image: transform(image=image)["image"]


def eval_transform(size: int) -> A.Compose:
    return A.Compose([resize(size), ToTensorV2()])


def train_transform(size: int, strength: float = 1.0) -> A.Compose:
    """The training augmentations of every task: the eight dihedral poses (flips and quarter
    turns), a small affine, mild colour jitter, noise or blur. A dermoscopic image has no up
    or left; a steel strip image does (the rolling direction), but its defect type does not
    change with the pose. Scale and colour changes stay small: colour carries diagnosis."""
    s = strength
    return A.Compose([
        resize(size),
        A.HorizontalFlip(),
        A.VerticalFlip(),
        A.RandomRotate90(),
        A.Affine(scale=(1 - 0.15 * s, 1 + 0.15 * s), translate_percent=(-0.05 * s, 0.05 * s),
                 rotate=(-20 * s, 20 * s), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.ColorJitter(brightness=0.2 * s, contrast=0.2 * s, saturation=0.15 * s,
                      hue=0.03 * s, p=0.8),
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.04 * s)),
                 A.GaussianBlur(blur_limit=(3, 5))], p=0.3),
        ToTensorV2(),
    ])


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW (0..255) → float, normalised with the model config's mean/std (0..1 scale)."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, device=batch.device).view(1, -1, 1, 1) * 255
    return (batch.float() - mean_t) / std_t

