"""Train an EfficientNet-B0: python -m train --data DIR --out DIR [--task TASK] [options].

Writes OUT/config.yaml (every setting, train/config.py; itself a --config file), OUT/model/
(the model folder; its config.json's `training` records the same settings), OUT/split.csv,
OUT/checkpoint.pt (every epoch, atomic; --resume continues from it), then evaluates the best
epoch on validation + test: OUT/metrics.json, OUT/report.md, plots. Options may come from a YAML
file (--config), with the command line overriding it.

On several GPUs or machines: torchrun [--nnodes ... --rdzv-endpoint ...] --nproc_per_node N
-m train ... (train/distributed.py). --batch-size and --workers are then per process; rank 0
alone writes OUT.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from skinlesion.colour import preprocessing_config
from skinlesion.data import DataError, split_records, write_split
from skinlesion.models.folder import write_atomically, write_text
from skinlesion.models.network import load_model_folder, save_model_folder
from skinlesion.models.spec import ModelFolderError
from skinlesion.tasks import Task, get_task
from skinlesion.transforms import eval_transform, train_transform

from .config import CONFIG_YAML, TrainConfig
from .device_augment import DeviceBatches
from .distill import TeacherError
from .distributed import Ranks, start, stop
from .evaluate import EvalOptions, evaluate
from .flags import parse_args
from .loaders import make_loader
from .loop import InitError, Trainer
from .sources import HELD_OUT, external_records
from .splits import SplitData, prepare_splits

log = logging.getLogger("train")
CHECKPOINT = "checkpoint.pt"
# Settings that must match for --resume to continue the same run; with the run's world size.
RUN_IDENTITY = ("task", "data", "seed", "max_samples", "image_size", "epochs", "batch_size", "architecture",
                "pretrained", "extra_data", "colour_constancy", "init")


class ResumeError(ValueError):
    """--resume with a checkpoint of other settings: continuing would mix two runs."""


def run_identity(config: TrainConfig, world_size: int) -> dict:
    """What a checkpoint must have been made with to be continued (as checkpoints store it)."""
    settings = config.settings()
    return {**{k: settings[k] for k in RUN_IDENTITY}, "world_size": world_size}


def load_splits(config: TrainConfig, task: Task, ranks: Ranks) -> dict[str, SplitData]:
    """The task's records, split by lesion (once, on rank 0, and shared), with --extra-data's
    sources (their training part joins the training split, the rest is held out:
    train/sources.py), decoded and preprocessed; DataError when a split is empty."""
    data = config.dataset
    records = task.load(data.data)
    log.info("%d images, %d groups (lesions / duplicates) in %s", len(records),
             len({r.group for r in records}), data.data)
    split = ranks.on_main(lambda: split_records(records, data.seed))  # the task's own split, as without extras
    source = None
    if data.extra_data:
        extra, extra_split, source = external_records(data.extra_data, task, {r.image_id for r in records})
        for name in sorted(set(source.values())):
            ids = [i for i, s in source.items() if s == name]
            log.info("extra source %s: %d images, %d train, %d held out", name, len(ids),
                     sum(extra_split[i] == "train" for i in ids), sum(extra_split[i] == HELD_OUT for i in ids))
        source = {**{r.image_id: Path(data.data).name for r in records}, **source}
        records, split = records + extra, {**split, **extra_split}
    splits = prepare_splits(records, config.model.image_size, data.seed, data.max_samples, task.codes, split,
                            workers=config.runtime.workers + 1,
                            preprocessing=preprocessing_config(config.model.colour_constancy))
    for name, part in splits.items():
        counts = np.bincount(part.labels, minlength=len(task.codes))
        log.info("%-5s %5d images  %s", name, len(part.labels),
                 " ".join(f"{c}={n}" for c, n in zip(task.codes, counts)))
        if len(part.labels) == 0:
            raise DataError(f"the {name} split is empty: use more samples (--max-samples)")
    if ranks.is_main:  # what trained, chose and measured, then what is held out (never decoded here)
        held_out = [r for r in records if split.get(r.image_id) == HELD_OUT]
        write_split(config.runtime.out / "split.csv", [r for d in splits.values() for r in d.records] + held_out,
                    {**{r.image_id: name for name, d in splits.items() for r in d.records},
                     **{r.image_id: HELD_OUT for r in held_out}}, source)
    return splits


def read_checkpoint(config: TrainConfig, world_size: int) -> dict | None:
    """OUT/checkpoint.pt, if there is one, checked to be of this run's settings."""
    path = config.runtime.out / CHECKPOINT
    if not path.is_file():
        log.warning("--resume: no %s yet; starting from scratch", path)
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["identity"] != run_identity(config, world_size):
        raise ResumeError(f"{path} was made with different settings {state['identity']}; resume with the "
                          "same ones or use another --out")
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    write_atomically(path, lambda tmp: torch.save(state, tmp))  # a crash mid-write keeps the previous one


def resume(trainer: Trainer) -> tuple[int, float, list[dict]]:
    """(first epoch, best validation score, history): from OUT/checkpoint.pt with --resume.
    Rank 0 reads it and hands it to the other ranks, so OUT need not be shared between machines."""
    config, ranks = trainer.config, trainer.ranks
    state = ranks.on_main(lambda: read_checkpoint(config, ranks.world_size)) if config.runtime.resume else None
    if state is None:
        return 1, -1.0, []
    trainer.restore(state)
    log.info("resuming from %s after epoch %d (best val balanced accuracy %.4f)", config.runtime.out / CHECKPOINT,
             state["epoch"], state["best_score"])
    return state["epoch"] + 1, state["best_score"], state["history"]


def training_record(trainer: Trainer, epoch: int, weights: str, score: float) -> dict:
    """What config.json's `training` says about how the saved weights were made: every setting
    (the data and run folders by their names: the folder ships, this machine's paths do not),
    and the facts of the run (`device`: the one it got, where the setting may say "auto")."""
    config = trainer.config
    names = {k: Path(v).name for k, v in (("extra_data", config.dataset.extra_data), ("init", config.model.init)) if v}
    return {**config.settings(), "data": config.dataset.data.name, "out": config.runtime.out.name, **names,
            "world_size": trainer.ranks.world_size, "best_epoch": epoch, "weights": weights,
            "val_balanced_accuracy": score, "device": str(trainer.device),
            "precision": str(trainer.amp_dtype or torch.float32), "initialisation": trainer.model.initialisation,
            **({"lineage": trainer.lineage} if trainer.lineage else {}),
            **({"teacher": trainer.teacher.record} if trainer.teacher else {})}


def folder_extra(trainer: Trainer, epoch: int, weights: str, score: float) -> dict:
    """config.json's entries beside the weights: the training record, and the preprocessing
    (skinlesion/colour.py) every reader of the folder applies before resizing."""
    preprocessing = preprocessing_config(trainer.config.model.colour_constancy)
    return {"training": training_record(trainer, epoch, weights, score),
            **({"preprocessing": preprocessing} if preprocessing else {})}


def batches(config: TrainConfig, device: torch.device, splits: dict[str, SplitData], ranks: Ranks):
    """The training and validation batches: loader workers running albumentations, or the
    images kept on the device and augmented there (--augment-on device); this rank's shard."""
    shard = (ranks.rank, ranks.world_size) if ranks.enabled else None
    size, seed, workers = config.optim.batch_size, config.dataset.seed, config.runtime.workers
    augmentation = config.augment.augmentation()
    if config.augment.augment_on == "device":
        return (DeviceBatches(splits["train"], device, size, True, augmentation, seed, shard),
                DeviceBatches(splits["val"], device, size * 2, False, None, shard=shard))
    pin, image_size = device.type == "cuda", config.model.image_size
    return (make_loader(splits["train"], train_transform(image_size, augmentation), size, workers,
                        shuffle=True, seed=seed, pin_memory=pin, shard=shard),
            make_loader(splits["val"], eval_transform(image_size), size * 2, workers,
                        shuffle=False, pin_memory=pin, shard=shard))


def fit(trainer: Trainer, task: Task, splits: dict[str, SplitData]) -> list[dict]:
    """Train for the remaining epochs; after each, keep the better of the raw and EMA weights in
    OUT/model when validation balanced accuracy improved, and checkpoint. Returns the history."""
    config, ranks, out = trainer.config, trainer.ranks, trainer.config.runtime.out
    epochs = config.optim.epochs
    since = time.perf_counter()
    train_loader, val_loader = batches(config, trainer.device, splits, ranks)
    total_steps = epochs * len(train_loader)
    warmup_steps = round(config.optim.warmup_epochs * len(train_loader))
    start_epoch, best_score, history = resume(trainer)
    if ranks.is_main:  # once the settings are known to fit the checkpoint, if any
        write_text(out / CONFIG_YAML, config.to_yaml())
    for epoch in range(start_epoch, epochs + 1):
        record = trainer.train_one_epoch(train_loader, epoch, total_steps, warmup_steps,
                                         since if epoch == start_epoch else None)
        if epoch == start_epoch:
            log.info("first step done %.1f s after the batches were set up (%s)", record["first_step_s"],
                     "augmented on the device" if config.augment.augment_on == "device"
                     else f"{config.runtime.workers} loader workers")
        scores = trainer.validation_scores(val_loader, splits["val"].labels)
        chosen = max(scores, key=scores.get)
        improved = scores[chosen] > best_score
        if improved:
            best_score = scores[chosen]
        if improved and ranks.is_main:
            save_model_folder(trainer.candidates()[chosen], out / "model", task,
                              extra=folder_extra(trainer, epoch, chosen, best_score))
        history.append({**record, **{f"val_balanced_accuracy_{n}": s for n, s in scores.items()}})
        log.info("epoch %d/%d  loss %.4f  %.0f img/s  val balanced accuracy %s%s", epoch, epochs,
                 record["train_loss"], record["images_per_s"], "  ".join(f"{n} {s:.4f}" for n, s in scores.items()),
                 "  (best, saved)" if improved else "")
        if ranks.is_main:
            save_checkpoint(out / CHECKPOINT, {"identity": run_identity(config, ranks.world_size), "epoch": epoch,
                                               "best_score": best_score, "history": history, **trainer.state()})
    return history


def final_evaluation(trainer: Trainer, splits: dict[str, SplitData], history: list[dict]) -> None:
    """The best epoch's weights on validation and test: the decision rule, metrics and reports."""
    config, out = trainer.config, trainer.config.runtime.out
    best, spec = load_model_folder(out / "model")
    best.to(trainer.device, memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)
    options = EvalOptions(trainer.device, trainer.amp_dtype, trainer.channels_last, config.optim.batch_size * 2,
                          data=Path(config.dataset.data), explanations=not config.runtime.no_explanations)
    metrics = evaluate(best, spec, splits, out / "model", out, options,
                       extra={"history": history, "world_size": trainer.ranks.world_size})
    test = metrics["splits"]["test"]
    log.info("best epoch %d: test balanced accuracy %.4f, accuracy %.4f, macro AUC %s; wrote %s",
             spec.training["best_epoch"], test["balanced_accuracy"], test["accuracy"],
             f"{test['macro_auc']:.4f}" if test["macro_auc"] is not None else "n/a", out)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv, __doc__)
    ranks = start(config.runtime.device)
    logging.basicConfig(level=logging.INFO if ranks.is_main else logging.WARNING, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s " + (f"[rank {ranks.rank}] " if ranks.enabled else "")
                        + "%(message)s")
    if ranks.is_main:
        config.runtime.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.dataset.seed)
    task = get_task(config.dataset.task)
    try:
        splits = load_splits(config, task, ranks)
        trainer = Trainer.build(config, task, splits["train"].labels, ranks)
        history = fit(trainer, task, splits)
    except (DataError, ResumeError, InitError, TeacherError, ModelFolderError) as error:
        log.error("%s", error)
        return 2
    except FloatingPointError as error:
        log.error("%s", error)
        return 3
    finally:
        stop(ranks)
    if ranks.is_main:  # the final evaluation is rank 0's: one model folder, one set of reports
        final_evaluation(trainer, splits, history)
    return 0


if __name__ == "__main__":
    sys.exit(main())
