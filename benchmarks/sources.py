"""A labelled set of images as the product answers it: python -m benchmarks.sources SOURCE... [--model DIR]

Each SOURCE is a folder of the layout train/sources.py reads (`labels.csv` with `image` and
`label` in the task's codes, the images under `images/`), such as another clinic's dermoscopy.
Every image goes through `python -m skinlesion predict` itself (a subprocess: the CSV a user
gets), and the CSV is scored against the labels. Prints a Markdown table per source: images,
answered (not refused as not of the task's kind), answered with caution (unfamiliar), balanced
accuracy of the decided class over the classes present (answered images), each high-risk class's
share referred (of its images: answered, and the verdict refers) and share refused (a lesion of
that class told "not of the task's kind"), and the 90% sets' coverage.
With `--held-out SPLIT_CSV`, only the source's rows that file holds out (a run's split.csv) count.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from sklearn.metrics import balanced_accuracy_score

from skinlesion.models.markdown import f, table
from skinlesion.tasks import DEFAULT_TASK, get_task


def labels_of(source: Path, held_out: set[str] | None) -> dict[str, str]:
    """image file name → label, of the rows that count."""
    with (source / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["image"]: r["label"] for r in rows if held_out is None or Path(r["image"]).stem in held_out}


def predicted(images: list[Path], out: Path, task: str, model: str | None) -> list[dict]:
    """The rows `python -m skinlesion predict` writes for `images` (through a file list: no glob)."""
    command = [sys.executable, "-m", "skinlesion", "predict", *map(str, images), "--out", str(out), "--task", task,
               *(["--model", model] if model else [])]
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    with out.open(newline="") as handle:
        return list(csv.DictReader(handle))


def figures(rows: list[dict], labels: dict[str, str], task: str) -> list:
    high_risk = get_task(task).high_risk_codes
    truth = [labels[Path(r["file"]).name] for r in rows]
    answered = [(r, t) for r, t in zip(rows, truth) if r["known"] == "1"]
    def share(c: str, counted) -> float:  # of the images of class c
        return sum(counted(r) for r, t in zip(rows, truth) if t == c) / truth.count(c)

    present = [c for c in high_risk if c in truth]
    referred = {c: share(c, lambda r: r["known"] == "1" and r["level"] == "refer") for c in present}
    refused = {c: share(c, lambda r: r["known"] == "0") for c in present}
    balanced = balanced_accuracy_score([t for _, t in answered], [r["decided"] for r, _ in answered]) \
        if answered else None
    covered = sum(t in r["prediction_set"].split() for r, t in answered) / len(answered) if answered else None
    return [len(rows), f(len(answered) / len(rows)), f(sum(r["familiar"] == "0" for r in rows) / len(rows)),
            f(balanced), *(", ".join(f"{c} {f(v)}" for c, v in d.items()) or "n/a" for d in (referred, refused)),
            f(covered)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sources", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", type=Path)
    p.add_argument("--task", default=DEFAULT_TASK)
    p.add_argument("--model", help="a model folder (default: the task's bundled one)")
    p.add_argument("--held-out", type=Path, help="a run's split.csv: count only the rows it holds out")
    args = p.parse_args(argv)
    held_out = None
    if args.held_out:
        with args.held_out.open(newline="") as handle:
            held_out = {r["image_id"] for r in csv.DictReader(handle) if r["split"] == "held_out"}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            labels = labels_of(source, held_out)
            rows = predicted([source / "images" / name for name in labels], Path(tmp) / "out.csv", args.task,
                             args.model)
            lines.append([source.name, *figures(rows, labels, args.task)])
    print(table(["source", "images", "answered", "answered with caution", "balanced accuracy (answered)",
                 "referred", "refused", "90% set coverage (answered)"], lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
