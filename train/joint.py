"""The patient's record learnt together with the image's features (a joint head), measured against
the record as the product adds it (its log-likelihood ratio on the image's logits:
skinlesion/models/record.py), on the same network and views.

    python -m train.joint --model assets/models/ham10000 --data ../shared/data/ham10000 \\
        --out results/ablation/levers-ham10000-record.md

The image's logits and the record's evidence meet late in what ships: two models fitted apart
and added at a weight chosen on validation, which assumes the record and the image independent
given the class. A joint head can learn where they are not (a site where one class looks like
another, an age where a pattern means more): the network's last linear layer, widened by the
record's columns (`encode`: age, sex, site), trained on the training split's pooled features (the
images as they are and `--passes` times through the run's augmentation, as train/head.py) with
each image's record beside them. The image's part starts from the network's head and learns at
`--lr`; the record's part starts at zero and learns at `--record-lr` (its inputs are a handful of
0–1 columns: at the image part's rate it would barely move in a few epochs). The same head
trained the same way without the record is measured too, so that the record's share and the
head's own retraining are told apart. Only HAM10000's images carry a record: the head learns on
its training split alone.

Rows, each under its own rule fitted on validation (train/ablation.lever; the network's views
averaged as the folder answers): the image alone ("image"); the image with the record added as
the product adds it ("+ record (ships)", fitted here as train/patient.py fits it); the head
trained again without the record, alone and with the record added the same way ("head again");
the joint head. Differences from the product's record row with their paired lesion-bootstrap
95% intervals. Nothing is chosen on test. Measured, not served: the folder is not changed.
"""
from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skinlesion.data import DataError, read_split, split_records
from skinlesion.decision import DecisionRule, fit_temperature
from skinlesion.models.ensemble import Ensemble, load_ensemble
from skinlesion.models.record import PatientModel, encode
from skinlesion.models.spec import ModelFolderError, ModelSpec
from skinlesion.patient import Patient

from .ablation import forward_p50, lever, render, with_intervals
from .device import pick_device
from .ensemble import tempered_average
from .head import augmented, features, fit_head
from .loop import class_weights
from .patient import fit_record
from .splits import EVAL_SPLITS, SplitData, folder_arguments, prepare_splits

log = logging.getLogger("train.joint")


class JointHead(torch.nn.Module):
    """The network's classifier on the pooled features plus a linear map of the record's columns
    (the last `record_columns` of each row), which starts at zero: at first it answers as the
    network does."""

    def __init__(self, image: torch.nn.Linear, record_columns: int):
        super().__init__()
        self.width = image.in_features
        self.image = copy.deepcopy(image)
        self.record = torch.nn.Linear(record_columns, image.out_features, bias=False)
        torch.nn.init.zeros_(self.record.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image(x[:, :self.width]) + self.record(x[:, self.width:])


@dataclass
class WithRecords:
    """A model folder, its task's splits (train, validation, test) and each image's record."""
    net: Ensemble
    spec: ModelSpec
    known: dict[str, Patient]                 # image id → record (HAM10000's metadata)
    splits: dict[str, SplitData]
    patients: dict[str, list[Patient]]        # split → each image's record, in the split's order

    @classmethod
    def load(cls, prog: str, model: Path, data: Path, split_file: Path | None,
             record_model: bool = False) -> "WithRecords":
        """The folder and its data, or a one-line SystemExit naming what is missing (with
        `record_model`, the folder's own record model too: before any image is decoded)."""
        try:
            net, spec = load_ensemble(model)
            if record_model and PatientModel.from_config(spec.config) is None:
                raise SystemExit(f"{prog}: {model} has no record model (python -m train.patient fits one)")
            known = spec.task.patients(data)
            records = spec.task.load(data)
            split = read_split(split_file) if split_file else split_records(records, spec.training.get("seed", 0))
        except (ModelFolderError, DataError, OSError) as error:
            raise SystemExit(f"{prog}: {error}") from None
        if not known:
            raise SystemExit(f"{prog}: task {spec.task.key!r} has no patient records in {data}")
        splits = prepare_splits(records, spec.input_size, spec.training.get("seed", 0), None, spec.codes, split,
                                preprocessing=spec.preprocessing, names=("train", *EVAL_SPLITS))
        return cls(net, spec, known, splits,
                   {s: [known.get(r.image_id, Patient()) for r in splits[s].records] for s in splits})

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {s: self.splits[s].labels for s in EVAL_SPLITS}

    @property
    def groups(self) -> dict[str, list[str]]:
        return {s: [r.group for r in self.splits[s].records] for s in EVAL_SPLITS}

    def row(self, name: str, outputs: dict[str, np.ndarray], p50: float, tempered: bool = True) -> tuple[dict, dict]:
        """train/ablation's row: the views (views × images × classes) at their temperature (fitted
        on validation's plain view, as the ablation fits each model's), averaged, under a rule
        fitted on validation."""
        t = fit_temperature(outputs["val"][0], self.labels["val"]) if tempered else 1.0
        found, decided = lever(name, outputs, self.labels, list(self.spec.codes), self.spec.task.high_risk_codes,
                               [t] * len(outputs["val"]))
        return {**found, "p50_ms": p50, "train_minutes": None}, decided

    def record_added(self, outputs: dict[str, np.ndarray], prog: str) -> tuple[dict[str, np.ndarray], float]:
        """The record added to the averaged views as the product adds it (train/patient.py's fit:
        the regressions, the weight chosen on validation), and that weight."""
        labels, codes = self.labels, list(self.spec.codes)
        t = fit_temperature(outputs["val"][0], labels["val"])
        served = {s: tempered_average(outputs[s], [t] * len(outputs[s])) for s in EVAL_SPLITS}
        fitted = fit_record(self.spec, self.known, DecisionRule.fit(served["val"], labels["val"], codes,
                                                                    self.spec.task.high_risk_codes)[0],
                            self.splits, served)
        if fitted is None:
            raise SystemExit(f"{prog}: the training split's records do not hold every class")
        record_model, _ = fitted
        return ({s: record_model.fuse(served[s], self.patients[s])[None] for s in EVAL_SPLITS},
                record_model.weight)


def write_rows(rows: list[dict], out: Path) -> None:
    """The table (.md) and its rows (.json beside it: train.report's `levers` block)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(render(rows))


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments("python -m train.joint", __doc__)
    p.add_argument("--out", type=Path, required=True, help="the Markdown table to write (and .json beside it)")
    p.add_argument("--passes", type=int, default=6, help="augmented passes over the training split")
    p.add_argument("--class-weights", choices=["inverse", "inverse-sqrt", "none"],
                   help="default: the run's own")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4, help="the image part's rate (train/head.py's)")
    p.add_argument("--record-lr", type=float, default=1e-2, help="the record part's rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.passes < 0 or args.epochs < 1:
        p.error("--passes must be 0 or more and --epochs 1 or more")
    started = time.perf_counter()
    prog = "python -m train.joint"
    data = WithRecords.load(prog, args.model, args.data, args.split)
    net, spec, splits = data.net, data.spec, data.splits
    model, views = net.primary, net.views
    device = pick_device(args.device)
    sites = tuple(sorted({q.site for q in data.patients["train"]} - {None}))
    columns = {s: torch.as_tensor(encode(data.patients[s], sites), dtype=torch.float32) for s in splits}

    train = splits["train"]
    log.info("%d training images with their records; %d augmented passes", len(train.labels), args.passes)
    x = torch.cat([features(model, spec, train.images, device)]
                  + [features(model, spec, augmented(train.images, spec, args.seed + k), device)
                     for k in range(args.passes)])
    y = torch.as_tensor(np.tile(train.labels, args.passes + 1))
    seen = {s: [features(model, spec, splits[s].images, device, v) for v in views] for s in EVAL_SPLITS}
    scheme = args.class_weights or spec.training.get("class_weights", "inverse")
    weights = class_weights(train.labels, spec.num_classes, scheme)
    classifier = model.get_classifier().cpu().float()
    alone = fit_head(copy.deepcopy(classifier), x, y, weights, args.epochs, args.lr, 0.0, args.seed)
    joint = JointHead(classifier, columns["train"].shape[1])
    fit_head(joint, torch.cat([x, columns["train"].repeat(args.passes + 1, 1)], 1), y, weights, args.epochs,
             args.lr, 0.0, args.seed, groups=[{"params": joint.image.parameters()},
                                              {"params": joint.record.parameters(), "lr": args.record_lr}])
    minutes = (time.perf_counter() - started) / 60

    with torch.no_grad():
        def passes(head: torch.nn.Module, with_record: bool) -> dict[str, np.ndarray]:
            """Each split's logits of `head` on every view: views × images × classes."""
            return {s: np.stack([head(torch.cat([f, columns[s]], 1) if with_record else f).numpy()
                                 for f in seen[s]]) for s in EVAL_SPLITS}
        image, retrained, learnt = passes(classifier, False), passes(alone, False), passes(joint, True)

    p50 = forward_p50(net, spec.input_size)
    shown = " · " + "+".join(views[1:]) if len(views) > 1 else ""
    (fused, weight), (refused, reweight) = data.record_added(image, prog), data.record_added(retrained, prog)
    results = [data.row(f"image{shown}", image, p50),
               data.row(f"image{shown} + record (ships)", fused, p50, tempered=False),
               data.row(f"head again{shown}", retrained, p50),
               data.row(f"head again{shown} + record", refused, p50, tempered=False),
               data.row(f"joint head{shown}", learnt, p50)]
    log.info("the record's weight, added late: %g to the image's logits, %g to the head trained again's",
             weight, reweight)
    for found, _ in results[2:]:
        found["train_minutes"] = minutes
    write_rows(with_intervals([r for r, _ in results], [d for _, d in results], data.labels, data.groups,
                              against=1), args.out)
    log.info("the record's columns in the joint head, largest weight %.3f; wrote %s",
             float(joint.record.weight.abs().max()), args.out)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
