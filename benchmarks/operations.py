"""python -m benchmarks.operations [--runs 200] [--model DIR]: what /metrics and the decision
log cost an answer (goal: at most 5%).

In one process, interleaved run by run so that the machine's state is shared: the answer alone
(`Predictor.analyse` of a real image without a heat-map: the cheapest answer, so the largest
share), the same answer reported to the metrics (`Operations` without a log: what every app
does), and reported to the metrics and an SQLite decision log (the SHA-256 of the file, a row
queued; the writer thread inserts meanwhile, on the same 2 cores). Prints a table: median and
p90 milliseconds, and the median's overhead against the answer alone.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from skinlesion.ops import Operations
from skinlesion.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]


def image_file(folder: Path) -> Path:
    """A bundled example image of the dermoscopy task, or a made-up one."""
    examples = sorted((ROOT / "assets" / "examples" / "ham10000").glob("*.jpg"))
    if examples:
        return examples[0]
    path = folder / "lesion.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (450, 600, 3), dtype=np.uint8)).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.operations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--model", help="model folder (default: the bundled dermoscopy model)")
    args = p.parse_args(argv)
    predictor = Predictor.from_pretrained(args.model, task="ham10000")
    task = predictor.task.key
    with tempfile.TemporaryDirectory() as folder:
        path = image_file(Path(folder))
        metrics_only = Operations({task: predictor})
        logged = Operations({task: predictor}, f"sqlite:///{Path(folder) / 'decisions.db'}")

        def answer():
            predictor.analyse(path, method=None)

        def reported(ops):
            def run():
                with ops.request("classify"):
                    start = time.perf_counter()
                    analysis = predictor.analyse(path, method=None)
                    ops.image(task, (time.perf_counter() - start) * 1000, analysis, source=path)
            return run

        analysis = predictor.analyse(path, method=None)

        def reporting(ops):  # the reporting alone, of an answer already made
            def run():
                with ops.request("classify"):
                    ops.image(task, 20.0, analysis, source=path)
            return run

        ways = {"answer alone": answer, "answer + metrics": reported(metrics_only),
                "answer + metrics + log": reported(logged), "metrics alone": reporting(metrics_only),
                "metrics + log alone": reporting(logged)}
        times = {name: [] for name in ways}
        for run in ways.values():  # warm-up
            run()
        for _ in range(args.runs):
            for name, run in ways.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) * 1000)
        logged.close()
    base = float(np.median(times["answer alone"]))
    print(f"{'way':<24} {'median ms':>10} {'p90 ms':>8} {'of an answer':>13}   ({args.runs} runs each, interleaved)")
    for name, values in times.items():
        median = float(np.median(values))
        share = median / base if name.endswith("alone") and name != "answer alone" else (median - base) / base
        print(f"{name:<24} {median:>10.3f} {np.percentile(values, 90):>8.3f} {share:>+13.2%}")
    print("of an answer: the reporting's median over the answer's (rows 'alone'), or the median's change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
