"""Ray batch benchmark: python -m benchmarks.ray_batch [--images 256] [--task ham10000] [--rounds 2] [--engine E]

The batch path of `python -m skinlesion predict` (skinlesion/batch.py) in one process against
`--ray` (skinlesion/ray_batch.py) with 1 and 2 actors on a local Ray instance, measured in one
run on the same folder: --images copies of a bundled example image, made in a temporary folder.
Each way is timed from the call to its last row, including what it pays once: the model's load
in one process; Ray's start, the actors' model loads and Ray's shutdown with --ray. Printed as
a Markdown table: the end-to-end time and rate, and the rate after the first rows came back
(the steady rate: rows after the first batch / time from the first batch to the last row). One
process uses every core through torch's threads (and, for comparison, one thread: what each
actor has, holding one CPU; ONNX Runtime takes torch's thread count). The ways run in turn,
--rounds times (round-robin, so a busy patch of the machine weighs on all alike); the table
shows each way's fastest round. --engine: the Predictor's (torch, onnx; default: its own), the
same in the process and in the actors.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from skinlesion import Predictor
from skinlesion.batch import batch_rows, batch_size_for, expand
from skinlesion.ray_batch import ray_rows
from skinlesion.tasks import get_task

from .served import ROOT


def timed(rows: Callable[[], Iterator[dict]], n: int, batch_size: int) -> dict[str, float]:
    """End-to-end seconds, rows/s end to end, and the steady rows/s after the first row."""
    start = time.perf_counter()
    first, count = None, 0
    for count, _ in enumerate(rows(), 1):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert count == n, f"{count} rows for {n} images"
    return {"seconds": end - start, "rate": n / (end - start),
            "steady": (n - batch_size) / max(end - first, 1e-9)}  # batch_size rows came with the first batch


@contextmanager
def threads(n: int | None):
    """torch's intra-op threads for the block (None: as they are)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--task", default="ham10000")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--engine", help="the Predictor's engine (default: its own choice)")
    args = p.parse_args()
    task = get_task(args.task)
    options = {"engine": args.engine} if args.engine else {}
    loaded = Predictor.from_pretrained(task=task.key, **options)
    engine, batch_size = loaded.engine, batch_size_for(loaded)  # the command line's
    sample = sorted((ROOT / "assets" / "examples" / task.key).glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            shutil.copy(sample, Path(tmp) / f"{i:05d}.jpg")
        paths = [tmp]
        n = len(expand(paths))

        def one_process(thread_count: int | None = None):
            with threads(thread_count):
                predictor = Predictor.from_pretrained(task=task.key, **options)
                yield from batch_rows(predictor, expand(paths), batch_size)

        def spread(workers: int):
            return ray_rows(None, task.key, paths, None, batch_size, None, workers, engine=args.engine)

        ways = {f"one process (batch_rows), {torch.get_num_threads()} torch threads": one_process,
                "one process (batch_rows), 1 torch thread": lambda: one_process(1),
                "--ray, 1 worker": lambda: spread(1), "--ray, 2 workers": lambda: spread(2)}
        rounds = [{name: timed(rows, n, batch_size) for name, rows in ways.items()} for _ in range(args.rounds)]
        results = {name: min((r[name] for r in rounds), key=lambda r: r["seconds"]) for name in ways}
    load = os.getloadavg()
    print(f"{n} copies of assets/examples/{task.key}/{sample.name}, batches of {batch_size}, engine {engine}, "
          f"{os.cpu_count()} CPUs (load average {load[0]:.1f} / {load[1]:.1f} at the end), "
          f"fastest of {args.rounds} rounds\n")
    print("| way | end to end | images/s end to end | images/s after the first batch |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} s | {r['rate']:.1f} | {r['steady']:.1f} |")


if __name__ == "__main__":
    main()
