"""Similar confirmed cases: the training images nearest to an image in the model's own feature space.

Content-based image retrieval with the classifier's pooled features (Tschandl et al., Br J
Dermatol 2019; one of the forms of AI support clinicians were shown in Tschandl et al., Nature
Medicine 2020): cosine similarity of L2-normalised pooled features against a class-balanced
reference gallery of training images. The gallery's features sit in the model folder's
reference.safetensors (shared with the input check, check.py); its thumbnails, image ids and how
each diagnosis was confirmed sit in GALLERY_FILE, one JPEG per case, made by
`python -m train.gallery`.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from .check import REFERENCE_FILE, normalised
from .features import POOLED

GALLERY_FILE = "gallery.safetensors"
NEIGHBOURS = 20   # the nearest cases an answer keeps: the summary line counts them, the page shows CASES_SHOWN
CASES_SHOWN = 6


@dataclass(frozen=True)
class Neighbour:
    index: int          # in the gallery
    code: str           # the confirmed class
    similarity: float   # cosine similarity of the pooled features, −1..1


@dataclass(frozen=True)
class Case:
    image_id: str
    code: str
    similarity: float
    confirmation: str   # how the diagnosis was confirmed (HAM10000 dx_type), or the database's label
    thumbnail: np.ndarray  # RGB uint8, about THUMBNAIL px on the long side


class Gallery:
    """The reference gallery of a model folder: features, classes, ids, confirmations, thumbnails."""
    stages: tuple[str, ...] = ()  # reads the pooled features only

    def __init__(self, features: torch.Tensor, codes: Sequence[str], ids: Sequence[str],
                 confirmations: Sequence[str], thumbnails: torch.Tensor, offsets: torch.Tensor):
        self.features = features  # L2-normalised
        self.codes, self.ids, self.confirmations = list(codes), list(ids), list(confirmations)
        self._thumbnails, self._offsets = thumbnails, offsets

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def load(cls, folder: str | Path, class_codes: Sequence[str],
             features: torch.Tensor | None = None) -> "Gallery | None":
        """The gallery of a model folder; None when it has none (an older model). `features`: the
        gallery's normalised features when the input check has already read them (InputCheck.gallery)."""
        folder = Path(folder)
        if not (folder / GALLERY_FILE).is_file() or not (folder / REFERENCE_FILE).is_file():
            return None
        with safe_open(str(folder / REFERENCE_FILE), "pt") as f:
            labels = f.get_tensor("gallery.labels")
            if features is None:
                features = normalised(f.get_tensor("gallery.features"))
            ids = json.loads(f.metadata()["gallery_ids"])
        with safe_open(str(folder / GALLERY_FILE), "pt") as f:
            meta = f.metadata()
            thumbnails, offsets = f.get_tensor("thumbnails"), f.get_tensor("offsets")
        if json.loads(meta["ids"]) != ids:
            raise ValueError(f"{folder}: {GALLERY_FILE} and {REFERENCE_FILE} list different images")
        return cls(features, [class_codes[int(k)] for k in labels], ids, json.loads(meta["confirmations"]),
                   thumbnails, offsets)

    def nearest(self, pooled: torch.Tensor, k: int = NEIGHBOURS) -> list[Neighbour]:
        """The k most similar gallery images to one image's pooled features (1×d), most similar first."""
        return self.nearest_rows(pooled.reshape(1, -1), k)[0]

    def nearest_rows(self, pooled: torch.Tensor, k: int = NEIGHBOURS) -> list[list[Neighbour]]:
        """`nearest` of each row of pooled features (n×d), in one product with the gallery."""
        top = (normalised(pooled) @ self.features.T).topk(min(k, len(self)), dim=1)
        return [[Neighbour(int(i), self.codes[int(i)], float(s)) for s, i in zip(values.tolist(), indices.tolist())]
                for values, indices in zip(top.values, top.indices)]

    def assess(self, features: Mapping[str, torch.Tensor], rows: list[int], so_far: list):
        """The nearest cases of each row, for the images the input check knows (trust/__init__.py)."""
        known = [row for row, found in zip(rows, so_far) if found.known]
        cases = iter(self.nearest_rows(features[POOLED][known]) if known else [])
        return [replace(found, similar=next(cases)) if found.known else found for found in so_far]

    def case(self, neighbour: Neighbour) -> Case:
        i = neighbour.index
        data = self._thumbnails[int(self._offsets[i]):int(self._offsets[i + 1])].numpy().tobytes()
        with Image.open(io.BytesIO(data)) as thumbnail:
            rgb = np.asarray(thumbnail.convert("RGB"))
        return Case(self.ids[i], neighbour.code, neighbour.similarity, self.confirmations[i], rgb)


def summary(neighbours: Sequence[Neighbour]) -> dict[str, int]:
    """Class → how many of the neighbours have it, most frequent first."""
    return dict(Counter(n.code for n in neighbours).most_common())
