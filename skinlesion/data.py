"""HAM10000 metadata → checked records → lesion-grouped stratified split → in-memory images.

Images are decoded (and resized to the model's input size) once, up front: an unreadable
file is reported and skipped before training starts instead of crashing a worker mid-epoch,
and augmentation then works on small uint8 arrays held in memory.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import math
import random
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from xml.etree import ElementTree

import numpy as np
import torch
from PIL import Image, ImageOps
from sklearn.model_selection import StratifiedGroupKFold

from .classes import DEFAULT_TASK, class_codes

log = logging.getLogger(__name__)

METADATA_FILE = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")
# The flat folder of this project's copy, and the two folders of the official release.
IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", ".")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SPLIT_COLUMNS = ("image_id", "lesion_id", "label", "split")


class DataError(ValueError):
    """The dataset on disk does not match what the pipeline needs; the message says how."""


@dataclass(frozen=True)
class Record:
    image_id: str
    lesion_id: str
    label: str
    path: Path


def _offenders(items: Sequence[str], what: str, limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {what}: {shown}{more}"


def find_images(root: Path) -> dict[str, Path]:
    """Map image id → file for either layout (flat `images/` or the official part_1/part_2)."""
    found: dict[str, Path] = {}
    for folder in IMAGE_FOLDERS:
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith("_segmentation"):
                found.setdefault(path.stem, path)
    return found


def load_ham10000(root: str | Path, metadata: str | Path | None = None,
                  task: str = DEFAULT_TASK) -> list[Record]:
    """Read the metadata and pair every row with its image; fail early, naming offenders."""
    root = Path(root)
    metadata = Path(metadata) if metadata else root / METADATA_FILE
    if not metadata.is_file():
        raise DataError(f"metadata file not found: {metadata}")
    with metadata.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{metadata} lacks column(s) {', '.join(missing)}; "
                            f"found: {', '.join(reader.fieldnames or []) or 'no header'}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{metadata} has no rows")

    known = set(class_codes(task))
    unknown = [f"{r['image_id']} ({r['dx']!r})" for r in rows if r["dx"] not in known]
    if unknown:
        raise DataError(f"{metadata}: " + _offenders(unknown, "row(s) with an unknown label")
                        + f"; known labels: {', '.join(sorted(known))}")
    images = find_images(root)
    absent = [r["image_id"] for r in rows if r["image_id"] not in images]
    if absent:
        raise DataError(f"{root}: " + _offenders(absent, "metadata row(s) without an image file")
                        + f" (looked in {', '.join(IMAGE_FOLDERS)})")
    return [Record(r["image_id"], r["lesion_id"], r["dx"], images[r["image_id"]]) for r in rows]


NEU_IMAGES = "images"
NEU_ANNOTATIONS = "annotations"


def load_neu(root: str | Path, task: str = "neu") -> list[Record]:
    """NEU surface defects: `images/<class>_<n>.jpg`, the class is the file-name prefix.
    Byte-identical files share a group (the `lesion_id` column), so a duplicate pair can
    never straddle two splits (the database has one: patches_101 = patches_105)."""
    folder = Path(root) / NEU_IMAGES
    if not folder.is_dir():
        raise DataError(f"NEU image folder not found: {folder}")
    known = set(class_codes(task))
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{folder} holds no images")
    unknown = [p.name for p in paths if p.stem.rsplit("_", 1)[0] not in known]
    if unknown:
        raise DataError(f"{folder}: " + _offenders(unknown, "file(s) whose name starts with no known class")
                        + f"; known classes: {', '.join(sorted(known))}")
    groups: dict[str, str] = {}
    records = []
    for p in paths:
        digest = hashlib.sha1(p.read_bytes()).hexdigest()
        groups.setdefault(digest, p.stem)  # the group is named after its first file
        records.append(Record(p.stem, groups[digest], p.stem.rsplit("_", 1)[0], p))
    return records


def neu_box_mask(root: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The union of the Pascal-VOC defect boxes of one NEU image, as a boolean H×W mask."""
    path = Path(root) / NEU_ANNOTATIONS / f"{image_id}.xml"
    if not path.is_file():
        return None
    tree = ElementTree.parse(path).getroot()
    size = tree.find("size")
    sx = shape[1] / float(size.findtext("width")) if size is not None else 1.0
    sy = shape[0] / float(size.findtext("height")) if size is not None else 1.0
    mask = np.zeros(shape, bool)
    for box in tree.iter("bndbox"):
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        mask[int(y0 * sy):int(np.ceil(y1 * sy)), int(x0 * sx):int(np.ceil(x1 * sx))] = True
    return mask


def ham_lesion_mask(root: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The HAM10000 lesion segmentation (lesion = pixel > 127), resized to `shape` if needed."""
    path = Path(root) / "masks" / f"{image_id}_segmentation.png"
    if not path.is_file():
        return None
    with Image.open(path) as mask:
        mask = mask.convert("L")
        if mask.size != (shape[1], shape[0]):
            mask = mask.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        return np.asarray(mask) > 127


def split_records(records: Sequence[Record], seed: int = 0) -> dict[str, str]:
    """Image id → split, 70/15/15, stratified by class, grouped by lesion, fixed by `seed`.

    Twenty grouped, stratified folds of 5 % each: three go to test, three to validation.
    """
    n_folds = 20
    labels = [r.label for r in records]
    groups = [r.lesion_id for r in records]
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


def write_split(path: Path, records: Sequence[Record], split: dict[str, str]) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS)
        for r in records:
            writer.writerow((r.image_id, r.lesion_id, r.label, split[r.image_id]))


def read_split(path: Path) -> dict[str, str]:
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if not set(SPLIT_COLUMNS) <= set(reader.fieldnames or []):
            raise DataError(f"{path} is not a split file: needs columns {', '.join(SPLIT_COLUMNS)}")
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
        log.warning("Skipped %s", _offenders(bad, "unreadable image(s)"))
    kept = [(rec, img) for rec, img in zip(records, results) if not isinstance(img, str)]
    return [rec for rec, _ in kept], [img for _, img in kept]


def class_counts(records: Sequence[Record]) -> Counter:
    return Counter(r.label for r in records)


class ImageDataset(torch.utils.data.Dataset):
    """Decoded images in memory + labels; the transform returns a uint8 CHW tensor."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int], transform):
        self.images, self.labels, self.transform = images, list(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[i])["image"], self.labels[i]
