"""Ship a trained model folder with float16 weights, when float16 changes no answer.

    python -m train.export --model runs/b0-192/model --out assets/models/ham10000 --data ../shared/data/ham10000 \\
        --split runs/b0-192/split.csv --reference tests/fixtures/ham10000_fp32_probabilities.csv

Copies the folder (with its ensemble members), stores every model's weights as float16 (half the
download; loading casts them back to float32), and compares the calibrated probabilities of the
two on the validation and test images: above --tolerance (1e-3) anywhere, the float32 weights
are kept. `--reference` writes the float32 probabilities of the committed test ids, which the
bundled-model test re-checks.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from skinlesion.models.ensemble import ENSEMBLE_KEY, load_ensemble
from skinlesion.models.folder import copy_file, write_atomically
from skinlesion.models.network import WEIGHTS_FILE
from skinlesion.models.spec import read_config, read_spec

from .device import pick_device
from .splits import SplitData, prepare_splits
from .trust import forward_all

log = logging.getLogger("train.export")
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
REFERENCE_IMAGES = 100  # the first committed test ids whose float32 probabilities are kept


def to_float16(folder: Path) -> None:
    """The folder's weights rewritten (whole, folder.py) as float16."""
    path = folder / WEIGHTS_FILE
    state = safetensors.torch.load_file(path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    write_atomically(path, lambda tmp: safetensors.torch.save_file(half, tmp, metadata={"format": "pt"}))


def weight_folders(folder: Path) -> list[Path]:
    """The folder and its ensemble members' folders (skinlesion/models/ensemble.py)."""
    members = (read_config(folder).get(ENSEMBLE_KEY) or {}).get("members", [])
    return [folder, *(folder / m["folder"] for m in members)]


def answers(folder: Path, data: SplitData, device) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and decided classes of a model folder (its whole ensemble) for `data`."""
    net, spec = load_ensemble(folder)
    probs = spec.rule.probabilities(forward_all(net.to(device), spec, data.images, device, batch_size=32).logits)
    return probs, spec.rule.decide(probs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained model folder (float32)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (replaced)")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--split", type=Path, required=True, help="split.csv of the training run")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed probability change")
    p.add_argument("--reference", type=Path, help="write float32 probabilities of the committed test ids here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    spec = read_spec(args.model)
    splits = prepare_splits(spec.task.load(args.data), spec.input_size, 0, None, spec.codes, split=args.split,
                            preprocessing=spec.preprocessing)
    held_out = SplitData(splits["val"].records + splits["test"].records, splits["val"].images + splits["test"].images,
                         np.concatenate([splits["val"].labels, splits["test"].labels]))
    device = pick_device("cpu")

    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.model, args.out, ignore=shutil.ignore_patterns(".*"))  # hidden files are leftovers
    for folder in weight_folders(args.out):
        to_float16(folder)
    (full, full_decided), (half, half_decided) = (answers(args.model, held_out, device),
                                                  answers(args.out, held_out, device))
    worst = float(np.abs(full - half).max())
    log.info("float16 vs float32 on %d validation + test images: largest probability change %.2e, "
             "decided class changed for %d", len(full), worst, int((full_decided != half_decided).sum()))
    if worst > args.tolerance:
        for source, target in zip(weight_folders(args.model), weight_folders(args.out)):
            copy_file(source / WEIGHTS_FILE, target / WEIGHTS_FILE)
        log.warning("over the tolerance %.0e: kept the float32 weights", args.tolerance)
    if args.reference:
        ids = (FIXTURES / f"{spec.task.key}_test_ids.txt").read_text().split()[:REFERENCE_IMAGES]
        row_of = {r.image_id: i for i, r in enumerate(held_out.records)}
        with args.reference.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", *spec.codes])
            for image_id in ids:
                writer.writerow([image_id, *(f"{p:.7f}" for p in full[row_of[image_id]])])
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
