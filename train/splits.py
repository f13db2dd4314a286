"""A task's data as the splits training and evaluation read: decoded once, resized to the
model's input, in memory; and the arguments of the programs that read a model folder and its data."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from skinlesion.colour import apply as preprocess
from skinlesion.data import SPLITS, Record, load_images, read_split, split_records, stratified_subset
from skinlesion.transforms import resizer

EVAL_SPLITS = ("val", "test")  # the splits a model is measured on (the rule is fitted on the first)


@dataclass
class SplitData:
    records: list[Record]
    images: list[np.ndarray]  # RGB uint8, already at the model's input size
    labels: np.ndarray        # class indices in the model's label order


def prepare_splits(records: list[Record], image_size: int, seed: int, max_samples: int | None,
                   codes: Sequence[str], split: Mapping[str, str] | Path | None = None,
                   workers: int = 4, preprocessing: dict | None = None,
                   names: Sequence[str] = SPLITS) -> dict[str, SplitData]:
    """Split (image id → split name, given or read from a split.csv; None: lesion-grouped for
    `seed`), optionally subsample each split to its share of `max_samples`, then decode, apply
    the model's `preprocessing` (skinlesion/colour.py: on the full image, as serving does) and
    resize every image once. `names`: the splits to make (any split name of the file)."""
    if not isinstance(split, Mapping):
        split = read_split(split) if split else split_records(records, seed)
    codes = list(codes)
    resize = resizer(image_size)
    out = {}
    for name in names:
        members = [r for r in records if split.get(r.image_id) == name]
        if max_samples:
            members = stratified_subset(members, round(max_samples * len(members) / len(records)), seed)
        kept, images = load_images(members, lambda rgb: resize(preprocess(rgb, preprocessing)), workers)
        out[name] = SplitData(kept, images, np.array([codes.index(r.label) for r in kept], dtype=np.int64))
    return out


def folder_arguments(prog: str, doc: str) -> argparse.ArgumentParser:
    """The arguments of the programs that read a model folder and its task's data."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--split", type=Path, help="split.csv of the training run (default: remake it)")
    return p
