"""python -m train.onnx FOLDER [--data DATA_FOLDER] [--opset 17]

Exports a model folder's answering network to ONNX (`model.onnx` beside the safetensors, a
dynamic batch; skinlesion/models/onnx.py), with the outputs the input checks and the similar
cases read and the last stage's output Grad-CAM draws from, then checks it against PyTorch on
real images at batch sizes 1, 8 and 32: every calibrated probability within 1e-4 and the decided
class, known and familiar identical, and the first images' Grad-CAM maps within 1e-3. Only
then is it recorded in config.json ("onnx": file, opset, outputs and the parity found), which
turns it on for every way in (engine "auto"); otherwise the file is removed and the exit code
is 1. The folder stays a timm / Hugging Face Hub folder: the safetensors are untouched.

Images: the committed test ids (tests/fixtures/<task>_test_ids.txt) of the task's data folder
(--data, default ../shared/data/<task's folder>) when it is there, else the bundled examples.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

from skinlesion import Predictor
from skinlesion.models.folder import write_atomically, write_json
from skinlesion.models.onnx import ONNX_FILE, ONNX_KEY, OPSET, OnnxNet, export

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BATCHES = (1, 8, 32)
TOLERANCE = 1e-4  # largest allowed change of a calibrated probability
IMAGES = 64       # real images checked at each batch size
# largest allowed change of a Grad-CAM map (0..1): under one of the 256 levels the overlay draws
# (skinlesion/app/views.heat_levels), so no drawn pixel moves by more than one level. A map's
# weighted channels can nearly cancel, which magnifies float32 rounding: one test image's map moves
# by 1.2e-3 between the eager and the frozen pass on torch 2.14, where the probabilities move by 1e-6.
MAP_TOLERANCE = 1 / 255
MAPS = 8          # images whose Grad-CAM maps are compared
log = logging.getLogger("train.onnx")


def parity_images(predictor: Predictor, data: Path | None, limit: int | None = IMAGES) -> list[Path]:
    """Real images of the task: its committed test ids in `data` (the first `limit`; None: all),
    else the bundled examples."""
    task = predictor.task
    data = data or ROOT.parent / "shared" / "data" / task.data_folder
    ids = FIXTURES / f"{task.key}_test_ids.txt"
    if data.is_dir() and ids.is_file():
        by_id = {r.image_id: r.path for r in task.load(data)}
        found = [by_id[i] for i in ids.read_text().split() if i in by_id][:limit]
        if found:
            return found
    return sorted((ROOT / "assets" / "examples" / task.key).glob("*"))


def parity(reference: Predictor, other: Predictor, images: list[Path]) -> dict:
    """`other` against `reference` on `images`, answered in batches of each size of BATCHES."""
    prepared = [reference.prepare(i) for i in images]
    worst, same = 0.0, True
    for size in BATCHES:
        for start in range(0, len(prepared), size):
            chunk = prepared[start:start + size]
            for a, b in zip(reference.analyse_many(chunk), other.analyse_many(chunk)):
                worst = max(worst, max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities))
                same &= (a.decided, a.known, a.familiar) == (b.decided, b.known, b.familiar)
    maps = max(float(abs(reference.analyse(i).heatmap - other.analyse(i).heatmap).max()) for i in images[:MAPS])
    return {"images": len(images), "batches": list(BATCHES), "max_probability_difference": worst,
            "decided_known_familiar_identical": bool(same), "max_map_difference": maps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the model folder")
    p.add_argument("--data", type=Path, help="the task's data folder, for real images to compare on")
    p.add_argument("--opset", type=int, default=OPSET)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    reference = Predictor.from_pretrained(args.folder, engine="torch")
    path, config_path = args.folder / ONNX_FILE, args.folder / "config.json"
    entry = {}
    write_atomically(path, lambda tmp: entry.update(export(reference, tmp, args.opset)))
    entry["file"] = ONNX_FILE
    config = json.loads(config_path.read_text())
    exported = copy.copy(reference)  # the same Predictor, its passes on the new file's runtime
    exported.runtime, exported.engine = OnnxNet(path, entry["outputs"]), "onnx"
    found = parity(reference, exported, parity_images(reference, args.data))
    log.info("ONNX against PyTorch on %d images at batches %s: largest probability change %.2e; decided, known "
             "and familiar identical: %s; largest Grad-CAM map change %.2e", found["images"], found["batches"],
             found["max_probability_difference"], found["decided_known_familiar_identical"],
             found["max_map_difference"])
    if found["max_probability_difference"] > TOLERANCE or not found["decided_known_familiar_identical"] \
            or found["max_map_difference"] > MAP_TOLERANCE:
        path.unlink()
        log.error("not within %.0e (maps %.0e) or a decision changed: %s not kept", TOLERANCE, MAP_TOLERANCE, path)
        return 1
    write_json(config_path, {**config, ONNX_KEY: {**entry, "parity": found}})
    log.info("wrote %s (%.1f MB) and its config entry", path, path.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())

