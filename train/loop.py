"""The training loop: a `Trainer` holds the model and everything that updates it (optimiser,
loss scaler, weight EMA, weighted loss) and runs one epoch at a time. Orchestration — data,
resuming, choosing and saving the best epoch, the final evaluation — is in __main__.py.

Under torchrun the forward and backward run through DistributedDataParallel (`net`), which
averages the gradients over the ranks; `model` stays the plain module, so the EMA, the
checkpoint and the saved weights never see the wrapper. Every rank keeps the same EMA (the
weights are identical after each step); rank 0 alone writes it."""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from skinlesion.colour import preprocessing_config
from skinlesion.models.network import WEIGHTS_FILE, create_model, load_model_folder
from skinlesion.models.spec import read_spec
from skinlesion.ops.record import sha256
from skinlesion.tasks import Task

from .config import TrainConfig
from .device import autocast_dtype
from .distill import Teacher, distillation_loss
from .distributed import Ranks
from .loaders import predict_logits, to_input
from .mixing import Mixing, mixed_loss

log = logging.getLogger("train")


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


class InitError(ValueError):
    """--init names a model folder whose weights cannot start this run (other network or classes)."""


def start_from(model: torch.nn.Module, folder: Path, task: Task, architecture: str) -> list[dict]:
    """Copy a model folder's weights into `model` (--init): the same timm architecture and the
    same classes in the same order, else InitError; the input size may differ (the weights do
    not depend on it). Returns the lineage to record: the folder's own, then the folder itself
    (its name, the sha256 of its weights, how long it trained), so runs that continue one
    another add up and each step can be checked against the file it started from."""
    spec = read_spec(folder)
    if spec.architecture != architecture:
        raise InitError(f"--init {folder}: its weights are a {spec.architecture}, this run trains a {architecture} "
                        f"(--architecture {spec.architecture} to continue it)")
    if spec.codes != tuple(task.codes):
        raise InitError(f"--init {folder}: its classes {list(spec.codes)} are not task {task.key!r}'s "
                        f"{list(task.codes)} in that order")
    source, _ = load_model_folder(folder)
    model.load_state_dict(source.state_dict())
    parent = spec.training
    return [*parent.get("lineage", []), {"folder": Path(folder).name, "sha256": sha256(Path(folder) / WEIGHTS_FILE),
                                        "epochs": parent.get("epochs"), "best_epoch": parent.get("best_epoch")}]


@dataclass
class Trainer:
    """The model being trained and everything that updates it; one method per step of an epoch."""
    config: TrainConfig
    model: torch.nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    ranks: Ranks
    net: torch.nn.Module  # what trains: `model`, or `model` wrapped in DistributedDataParallel
    step: int = 0
    lineage: list[dict] = field(default_factory=list)  # the model folders this run continues (--init)
    teacher: Teacher | None = None        # --teacher: soft targets beside the labels (distill.py)
    mixing: Mixing | None = None          # --mixup / --cutmix: each batch mixed with itself reversed (mixing.py)

    @classmethod
    def build(cls, config: TrainConfig, task: Task, train_labels: np.ndarray, ranks: Ranks) -> "Trainer":
        """The model of `config.model` on this rank's device, the optimiser, loss and EMA of
        `config.optim`, the precision and memory format of `config.runtime`."""
        device, m, o = ranks.device, config.model, config.optim
        amp_dtype = autocast_dtype(device, config.runtime.amp)
        channels_last = True if config.runtime.channels_last is None else config.runtime.channels_last
        log.info("device %s, precision %s%s", device, amp_dtype or torch.float32,
                 ", channels_last" if channels_last else "")
        model = create_model(len(task.codes), architecture=m.architecture, pretrained=m.pretrained and not m.init,
                             image_size=m.image_size, drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate)
        lineage = start_from(model, m.init, task, m.architecture) if m.init else []
        if m.init:
            model.initialisation = f"model folder {Path(m.init).name} (sha256 {lineage[-1]['sha256'][:12]})"
        log.info("initialisation: %s", model.initialisation)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        net = model
        if ranks.enabled:  # rank 0's initial weights are broadcast to the others here
            net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
            torch.manual_seed(config.dataset.seed + ranks.rank)  # each rank its own dropout / drop-path draws
        teacher = Teacher(o.teacher, task, preprocessing_config(m.colour_constancy), model.pretrained_cfg, device,
                          channels_last) if o.teacher else None
        if teacher:
            log.info("teacher: %s (τ %s, labels' weight %s)", o.teacher, o.distill_temperature, o.distill_weight)
        weights = class_weights(train_labels, len(task.codes), o.class_weights)
        log.info("class weights (%s): %s", o.class_weights,
                 " ".join(f"{c}={w:.2f}" for c, w in zip(task.codes, weights)))
        a = config.augment
        mixing = Mixing(a.mixup, a.cutmix, config.dataset.seed + ranks.rank) if a.mixup or a.cutmix else None
        if mixing:
            log.info("mixing: MixUp α %s, CutMix α %s", a.mixup, a.cutmix)
        return cls(config, model,
                   ModelEmaV3(model, decay=o.ema_decay, use_warmup=True) if o.ema_decay > 0 else None,
                   torch.optim.AdamW(param_groups_weight_decay(model, o.weight_decay), lr=o.lr),
                   torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                   torch.nn.CrossEntropyLoss(weight=weights.to(device), label_smoothing=o.label_smoothing),
                   device, amp_dtype, channels_last, ranks, net, lineage=lineage, teacher=teacher, mixing=mixing)

    def train_one_epoch(self, loader, epoch: int, total_steps: int, warmup_steps: int,
                        since: float | None = None) -> dict:
        """One pass over the training data (this rank's shard of it under torchrun); the epoch's
        loss and speed over all ranks, the last learning rate, and how long the first step took
        to be done from `since` (default: the epoch's start): worker start-up and warm-up."""
        o, cfg = self.config.optim, self.model.pretrained_cfg
        self.model.train()
        if isinstance(loader.batch_sampler.sampler, DistributedSampler):
            loader.batch_sampler.sampler.set_epoch(epoch)  # a new shuffle, the same on every rank
        started, seen, loss_sum, lr, first_step = time.perf_counter(), 0, 0.0, o.lr, None
        bar = tqdm(loader, desc=f"epoch {epoch}/{o.epochs}", unit="batch", disable=not self.ranks.is_main,
                   dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        for batch, target in bar:
            lr = learning_rate(self.step, total_steps, warmup_steps, o.lr, o.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = self.train_step(to_input(batch, self.device, cfg["mean"], cfg["std"], self.channels_last),
                                   target.to(self.device, non_blocking=True))
            seen += len(target)
            loss_sum += loss * len(target)
            first_step = first_step or time.perf_counter() - (since or started)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}")
        bar.close()
        seen, loss_sum = self.ranks.sum(seen, loss_sum)
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": lr,
                "images_per_s": seen / seconds, "seconds": seconds, "first_step_s": first_step}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        hard = self.criterion if self.mixing is None else mixed_loss(self.criterion, self.mixing(x))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.net(x)
            if self.teacher is None:
                loss = hard(logits, y)
            else:
                o = self.config.optim
                loss = distillation_loss(logits, y, self.teacher.logits(x), hard, o.distill_weight,
                                         o.distill_temperature)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {self.step}: lower --lr or turn off --amp")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return loss.item()

    def candidates(self) -> dict[str, torch.nn.Module]:
        """The weights scored each epoch: the raw ones and, with --ema-decay, their EMA."""
        return {"model": self.model, **({"ema": self.ema.module} if self.ema is not None else {})}

    def validation_scores(self, loader, labels: np.ndarray) -> dict[str, float]:
        """Balanced accuracy of each candidate on the whole validation split; under torchrun each
        rank predicts its shard and every rank gets the same scores, so all decide alike."""
        return {name: balanced_accuracy_score(labels, self.ranks.gather_rows(
                    predict_logits(m, loader, self.device, self.amp_dtype, self.channels_last),
                    len(labels)).argmax(1))
                for name, m in self.candidates().items()}

    def state(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
