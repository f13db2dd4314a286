"""Training throughput: python -m benchmarks.training_throughput --data DIR [--device cuda] [options]

What one device trains per second, end to end, against its ceiling. Prints a Markdown table
(and writes it with --out):
- the ceiling: the project's own training step (Trainer.train_step: AMP, channels_last,
  AdamW, EMA) on uint8 batches already on the device, no data loading at all;
- end to end, per setting: the real `python -m train` (one process each, --no-explanations),
  images/s over epochs 2.. from its metrics.json, and its first step's delay (from setting up
  the batches to the first optimiser step done: loader workers starting, the first batch, the
  device's warm-up). Settings: albumentations in --workers loader processes, and the images
  kept on the device and augmented there (--augment-on device, train/device_augment.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from skinlesion.tasks import get_task
from train.config import DataConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig
from train.device import autocast_dtype, pick_device
from train.distributed import Ranks
from train.loaders import to_input
from train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def ceiling(config: TrainConfig, steps: int) -> float:
    """Images/s of the training step alone, on random uint8 batches resident on the device."""
    task = get_task(config.dataset.task)
    device = pick_device(config.runtime.device)
    trainer = Trainer.build(config, task, np.arange(len(task.codes)), Ranks(device=device))
    cfg, batch, size = trainer.model.pretrained_cfg, config.optim.batch_size, config.model.image_size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, len(task.codes), (batch,), device=device)
    trainer.model.train()
    for step in range(steps + 5):  # 5 warm-up steps
        if step == 5:
            started = time.perf_counter()
        trainer.train_step(to_input(x, device, cfg["mean"], cfg["std"], trainer.channels_last), y)
    return steps * batch / (time.perf_counter() - started)  # train_step syncs (loss.item())


def end_to_end(common: list[str], setting: list[str], out: Path) -> dict:
    """One real training run; its per-epoch records."""
    command = [sys.executable, "-m", "train", *common, *setting, "--out", str(out), "--no-explanations"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text())["history"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training_throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--task", default="ham10000")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[15], help="loader worker counts to try")
    p.add_argument("--epochs", type=int, default=4, help="per run; images/s is over epochs 2..")
    p.add_argument("--max-samples", type=int, help="a subset, for a quick run (e.g. on a CPU)")
    p.add_argument("--steps", type=int, default=30, help="timed steps of the ceiling")
    p.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    a = p.parse_args(argv)

    common = ["--data", str(a.data), "--task", a.task, "--device", a.device, "--image-size", str(a.image_size),
              "--batch-size", str(a.batch_size), "--epochs", str(a.epochs)]
    common += ["--max-samples", str(a.max_samples)] if a.max_samples else []
    config = TrainConfig(DataConfig(task=a.task), ModelConfig(image_size=a.image_size),
                         OptimConfig(epochs=a.epochs, batch_size=a.batch_size), runtime=RuntimeConfig(device=a.device))
    device = pick_device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    top = ceiling(config, a.steps)
    rows = [("model only: the training step on batches already on the device", f"{top:,.0f}", "–", "100%")]
    settings = [(f"albumentations in loader workers (--workers {w})", ["--augment-on", "workers", "--workers", str(w)])
                for w in a.workers]
    settings.append(("augmented on the device (--augment-on device)", ["--augment-on", "device", "--workers", "0"]))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, setting) in enumerate(settings):
            history = end_to_end(common, setting, Path(tmp) / str(i))
            speed = float(np.mean([h["images_per_s"] for h in history[1:]] or [history[0]["images_per_s"]]))
            rows.append((label, f"{speed:,.0f}", f"{history[0]['first_step_s']:.1f} s", f"{speed / top:.0%}"))
            print(f"{label}: {speed:,.0f} images/s", file=sys.stderr)

    precision = autocast_dtype(device, config.runtime.amp)
    header = (f"Training throughput on {name}: {a.task}, {a.image_size} px, batch {a.batch_size}, "
              f"{f'{precision} autocast' if precision else 'float32'}, images/s over epochs 2–{a.epochs}"
              + (f" of a {a.max_samples}-image subset" if a.max_samples else "") + ".\n"
              f"Command: python -m benchmarks.training_throughput {' '.join(argv or sys.argv[1:])}\n")
    table = [header, "| setting | images/s | first step | of the ceiling |", "|---|---:|---:|---:|",
             *(f"| {' | '.join(row)} |" for row in rows)]
    text = "\n".join(table) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
