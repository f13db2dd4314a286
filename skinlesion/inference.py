"""Predictor: checked input → calibrated probabilities → decided class and verdict
(decision.py) → Grad-CAM (explain.py), from one forward/backward pass.

Every way an input can be bad (not an image, truncated, a decompression bomb, too small, an
odd colour mode) ends in an `InputError` whose message can be shown to a user as is.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .decision import Verdict
from .explain import GRAD_CAM, METHODS, OVERLAY_OPACITY, attribution_map, last_stage, overlay, upsample_heatmap
from .hub import download, looks_like_repo_id
from .model import load_model_folder
from .spec import ModelSpec
from .tasks import get_task
from .transforms import eval_transform, normalize

MAX_PIXELS = 40_000_000   # larger images are refused before decoding (decompression bombs)
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


def load_image(image: ImageInput) -> np.ndarray:
    """A PIL image, an array or a file (path or bytes) → upright RGB uint8 array, or InputError.

    Decoders fail in many ways besides `UnidentifiedImageError` (a JPEG cut inside its header
    raises OSError, a PNG text-chunk bomb ValueError, a bad QOI file IndexError): every failure
    of a file's decoding is an InputError in the project's words, never a raw library message."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        _check_size(image.shape[1], image.shape[0])  # already RGB (e.g. decoded by the page): as is
        return image
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
        image.load()
        if opened is not None:  # one decoded copy plus the array: a 12-megapixel photo is 36 MB each
            ImageOps.exif_transpose(opened, in_place=True)
        else:
            image = ImageOps.exif_transpose(image)
        return np.asarray(_to_rgb(image))
    except InputError:
        raise
    except MemoryError:
        raise InputError("the image is too large to decode") from None
    except Exception:  # truncated or corrupt data, whatever the decoder raises for it
        raise InputError(DAMAGED) from None
    finally:
        if opened is not None:
            opened.close()


@dataclass
class Explanation:
    image: np.ndarray            # the checked RGB input, H×W×3 uint8
    heatmap: np.ndarray          # H×W float32 in 0..1, the input image's size
    overlay: Image.Image         # the image with the colour-mapped heat-map blended in
    target: str                  # the class explained
    probabilities: dict[str, float]
    method: str = GRAD_CAM       # explain.METHODS


class Predictor:
    """A loaded model and its spec (spec.py: task, classes, input size, normalisation, the
    decision rule), read once from the model folder's config.json."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, folder: str | Path | None = None,
                 device: str | torch.device = "cpu", tta: bool = False):
        self.device = torch.device(device)
        # channels_last: about twice the CPU throughput of the default layout for B0
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        for p in self.model.parameters():  # Grad-CAM needs gradients of activations only
            p.requires_grad_(False)
        self.spec, self.tta = spec, tta
        self.folder = Path(folder) if folder is not None else None  # the card and plots live there
        self.task, self.codes, self.rule = spec.task, list(spec.codes), spec.rule
        self._transform = eval_transform(spec.input_size)
        self.layer = last_stage(self.model)

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, device: str = "cpu",
                        tta: bool = False, task: str | None = None) -> "Predictor":
        """`source`: a model folder, a Hub repo id ("user/name", cached copies work offline), or
        None for the bundled model of `task` (the default task when None)."""
        folder = Path(source) if source is not None else get_task(task).model_folder
        if source is not None and not folder.exists() and looks_like_repo_id(str(source)):
            folder = download(str(source))
        model, spec = load_model_folder(folder)
        return cls(model, spec, folder=folder, device=device, tta=tta)

    def preprocess(self, image: ImageInput) -> tuple[np.ndarray, torch.Tensor]:
        rgb = load_image(image)
        return rgb, self.to_batch([rgb])

    def to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Checked RGB arrays → the model's normalised input batch (resized as in training)."""
        batch = torch.stack([self._transform(image=rgb)["image"] for rgb in images]).to(self.device)
        return normalize(batch, self.spec.mean, self.spec.std).contiguous(memory_format=torch.channels_last)

    def _probabilities(self, logits: torch.Tensor) -> dict[str, float]:
        probs = self.rule.probabilities(logits.float().cpu().numpy()).mean(0)
        return {code: float(p) for code, p in zip(self.codes, probs)}

    def _decided_index(self, logits: torch.Tensor) -> int:
        return int(self.rule.decide(self.rule.probabilities(logits.float().cpu().numpy())[0]))

    def decide(self, probabilities: dict[str, float]) -> str:
        """The decided class: the arg-max after the class bias fitted for balanced accuracy."""
        return self.codes[int(self.rule.decide(np.array([probabilities[c] for c in self.codes])))]

    @torch.inference_mode()
    def predict(self, image: ImageInput, tta: bool | None = None) -> dict[str, float]:
        """Calibrated probability of every class (summing to 1); with `tta`, averaged over
        the image and its horizontal and vertical mirror images."""
        _, x = self.preprocess(image)
        if self.tta if tta is None else tta:
            x = torch.cat([x, x.flip(-1), x.flip(-2)])
        return self._probabilities(self.model(x))

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Calibrated probabilities of checked RGB arrays (`load_image`'s output), in one
        forward pass."""
        return self.predict_inputs(self.to_batch(images))

    @torch.inference_mode()
    def predict_inputs(self, x: torch.Tensor) -> list[dict[str, float]]:
        """Calibrated probabilities of a batch of model inputs (`to_batch`'s output): the batch
        path of `python -m skinlesion predict` and the Batch tab."""
        return self.per_image(self.model(x))

    def per_image(self, logits: torch.Tensor) -> list[dict[str, float]]:
        """Each row of a batch's logits as calibrated probabilities."""
        probs = self.rule.probabilities(logits.float().cpu().numpy())
        return [{code: float(p) for code, p in zip(self.codes, row)} for row in probs]

    def explain(self, image: ImageInput, target: str | None = None, opacity: float = OVERLAY_OPACITY,
                method: str = GRAD_CAM) -> Explanation:
        """The heat-map of `method` (explain.METHODS) for `target` or the decided class, and the
        probabilities, from the same forward pass."""
        if target is not None and target not in self.codes:
            raise InputError(f"unknown class {target!r}; choose one of {', '.join(self.codes)}")
        if method not in METHODS:
            raise InputError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        rgb, x = self.preprocess(image)
        cam, logits, index = attribution_map(self.model, self.layer, x, method,
                                             self._decided_index if target is None else self.codes.index(target))
        heatmap = upsample_heatmap(cam, rgb.shape[:2])
        return Explanation(rgb, heatmap, overlay(rgb, heatmap, opacity), self.codes[index],
                           self._probabilities(logits), method)

    def triage(self, probabilities: dict[str, float]) -> Verdict:
        """The verdict of the model's decision rule, with the task's disclaimer."""
        return self.rule.verdict(probabilities)

