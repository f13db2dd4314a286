"""Records → lesion-grouped stratified split → in-memory images, for every task.

A task's reader (skinlesion/tasks/) turns its data folder into `Record`s; from there on
nothing here depends on the task.

Images are decoded (and resized to the model's input size) once, up front: an unreadable
file is reported and skipped before training starts instead of crashing a worker mid-epoch,
and augmentation then works on small uint8 arrays held in memory.
"""
from __future__ import annotations

import csv
import logging
import math
import random
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SPLIT_COLUMNS = ("image_id", "group", "label", "split")


class DataError(ValueError):
    """The dataset on disk does not match what the pipeline needs; the message says how."""


@dataclass(frozen=True)
class Record:
    image_id: str
    group: str       # images of one group share a split: a lesion (HAM10000), byte-identical files (NEU)
    label: str
    path: Path


def offenders(items: Sequence[str], what: str, limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {what}: {shown}{more}"


def split_records(records: Sequence[Record], seed: int = 0) -> dict[str, str]:
    """Image id → split, 70/15/15, stratified by class, grouped by lesion, fixed by `seed`.

    Twenty grouped, stratified folds of 5 % each: three go to test, three to validation.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # here: the app never splits (~100 MB)
    n_folds = 20
    labels = [r.label for r in records]
    groups = [r.group for r in records]
    if len(set(groups)) < n_folds or max(Counter(labels).values()) < n_folds:
        raise DataError(f"too few images to split 70/15/15 by lesion: {len(records)} images of "
                        f"{len(set(groups))} lesions; needs at least {n_folds} lesions and "
                        f"{n_folds} images of the largest class")
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    n_test = round(SPLIT_FRACTIONS["test"] * n_folds)
    n_val = round(SPLIT_FRACTIONS["val"] * n_folds)
    assignment: dict[str, str] = {}
    with warnings.catch_warnings():  # rare classes with < 20 images are expected; still spread
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        fold_list = list(folds.split(np.zeros(len(records)), labels, groups))
    for fold, (_, held_out) in enumerate(fold_list):
        split = "test" if fold < n_test else "val" if fold < n_test + n_val else "train"
        for i in held_out:
            assignment[records[i].image_id] = split
    return assignment


def stratified_subset(records: Sequence[Record], n: int, seed: int = 0) -> list[Record]:
    """`n` records keeping each class's share (largest remainder), at least one per class."""
    if n >= len(records):
        return list(records)
    by_class: dict[str, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    quota = {c: len(rs) * n / len(records) for c, rs in by_class.items()}
    take = {c: max(1, math.floor(q)) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: quota[c] - math.floor(quota[c]), reverse=True):
        if sum(take.values()) >= n:
            break
        take[c] += 1
    rng = random.Random(seed)
    chosen = {id(r) for c, rs in by_class.items() for r in rng.sample(rs, min(take[c], len(rs)))}
    return [r for r in records if id(r) in chosen]


def write_split(path: Path, records: Sequence[Record], split: dict[str, str],
                source: dict[str, str] | None = None) -> None:
    """One row per record; with `source` (image id → where it comes from, for runs on several
    sources) a `source` column too."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS + (("source",) if source else ()))
        for r in records:
            writer.writerow((r.image_id, r.group, r.label, split[r.image_id])
                            + ((source[r.image_id],) if source else ()))


def read_split(path: Path) -> dict[str, str]:
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"image_id", "split"} <= set(reader.fieldnames or []):
            raise DataError(f"{path} is not a split file: needs the columns image_id and split")
        return {row["image_id"]: row["split"] for row in reader}


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode fully (so a truncated file fails here), upright per EXIF, as RGB uint8."""
    with Image.open(path) as image:
        image.load()
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def load_images(records: Sequence[Record], resize: Callable[[np.ndarray], np.ndarray],
                workers: int = 4) -> tuple[list[Record], list[np.ndarray]]:
    """Decode and resize every image once; unreadable ones are reported and left out."""
    def load(record: Record) -> np.ndarray | str:
        try:
            return resize(read_rgb(record.path))
        except Exception as error:  # any decoder failure is a bad file, not a bad run
            return f"{record.image_id} ({error})"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(load, records))
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        log.warning("Skipped %s", offenders(bad, "unreadable image(s)"))
    kept = [(rec, img) for rec, img in zip(records, results) if not isinstance(img, str)]
    return [rec for rec, _ in kept], [img for _, img in kept]



class ImageDataset(torch.utils.data.Dataset):
    """Decoded images in memory + labels; the transform returns a uint8 CHW tensor."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int], transform):
        self.images, self.labels, self.transform = images, list(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[i])["image"], self.labels[i]
