"""Colour constancy: one step of a model's own preprocessing, named in its folder's config.json.

Dermatoscopes differ in their light: one clinic's images are bluer, another's yellower, and a
network trained on one source reads the cast as part of the lesion. Shades of Gray (Finlayson
G. D., Trezzi E., "Shades of gray and colour constancy", Proc. IS&T/SID Color Imaging
Conference 2004, pp. 37-41) estimates each image's illuminant as the Minkowski p-norm mean of
each channel (p = 1 is grey world, p = ∞ is max-RGB; p = 6 did best in their tests) and divides
it out. The ISIC 2018 and 2019 winners used it with p = 6; Barata et al. (IEEE JBHI 2015)
measured its effect on dermoscopy classification.

A model folder says which step it was trained with (`preprocessing` in config.json, e.g.
{"colour_constancy": "shades_of_gray", "p": 6}); training, evaluation and serving all call
`apply` with that entry on the full decoded image, before any resize, so they cannot disagree.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

NONE, SHADES_OF_GRAY = "none", "shades_of_gray"
METHODS = (NONE, SHADES_OF_GRAY)
MINKOWSKI_P = 6            # Finlayson & Trezzi's best p, and the ISIC winners'
DARKEST_ILLUMINANT = 1.0   # of 255: a channel this dark carries no estimate (a black or one-colour image)


def shades_of_gray(image: np.ndarray, p: int = MINKOWSKI_P) -> np.ndarray:
    """RGB uint8 H×W×3 → the same image under a neutral illuminant, uint8.

    The illuminant of each channel is (mean of pixel^p)^(1/p); each channel is multiplied by the
    inverse of its illuminant, the three gains scaled so their mean is 1 (the overall brightness
    stays about where it was, only the cast goes), and the result clipped to 0..255. An image
    with an almost black channel is returned unchanged: there is nothing to estimate from."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 H×W×3 image, got {image.dtype} {image.shape}")
    # The same arithmetic per uint8 value instead of per pixel: the mean of pixel^p from each
    # channel's histogram, the gains through a 256-entry table (cv2.LUT), 4-5x faster.
    counts = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])
    illuminant = np.power(counts @ np.power(np.arange(256, dtype=np.float64), p) / counts[0].sum(), 1.0 / p)
    if illuminant.min() < DARKEST_ILLUMINANT:
        return image.copy()
    gains = 1.0 / illuminant
    gains /= gains.mean()
    tables = np.clip(np.rint(np.arange(256, dtype=np.float64)[:, None] * gains), 0, 255).astype(np.uint8)
    return cv2.LUT(np.ascontiguousarray(image), tables.reshape(256, 1, 3))


def preprocessing_config(colour_constancy: str) -> dict[str, Any] | None:
    """The `preprocessing` entry a model folder stores for a training setting; None: no step."""
    if colour_constancy == NONE:
        return None
    if colour_constancy == SHADES_OF_GRAY:
        return {"colour_constancy": SHADES_OF_GRAY, "p": MINKOWSKI_P}
    raise ValueError(f"unknown colour constancy {colour_constancy!r}; known: {', '.join(METHODS)}")


def apply(image: np.ndarray, preprocessing: dict[str, Any] | None) -> np.ndarray:
    """A decoded RGB uint8 image through a model folder's `preprocessing` entry (config.json),
    before any resize. None or an absent step: the image itself. A step this code does not know
    is an error, never skipped: the model would see other pixels than it was trained on."""
    method = (preprocessing or {}).get("colour_constancy", NONE)
    if method == NONE:
        return image
    if method == SHADES_OF_GRAY:
        return shades_of_gray(image, int(preprocessing.get("p", MINKOWSKI_P)))
    raise ValueError(f"unknown colour constancy {method!r} in the model's preprocessing; known: {', '.join(METHODS)}")
