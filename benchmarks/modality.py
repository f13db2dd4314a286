"""The modality check's recipe, measured only on what its fit never saw:
python -m benchmarks.modality [--model DIR] --data DIR --extra-data DIR [--split split.csv] [--train-images 3000]

The check (skinlesion/trust/modality.py, fitted by train/trust.py) is refitted here in variants —
which features it reads (every stage's channel statistics, with or without the pooled features)
and the share of validation images (and their strongly shifted copies) its threshold lets
through — each on the same images as train.evaluate's fit (a random subset of the training split,
its mildly and strongly shifted copies, against the development families of train/outliers.py).
Printed per variant: validation images and strongly shifted validation images passing; the
training images of the other sources (--extra-data), passed by a fit that left them out (what a
dermatoscope the fit never saw looks like to it); each development family, refused by a fit that
left that family out. No held-out image is read: the variants are chosen on these figures alone,
and the held-out sources are measured on what ships (python -m benchmarks.sources).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from skinlesion.colour import apply as preprocess
from skinlesion.data import read_split, split_records
from skinlesion.models.ensemble import load_ensemble
from skinlesion.models.markdown import f, table
from skinlesion.trust.features import POOLED, stage_names
from skinlesion.trust.modality import ModalityCheck
from train.outliers import acquisition_shifted, families, shifted
from train.sources import from_source, with_sources
from train.splits import SplitData, prepare_splits
from train.trust import _joined, _rows, forward_all, passes

VARIANTS = (("stages + pooled", True, 0.99), ("stages + pooled", True, 0.995),
            ("stages", False, 0.99), ("stages", False, 0.995))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.modality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/models/ham10000")
    p.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    p.add_argument("--extra-data", type=Path, required=True, help="the sources the model trained on")
    p.add_argument("--split", type=Path, help="split.csv of the training run (default: remake it)")
    p.add_argument("--train-images", type=int, default=3000, help="the random subset of the training split")
    args = p.parse_args(argv)
    model, spec = load_ensemble(args.model)
    records = spec.task.load(args.data)
    split = read_split(args.split) if args.split else split_records(records, spec.training.get("seed", 0))
    records, split, _ = with_sources(records, args.extra_data, spec.task, split)
    splits = prepare_splits(records, spec.input_size, 0, None, spec.codes, split, names=("train", "val"),
                            preprocessing=spec.preprocessing)
    rng = np.random.default_rng(0)
    train = splits["train"]
    keep = np.sort(rng.permutation(len(train.labels))[:args.train_images])
    train = SplitData([train.records[i] for i in keep], [train.images[i] for i in keep], train.labels[keep])
    run = dict(device=torch.device("cpu"), batch_size=64)

    def features(images, again: bool = True) -> dict[str, torch.Tensor]:  # again: new images, preprocessed as served
        return forward_all(model, spec, [preprocess(i, spec.preprocessing) for i in images] if again else images,
                           **run).features

    strength = spec.task.acquisition_shift
    plain = features(train.images, again=False)
    inside = _joined([plain, features(shifted(train.images, rng)),
                      features(acquisition_shifted(train.images, spec.input_size, strength, 2))])
    val = features(splits["val"].images, again=False)
    heavy_val = features(acquisition_shifted(splits["val"].images, spec.input_size, strength, 3))
    validation = _joined([val, heavy_val])
    made = {name: features(images) for name, images in families(spec.task, args.data.parent, 0, 300).items()}
    other = np.array([from_source(r) for r in train.records])
    own_rows = np.flatnonzero(~np.tile(other, 3))
    stages = tuple(stage_names(model.primary))

    outside = {name: _joined([f for n, f in made.items() if n != name]) for name in (None, *made)}  # None: all
    rows = []
    for label, pooled, pass_rate in VARIANTS:
        names = (*stages, POOLED) if pooled else stages

        def fitted(inside_rows, left_out=None):
            return ModalityCheck.fit(inside_rows, outside[left_out], validation, names, pass_rate=pass_rate)

        check, without_source = fitted(inside), fitted(_rows(inside, own_rows))
        refused = [1 - passes(fitted(inside, name), made[name]) for name in made]
        rows.append([label, f"{pass_rate:.3f}", f(passes(check, val)), f(passes(check, heavy_val)),
                     f(passes(without_source, _rows(plain, np.flatnonzero(other)))), *map(f, refused)])
    print(f"{args.model}: {len(train.labels)} training images ({int(other.sum())} of other sources), "
          f"{len(val[POOLED])} validation images\n")
    print(table(["features", "pass rate", "validation passing", "strongly shifted validation passing",
                 "other sources' training images, fit without them: passing",
                 *(f"{name}, fit without them: refused" for name in made)], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
