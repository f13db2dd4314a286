"""Any image a person can send → a checked, upright RGB uint8 array, or an `InputError` whose
message can be shown to them as is.

Every way an input can be bad (not an image, truncated, a decompression bomb, too small, an
odd colour mode, a decoder that chokes) ends here, before the model sees anything.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000   # larger images are refused before decoding (decompression bombs)
# Larger images are reduced to about this many pixels as they are decoded (a JPEG at a fraction
# of its scale, then area-averaged): the model sees at most 224 px a side, and the heat-map,
# the overlay and the page's state of a 40-megapixel image would cost hundreds of MB each.
WORKING_PIXELS = 4_000_000
MIN_SIDE = 16             # smaller images carry no usable detail
ImageInput = Union[Image.Image, np.ndarray, str, Path, bytes]


class InputError(ValueError):
    """The input cannot be classified; the message says why, for the person who sent it."""


NOT_AN_IMAGE = "this file is not an image that can be read (use JPEG, PNG, WebP, BMP or TIFF)"
DAMAGED = "the image file is damaged or incomplete"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB. Transparency is flattened onto white; 16-bit and float grey
    images are scaled from their own range so they do not come out black or white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"an image array must be H×W, H×W×3 or H×W×4; got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and 0 <= a.min() and a.max() <= 1:
            a = a * 255
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGBA" if a.ndim == 3 and a.shape[2] == 4 else None)


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"the image is too large: {width}×{height} pixels; the limit is "
                         f"{MAX_PIXELS // 1_000_000} million pixels")
    if min(width, height) < MIN_SIDE:
        raise InputError(f"the image is too small: {width}×{height} pixels; each side needs at least {MIN_SIDE}")


def working_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) scaled, aspect kept, to at most WORKING_PIXELS pixels."""
    scale = min(1.0, (WORKING_PIXELS / (width * height)) ** 0.5)
    return max(1, int(width * scale)), max(1, int(height * scale))


def _reduced(image: Image.Image) -> Image.Image:
    size = working_size(*image.size)
    return image if size == image.size else image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def load_image(image: ImageInput) -> np.ndarray:
    """A PIL image, an array or a file (path or bytes) → upright RGB uint8 array of at most
    WORKING_PIXELS pixels (aspect kept), or InputError (`decode`)."""
    return decode(image)[0]


def decode(image: ImageInput) -> tuple[np.ndarray, int]:
    """`load_image`'s array, and how many pixels the source had (what decoding it cost).

    Decoders fail in many ways besides `UnidentifiedImageError` (a JPEG cut inside its header
    raises OSError, a PNG text-chunk bomb ValueError, a bad QOI file IndexError): every failure
    of a file's decoding is an InputError in the project's words, never a raw library message."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        _check_size(image.shape[1], image.shape[0])  # already RGB (e.g. decoded by the page): as is
        if working_size(image.shape[1], image.shape[0]) == (image.shape[1], image.shape[0]):
            return image, image.shape[0] * image.shape[1]
        return np.asarray(_reduced(Image.fromarray(image))), image.shape[0] * image.shape[1]
    if isinstance(image, np.ndarray):
        image = _from_array(image)
    if not isinstance(image, Image.Image):
        if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
            raise InputError(f"file not found: {Path(image).name}")
        source = io.BytesIO(image) if isinstance(image, bytes) else image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(source)
        except UnidentifiedImageError:
            raise InputError(NOT_AN_IMAGE) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(f"the image is too large (more than {MAX_PIXELS // 1_000_000} million pixels)") from None
        except Exception:  # a header the decoder chokes on: any exception type, depending on the format
            raise InputError(DAMAGED) from None
        image = opened
    else:
        opened = None  # the caller's image: never changed in place
    try:
        _check_size(*image.size)
        pixels = image.size[0] * image.size[1]
        if opened is not None:  # a JPEG decodes at a fraction of its scale (no-op for other formats)
            opened.draft(None, working_size(*opened.size))
        image.load()
        if opened is not None:  # one decoded copy plus the array: a 12-megapixel photo is 36 MB each
            ImageOps.exif_transpose(opened, in_place=True)
        else:
            image = ImageOps.exif_transpose(image)
        return np.asarray(_reduced(_to_rgb(image))), pixels
    except InputError:
        raise
    except MemoryError:
        raise InputError("the image is too large to decode") from None
    except Exception:  # truncated or corrupt data, whatever the decoder raises for it
        raise InputError(DAMAGED) from None
    finally:
        if opened is not None:
            opened.close()
