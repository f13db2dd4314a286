"""python -m benchmarks.engines [--model DIR] [--images 256] [--rounds 3]: the answers on each
engine of a model folder, in one run.

For PyTorch's eager modules, PyTorch's frozen TorchScript graph (the torch engine:
skinlesion/models/frozen.py) and ONNX Runtime (fp32, the folder's `model.onnx`): the batch path's images/s
(`batch_rows`: decode, one pass per batch, calibrated probabilities, decided class, verdict and
checks per row) over --images copies of a bundled example image at batches of 8 and 32, and
the single-image analyse p50 without a heat-map; the engines interleaved round by round, the
fastest round kept. Then, when the task's data is there, the share of the test split's
committed ids (tests/fixtures/<task>_test_ids.txt) whose decided class is the eager modules' and
the largest probability change, for each of the other engines. Printed as a table.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from skinlesion.batch import batch_rows, expand
from skinlesion.predictor import Predictor
from train.onnx import parity_images

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("eager", "torch", "onnx")


def batch_rate(predictor: Predictor, folder: Path, batch_size: int) -> float:
    items = expand([str(folder)])
    start = time.perf_counter()
    for _ in batch_rows(predictor, items, batch_size):
        pass
    return len(items) / (time.perf_counter() - start)


def analyse_p50(predictor: Predictor, image: Path, runs: int = 30) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.analyse(image, method=None)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the bundled dermoscopy model)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    predictors = {e: Predictor.from_pretrained(args.model, task=None if args.model else "ham10000", engine=e)
                  for e in ENGINES}
    image = sorted((ROOT / "assets" / "examples" / predictors["eager"].task.key).glob("*"))[0]
    found = {(e, k): [] for e in ENGINES for k in ("b8", "b32", "p50")}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            shutil.copy(image, Path(tmp) / f"{i:05d}{image.suffix}")
        for name, predictor in predictors.items():  # warm-up
            batch_rate(predictor, Path(tmp), 8)
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                found[name, "b8"].append(batch_rate(predictor, Path(tmp), 8))
                found[name, "b32"].append(batch_rate(predictor, Path(tmp), 32))
                found[name, "p50"].append(analyse_p50(predictor, image))
    real = parity_images(predictors["eager"], None, limit=None)  # the whole committed test split
    agree, worst = {e: [] for e in ENGINES[1:]}, dict.fromkeys(ENGINES[1:], 0.0)
    for start in range(0, len(real), 32):
        chunk = [predictors["eager"].prepare(i) for i in real[start:start + 32]]
        reference = predictors["eager"].analyse_many(chunk)
        for name in ENGINES[1:]:
            for a, b in zip(reference, predictors[name].analyse_many(chunk)):
                agree[name].append(a.decided == b.decided)
                change = max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities)
                worst[name] = max(worst[name], change)
    best = {name: max(max(found[name, "b8"]), max(found[name, "b32"])) for name in ENGINES}
    print(f"| engine | batch path, batch 8 (images/s) | batch 32 | analyse p50, no heat-map (ms) | "
          f"× eager PyTorch (each at its faster batch) |   ({args.images} images, fastest of {args.rounds} rounds; "
          f"{' + '.join(predictors['eager'].net.describe(predictors['eager'].spec.input_size)['views'])})")
    print("|---|---:|---:|---:|---:|")
    for name in ENGINES:
        print(f"| {name} | {max(found[name, 'b8']):.1f} | {max(found[name, 'b32']):.1f} | "
              f"{min(found[name, 'p50']):.1f} | {best[name] / best['eager']:.2f} |")
    for name in ENGINES[1:]:
        print(f"{name}: decided class as the eager modules' on {len(agree[name])} test images: "
              f"{np.mean(agree[name]):.1%}; largest probability change {worst[name]:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
