"""More labelled sources beside the task's own data (--extra-data), and which part of them is held out.

    records, split = external_records(root, task)   # split: image id → "train" or HELD_OUT

A source is a folder with `labels.csv` (`image`, `label` in the task's codes; optionally
`split`, `dup_group`) and the images under `images/`. `root` is one source or a folder of them
(../shared/data/dermoscopy_external: isic2017, ph2). What is held out, and why:
- a source with a `split` column (ISIC 2017: the challenge's train / val / test) trains on its
  `train` rows only; its other rows are held out, so a figure on them is on images of a source the
  model knows but on lesions it never saw;
- a source without one (PH2) is held out whole: a source the model never saw at all;
- duplicates (`dup_group`) never straddle: a group with any held-out image is held out whole.
Held-out images are in no training, validation or test split: the task's own validation split
alone chooses the epoch, and `python -m train.external` measures each source apart.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from skinlesion.data import DataError, Record, offenders
from skinlesion.tasks import Task

LABELS_FILE = "labels.csv"
GROUP_SEPARATOR = ":"          # a source's records are grouped as "source:dup_group" (read_source)
HELD_OUT = "held_out"          # the split name of held-out external images (split.csv)
TRAINING_ROWS = ("train",)     # a source's own `split` values that may train


def source_folders(root: Path) -> list[Path]:
    """`root` itself when it is a source, else its sub-folders that are, by name."""
    root = Path(root)
    if (root / LABELS_FILE).is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if (p / LABELS_FILE).is_file()) if root.is_dir() else []
    if not found:
        raise DataError(f"{root}: no {LABELS_FILE} in it nor in its sub-folders: not a folder of sources")
    return found


def read_source(folder: Path, task: Task) -> tuple[list[Record], dict[str, str]]:
    """One source's records (group: `source:dup_group`, else the image) and its split
    (image id → "train" or HELD_OUT, duplicates kept together)."""
    with (folder / LABELS_FILE).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError(f"{folder / LABELS_FILE}: needs the columns image and label")
    unknown = [f"{r['image']} ({r['label']!r})" for r in rows if r["label"] not in task.codes]
    absent = [r["image"] for r in rows if not (folder / "images" / r["image"]).is_file()]
    if unknown or absent:
        raise DataError(f"{folder}: " + "; ".join(filter(None, (
            unknown and offenders(unknown, f"row(s) with a label outside task {task.key!r}"),
            absent and offenders(absent, "row(s) without a file in images/")))))
    name = folder.name
    records = [Record(Path(r["image"]).stem, f"{name}{GROUP_SEPARATOR}{r.get('dup_group') or Path(r['image']).stem}",
                      r["label"],
                      folder / "images" / r["image"]) for r in rows]
    trains = {rec.image_id: r.get("split") in TRAINING_ROWS for rec, r in zip(records, rows)}
    held_groups = {rec.group for rec in records if not trains[rec.image_id]}
    return records, {rec.image_id: HELD_OUT if rec.group in held_groups else "train" for rec in records}


def external_records(root: Path, task: Task, known_ids: set[str] = frozenset()
                     ) -> tuple[list[Record], dict[str, str], dict[str, str]]:
    """Every source under `root`: (records, image id → "train" / HELD_OUT, image id → source
    name). DataError when an image id repeats, here or in `known_ids` (the task's own images):
    a split keyed by id must not confuse two images."""
    records, split, source = [], {}, {}
    for folder in source_folders(root):
        part, part_split = read_source(folder, task)
        records += part
        split.update(part_split)
        source.update({r.image_id: folder.name for r in part})
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[r.image_id] += 1
    repeated = [i for i, n in counts.items() if n > 1 or i in known_ids]
    if repeated:
        raise DataError(f"{root}: " + offenders(repeated, "image id(s) used twice (here or in the task's data)"))
    return records, split, source


def with_sources(records: list[Record], root: Path | None, task: Task, split: dict[str, str]
                 ) -> tuple[list[Record], dict[str, str], dict[str, str]]:
    """The task's `records` and their `split`, with the sources under `root` (None: none) added:
    their rows keep a split the given one names (a run's split.csv), else the sources' own rule.
    Returns (records, split, image id → source name of the added rows)."""
    if root is None:
        return records, split, {}
    extra, own, source = external_records(root, task, {r.image_id for r in records})
    return records + extra, {**own, **split}, source


def from_source(record: Record) -> bool:
    """Whether `record` is one of a source's (read_source), not of the task's own data."""
    return GROUP_SEPARATOR in str(record.group)
