"""python -m benchmarks.drift [--data ../shared/data]: what the drift monitor says about four
streams of images, each answered as the batch path answers them, reported to operations
(skinlesion/ops) and judged against the bundled dermoscopy model's reference:

  test images        the HAM10000 test split (1,503 images; lesion-grouped split, seed 0)
  class shift        the test split's mel, bkl and bcc images only
  photographs        250 crops of the photographs installed with scikit-learn and matplotlib
  another source     PH2's 200 images (another dermatoscope, never trained on)

Prints a table: each statistic's value and level, the overall level, and the accuracy
estimated without labels (CBPE) beside the measured one where the stream is labelled.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from skinlesion.data import read_rgb, split_records
from skinlesion.ops import Operations, drift
from skinlesion.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
TASK = "ham10000"


def judged(predictor: Predictor, images: list, labels: list[str] | None = None) -> tuple[drift.Report, float | None]:
    """The drift report of `images` (files or arrays) and, with `labels`, the measured accuracy of
    the answered ones."""
    ops, right, answered = Operations({TASK: predictor}), 0, 0
    for start in range(0, len(images), 32):
        chunk = images[start:start + 32]
        for i, analysis in enumerate(predictor.analyse_many([predictor.prepare(image) for image in chunk])):
            ops.image(TASK, 10.0, analysis, endpoint="batch")
            if labels is not None and analysis.known:
                answered += 1
                right += analysis.decided == labels[start + i]
    report = drift.report(ops.recent(TASK), drift.Reference.load(predictor.folder))
    return report, (right / answered if labels is not None and answered else None)


def streams(predictor: Predictor, data: Path, seed: int = 0) -> dict[str, tuple[list, list[str] | None]]:
    """The four streams of the module docstring: name → (images, labels or None); a stream whose
    data is absent is left out."""
    from train.outliers import crops, package_photos
    rng, found = np.random.default_rng(seed), {}
    if (data / "ham10000" / "HAM10000_metadata.csv").is_file():
        records = predictor.task.load(data / "ham10000")
        split = split_records(records, 0)
        test = [r for r in records if split[r.image_id] == "test"]
        found["test images"] = ([r.path for r in test], [r.label for r in test])
        shifted = [r for r in test if r.label in ("mel", "bkl", "bcc")]
        found["class shift"] = ([r.path for r in shifted], [r.label for r in shifted])
    found["photographs"] = (crops([read_rgb(p) for p in package_photos()], 250, rng), None)
    ph2 = data / "dermoscopy_external" / "ph2"
    if (ph2 / "labels.csv").is_file():
        with (ph2 / "labels.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))  # image (file name), label (class code), …
        found["another source"] = ([ph2 / "images" / r["image"] for r in rows], [r["label"] for r in rows])
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = p.parse_args(argv)
    predictor = Predictor.from_pretrained(task=TASK)
    keys = ["class_mix", "check_score", "familiarity_score", "refused_rate", "unfamiliar_rate"]
    print("| stream | images | " + " | ".join(keys) + " | level | accuracy estimated / measured |")
    print("|---|---:|" + "---|" * len(keys) + "---|---|")
    for name, (images, labels) in streams(predictor, args.data).items():
        report, measured = judged(predictor, images, labels)
        by_key = {s.key: s for s in report.statistics}
        cells = []
        for key in keys:
            s = by_key.get(key)
            value = "" if s is None or s.value is None else (f"{s.value:.2f}" if s.kind == "psi" else f"{s.value:.1%}")
            cells.append(f"{value} {s.level}" if s else "")
        accuracy = "" if report.accuracy is None else f"{report.accuracy:.3f}" + (
            f" / {measured:.3f}" if measured is not None else "")
        print(f"| {name} | {report.n} | " + " | ".join(cells) + f" | **{report.level}** | {accuracy} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
