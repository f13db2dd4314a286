"""A network that takes the patient's record as an input (the record network), trained end to end
from a model folder's weights and measured against the record as the product adds it.

    python -m train.recordnet --model assets/models/ham10000 --data ../shared/data/ham10000 \\
        --epochs 4 --out results/ablation/levers-ham10000-recordnet.md [--weights runs/recordnet.pt]

What ships adds the record late: its log-likelihood ratio on the image's logits at a weight
chosen on validation (skinlesion/models/record.py), which assumes image and record independent
given the class. A joint head on frozen features (train/joint.py) does not learn the record: on
the training images the features already separate the labels. Here the whole network learns
with the record beside the image, so that the image part may leave to the record what the
record says (and the record part learn what the image leaves):

- the network: the folder's CNN, plus a small network on the record's columns (`encode`: age,
  sex, site; one hidden layer, so that it may learn where age and site meet), whose output is
  added to the CNN's logits; its last layer starts at zero, so that at first it answers as the
  folder's network does;
- its targets: the labels (weight `--distill-weight`) and the folder's own answer with the
  record, the record added as the product adds it (its calibrated probabilities, softened by
  τ; train/distill.py), on the same augmented batch and the same record. That teacher knows
  what the record says, so the record part learns even where the labels are already fitted;
- the record's fields are each dropped at random (`--field-drop`), in the student's input and
  the teacher's alike, so that any part of a record may be given, or none;
- HAM10000's training split alone (only its images carry a record), through the run's own
  augmentation (its strength and acquisition shift from config.json); the record part learns at
  `--record-lr`, the CNN at `--lr` (cosine, from a short warm-up). The epoch kept is the one of
  the best validation balanced accuracy with the whole record (the argmax, on the plain view).

Rows, each under its own rule fitted on validation, on the folder's views (train/joint.py's):
the image alone, the image with the record as the product adds it (the reference), the record
network given no record, the record network with the record, and the record network with the
record added late to its no-record logits as well. Nothing is chosen on test. Measured, not
served: the folder is not changed (`--weights` keeps the network's weights for a later look).
"""
from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader

from skinlesion.data import ImageDataset
from skinlesion.models.ensemble import VIEWS
from skinlesion.models.record import PatientModel, encode
from skinlesion.models.spec import ModelSpec
from skinlesion.patient import FIELDS, Patient
from skinlesion.transforms import model_input

from .ablation import forward_p50, with_intervals
from .device import pick_device
from .distill import Teacher, distillation_loss
from .head import run_transform
from .joint import WithRecords, write_rows
from .loaders import to_input
from .loop import class_weights, learning_rate
from .splits import EVAL_SPLITS, folder_arguments

log = logging.getLogger("train.recordnet")
PROG = "python -m train.recordnet"
BATCH = 32


class RecordNetwork(torch.nn.Module):
    """A CNN's logits plus a small network's on the record's columns (zero at first)."""

    def __init__(self, network: torch.nn.Module, record_columns: int, hidden: int = 32):
        super().__init__()
        self.network = copy.deepcopy(network)
        self.pretrained_cfg = self.network.pretrained_cfg
        classes = self.network.num_classes
        self.record = torch.nn.Sequential(torch.nn.Linear(record_columns, hidden), torch.nn.ReLU(),
                                          torch.nn.Linear(hidden, classes))
        torch.nn.init.zeros_(self.record[-1].weight)
        torch.nn.init.zeros_(self.record[-1].bias)

    def forward(self, x: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
        return self.network(x) + self.record(record)


def dropped(patients: Sequence[Patient], p: float, rng: np.random.Generator) -> list[Patient]:
    """Each given field blanked with probability `p` (each field, each record, on its own)."""
    return [replace(q, **{f: None for f in FIELDS if getattr(q, f) is not None and rng.random() < p})
            for q in patients]


class Indexed(ImageDataset):
    """The training images with their position, so that a batch finds its records."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = super().__getitem__(i)
        return image, label, i


def fused_teacher(teacher: Teacher, record_model: PatientModel, x: torch.Tensor,
                  patients: Sequence[Patient]) -> torch.Tensor:
    """The folder's answer with the record, calibrated as its record rule calibrates it: the
    teacher's served logits plus the record's weighted evidence, at that rule's temperature."""
    served = teacher.logits(x) * teacher.temperature
    evidence = torch.as_tensor(record_model.weight * record_model.log_ratio(patients), dtype=served.dtype)
    return (served + evidence.to(served.device)) / record_model.rule.temperature


@torch.no_grad()
def view_logits(model: torch.nn.Module, spec: ModelSpec, images: Sequence[np.ndarray], device: torch.device,
                views: Sequence[str], columns: torch.Tensor | None = None) -> np.ndarray:
    """A network's logits on every view (views × images × classes): a record network's with the
    records' `columns`, a plain CNN's without."""
    model.to(device).eval()
    return np.stack([torch.cat([model(VIEWS[v](model_input(images[i:i + BATCH], spec, device)),
                                      *([] if columns is None else [columns[i:i + BATCH].to(device)])).float().cpu()
                                for i in range(0, len(images), BATCH)]).numpy() for v in views])


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments(PROG, __doc__)
    p.add_argument("--out", type=Path, required=True, help="the Markdown table to write (and .json beside it)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4, help="the CNN's peak rate")
    p.add_argument("--record-lr", type=float, default=3e-3, help="the record part's peak rate")
    p.add_argument("--warmup-epochs", type=float, default=0.3)
    p.add_argument("--field-drop", type=float, default=0.3, help="each field's chance of being blanked")
    p.add_argument("--distill-weight", type=float, default=0.5, help="the labels' weight beside the teacher's")
    p.add_argument("--distill-temperature", type=float, default=2.0)
    p.add_argument("--weights", type=Path, help="where to keep the kept epoch's weights (state dict)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.epochs < 1 or not 0 <= args.field_drop <= 1 or not 0 <= args.distill_weight <= 1:
        p.error("--epochs must be 1 or more, --field-drop and --distill-weight between 0 and 1")
    started = time.perf_counter()
    data = WithRecords.load(PROG, args.model, args.data, args.split, record_model=True)
    record_model = PatientModel.from_config(data.spec.config)
    spec, splits, views, device = data.spec, data.splits, data.net.views, pick_device(args.device)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = RecordNetwork(data.net.primary, len(encode([Patient()], record_model.sites)[0])).to(device)
    teacher = Teacher(args.model, spec.task, spec.preprocessing, model.pretrained_cfg, device, channels_last=False)
    train = splits["train"]
    dataset = Indexed(train.images, train.labels, run_transform(spec))
    dataset.transform.set_random_seed(args.seed)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=len(dataset) > BATCH,
                        generator=torch.Generator().manual_seed(args.seed))
    hard = torch.nn.CrossEntropyLoss(
        weight=class_weights(train.labels, spec.num_classes, spec.training.get("class_weights", "inverse")).to(device),
        label_smoothing=spec.training.get("label_smoothing", 0.0))
    groups = [{"params": model.network.parameters(), "peak": args.lr},
              {"params": model.record.parameters(), "peak": args.record_lr}]
    optimiser = torch.optim.AdamW(groups, lr=args.lr, weight_decay=spec.training.get("weight_decay", 0.02))
    total, warmup = args.epochs * len(loader), round(args.warmup_epochs * len(loader))
    full = {s: torch.as_tensor(encode(data.patients[s], record_model.sites), dtype=torch.float32) for s in splits}
    log.info("%d training images with their records, %d epochs of %d batches; teacher: %s with its record",
             len(dataset), args.epochs, len(loader), args.model)
    step, best, kept, history = 0, -1.0, None, []
    cfg = model.pretrained_cfg
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses, epoch_started = [], time.perf_counter()
        for batch, y, index in loader:
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(step, total, warmup, group["peak"], group["peak"] / 50)
            x = to_input(batch, device, cfg["mean"], cfg["std"], False)
            given = dropped([data.patients["train"][i] for i in index.tolist()], args.field_drop, rng)
            columns = torch.as_tensor(encode(given, record_model.sites), dtype=torch.float32, device=device)
            target = fused_teacher(teacher, record_model, x, given)
            loss = distillation_loss(model(x, columns), y.to(device), target, hard, args.distill_weight,
                                     args.distill_temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            step += 1
            losses.append(loss.item())
        score = balanced_accuracy_score(data.labels["val"], view_logits(
            model, spec, splits["val"].images, device, ("plain",), full["val"])[0].argmax(1))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_balanced_accuracy": score,
                        "seconds": time.perf_counter() - epoch_started})
        if score > best:
            best, kept = score, copy.deepcopy(model.state_dict())
        log.info("epoch %d/%d  loss %.4f  val balanced accuracy %.4f (argmax, whole records)%s  %.0f s", epoch,
                 args.epochs, history[-1]["loss"], score, "  (best)" if score == best else "",
                 history[-1]["seconds"])
    minutes = (time.perf_counter() - started) / 60
    model.load_state_dict(kept)
    if args.weights:
        args.weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": kept, "history": history, "sites": record_model.sites}, args.weights)

    none = {s: torch.as_tensor(encode([Patient()] * len(full[s]), record_model.sites), dtype=torch.float32)
            for s in EVAL_SPLITS}
    image = {s: view_logits(data.net.primary, spec, splits[s].images, device, views) for s in EVAL_SPLITS}
    blank = {s: view_logits(model, spec, splits[s].images, device, views, none[s]) for s in EVAL_SPLITS}
    whole = {s: view_logits(model, spec, splits[s].images, device, views, full[s]) for s in EVAL_SPLITS}
    p50 = forward_p50(data.net, spec.input_size)
    shown = " · " + "+".join(views[1:]) if len(views) > 1 else ""
    (fused, weight), (refused, reweight) = data.record_added(image, PROG), data.record_added(blank, PROG)
    results = [data.row(f"image{shown}", image, p50),
               data.row(f"image{shown} + record (ships)", fused, p50, tempered=False),
               data.row(f"record network, no record{shown}", blank, p50),
               data.row(f"record network{shown}", whole, p50),
               data.row(f"record network, no record{shown} + record", refused, p50, tempered=False)]
    for found, _ in results[2:]:
        found["train_minutes"] = minutes
    log.info("the record's weight, added late: %g to the image's logits, %g to the record network's", weight,
             reweight)
    write_rows(with_intervals([r for r, _ in results], [d for _, d in results], data.labels, data.groups,
                              against=1), args.out)
    log.info("best epoch %d of %d (%.1f min); wrote %s", history.index(max(
        history, key=lambda h: h["val_balanced_accuracy"])) + 1, args.epochs, minutes, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
