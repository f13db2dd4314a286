"""Estimated skin tone: the Individual Typology Angle (ITA°) of the skin around a lesion, and
its group.

ITA° = arctan((L* − 50) / b*) × 180 / π in CIELAB (Chardon et al., Int. J. Cosmet. Sci. 1991),
grouped by the thresholds of Del Bino & Bernerd (Br. J. Dermatol. 2013), as Kinyanjui et al.
(MICCAI 2020) applied them to ISIC dermoscopy: very light > 55° ≥ light > 41° ≥ intermediate
> 28° ≥ tan > 10° ≥ brown > −30° ≥ dark.

The colour conversion is written here (sRGB, IEC 61966-2-1, to CIE 1976 L*a*b* under D65):
the PyPI package for ITA (derm-ita) pulls scikit-image and patchify for this one conversion.

Which pixels are skin: with the lesion's mask (evaluation), every pixel outside it; without one
(serving), the `ring` outside the central part of the image, where a dermoscopic picture
centres its lesion (chosen on the HAM10000 test split against the mask-based value:
`python -m train.subgroups --ita-agreement`). Dark pixels (L* < 25: hair, the dermatoscope's
vignette) are left out; ITA is taken of the median L* and b* of what is left.
"""
from __future__ import annotations

import math

import numpy as np

ATTRIBUTE = "skin tone"  # the subgroup's name in metrics.json and the card
GROUPS = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0), ("tan", 10.0), ("brown", -30.0),
          ("dark", -math.inf))  # (group, the lowest ITA° it takes, exclusive): Del Bino & Bernerd 2013
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
DARKEST = 25.0    # L*: darker pixels are hair or vignette, not skin
CENTRE = 0.6      # the central share of each side that a serving estimate leaves out (the lesion)
MIN_PIXELS = 50   # fewer skin pixels than this: no estimate
SERVED_PIXELS = 40_000  # the serving estimate reads a strided copy of about this many pixels


def _linear(c: np.ndarray) -> np.ndarray:
    """sRGB's transfer function undone: 0..1 → linear light."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


LINEAR = _linear(np.arange(256) / 255.0)  # every uint8 value's linear light: a look-up instead of a power per pixel


def _f(t: np.ndarray) -> np.ndarray:
    """CIELAB's compression of a tristimulus value relative to the white."""
    return np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 sRGB → (…, 3) float L*, a*, b* (D65)."""
    f = _f(LINEAR[np.asarray(rgb, np.uint8)] @ SRGB_TO_XYZ.T / WHITE_D65)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lightness_and_b(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`srgb_to_lab`'s L* and b* of (n, 3) uint8 pixels alone (all ITA needs: a third less work)."""
    f = _f(LINEAR[rgb] @ SRGB_TO_XYZ[1:].T / WHITE_D65[1:])
    return 116 * f[:, 0] - 16, 200 * (f[:, 0] - f[:, 1])


def ita(lightness: float, b: float) -> float:
    """ITA° of one L*, b* pair (degrees, −90 … 90)."""
    return math.degrees(math.atan2(lightness - 50.0, b)) if b > 0 else math.copysign(90.0, lightness - 50.0)


def group(angle: float | None) -> str | None:
    """The Del Bino group of an ITA°; None for no estimate."""
    if angle is None:
        return None
    return next(name for name, lowest in GROUPS if angle > lowest)


def ring(rgb: np.ndarray, centre: float = CENTRE) -> np.ndarray:
    """The (n, 3) pixels outside the central `centre` share of each side, row by row (four
    slices: a boolean mask of the image costs more than the conversion)."""
    h, w = rgb.shape[:2]
    top, left = round(h * (1 - centre) / 2), round(w * (1 - centre) / 2)
    middle = rgb[top:h - top]
    return np.concatenate([rgb[:top].reshape(-1, 3), middle[:, :left].reshape(-1, 3),
                           middle[:, w - left:].reshape(-1, 3), rgb[h - top:].reshape(-1, 3)])


def skin_ita(rgb: np.ndarray, lesion: np.ndarray | None = None) -> float | None:
    """ITA° of the skin of an (H, W, 3) uint8 image: outside `lesion` (a boolean mask) when
    given, else in the `ring`; None when too few skin pixels are left."""
    lightness, b = lightness_and_b(rgb[~lesion] if lesion is not None else ring(rgb))
    skin = lightness >= DARKEST
    if skin.sum() < MIN_PIXELS:
        return None
    return ita(float(np.median(lightness[skin])), float(np.median(b[skin])))


def estimate(rgb: np.ndarray) -> float | None:
    """The serving estimate: `skin_ita` of the image's ring, read at about SERVED_PIXELS pixels
    (a 4-megapixel upload costs what a HAM10000 image costs)."""
    step = max(1, int(math.sqrt(rgb.shape[0] * rgb.shape[1] / SERVED_PIXELS)))
    return skin_ita(rgb[::step, ::step])
