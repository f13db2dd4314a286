"""Choose the size a model folder answers at, on validation (FixRes: Touvron et al. 2019).

    python -m train.resolution --model runs/student/model --data ../shared/data/ham10000 \\
        --sizes 224 240 256 272 288 --out runs/student-answers-larger/model \\
        --table results/ablation/resolution-ham10000.md
    python -m train.evaluate --model runs/student-answers-larger/model --data ../shared/data/ham10000

A network trained on random resized crops (the acquisition-shift zoom, skinlesion/transforms.py)
sees lesions larger in training than the whole image squashed to the training size shows them:
answering at a larger size shows them at the size it learned. Each size's outputs are computed
once (the folder's whole ensemble and views, the images decoded and resized as the Predictor
resizes them), each size gets its own decision rule fitted on validation (train.ablation's row),
and OUT is a copy of the folder whose `pretrained_cfg.test_input_size` (timm's key for the size
a model is evaluated at; `input_size` stays the training size) is the size with the best
validation balanced accuracy when it beats the training size by more than one image of the
rarest validation class moves it (`smallest_step`), else the training size. Test figures are
printed beside it, never chosen on. `train.evaluate` then refits the rule, the sets, the input checks and the
reports at that size; `train.gallery`, `train.onnx` and `train.monitor` follow as for any folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from skinlesion.decision import fit_temperature, softmax
from skinlesion.models.ensemble import Ensemble, average, load_ensemble
from skinlesion.models.markdown import f, table
from skinlesion.models.spec import ModelSpec, read_config, update_config

from .ablation import forward_p50, lever
from .device import pick_device
from .ensemble import member_outputs
from .metrics import macro_auc
from .splits import prepare_splits

log = logging.getLogger("train.resolution")
SIZE_KEY = "test_input_size"


def answers(net: Ensemble, spec: ModelSpec, data: Path, sizes: list[int], device: torch.device) -> tuple[dict, dict]:
    """{size: {split: the folder's answer (log-probabilities, images × classes)}} on validation
    and test, and {split: labels}."""
    net = net.to(device)
    records = spec.task.load(data)
    outputs, labels = {}, {}
    for size in sizes:
        splits = prepare_splits(records, size, spec.training.get("seed", 0), None, spec.codes,
                                preprocessing=spec.preprocessing, names=("val", "test"))
        at = dataclasses.replace(spec, input_size=size)
        labels = {s: splits[s].labels for s in splits}
        outputs[size] = {s: average(torch.from_numpy(member_outputs(net, at, splits[s].images, device))).numpy()
                         for s in splits}
        log.info("%d px: answered", size)
    return outputs, labels


def validation_scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Validation's smooth scores beside its balanced accuracy (a mean of recalls, some over a
    handful of images): macro AUC and the mean negative log-likelihood, at the temperature the
    row's rule fits (skinlesion/decision.py)."""
    probs = softmax(logits, fit_temperature(logits, labels))
    return {"val_auc": macro_auc(probs, labels),
            "val_nll": float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())}


def measure(folder: Path, data: Path, sizes: list[int], device: torch.device) -> tuple[list[dict], float]:
    """One train.ablation row per size, each under its own rule fitted on validation, with the
    forward pass p50 at that size; and validation's smallest_step."""
    net, spec = load_ensemble(folder)
    outputs, labels = answers(net, spec, data, sizes, device)
    rows = []
    for size in sizes:
        row, _ = lever(f"{size} px", {s: outputs[size][s][None] for s in labels}, labels, list(spec.codes),
                       spec.task.high_risk_codes, [1.0])
        rows.append({**row, **validation_scores(outputs[size]["val"], labels["val"]), "size": size,
                     "p50_ms": forward_p50(net, size)})
    return rows, smallest_step(labels["val"])


def smallest_step(labels) -> float:
    """What one image of the rarest class moves balanced accuracy by (1 / (classes × its count)):
    a gain below it is one image's luck, not a better size."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    return 1.0 / (len(counts) * counts.min())


def best_size(rows: list[dict], trained: int, step: float) -> int:
    """The size with the best validation balanced accuracy when it beats the training size's by
    more than `step` (smallest_step); else the training size."""
    base = next(r for r in rows if r["size"] == trained)
    best = max(rows, key=lambda r: (r["val_ba"], r["size"] == trained, -r["size"]))
    return best["size"] if best["val_ba"] - base["val_ba"] > step else trained


def render(rows: list[dict], chosen: int) -> str:
    return table(["answer size", "val BA", "val macro AUC", "val NLL", "test BA", "test macro AUC", "test ECE",
                  "forward p50 (ms)"],
                 [[f"{r['size']} px" + (" (chosen)" if r["size"] == chosen else ""), f(r["val_ba"]), f(r["val_auc"]),
                   f(r["val_nll"]), f(r["test_ba"]), f(r["test_auc"]), f(r["test_ece"]), f(r["p50_ms"], 0)]
                  for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.resolution", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="square sizes to answer at, in px")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write (a copy)")
    p.add_argument("--table", type=Path, help="also write the Markdown table, and as JSON beside it the rows and the "
                   "choice (python -m train.report renders it into a `<!-- resolution: NAME -->` block)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    trained = int(read_config(args.model)["pretrained_cfg"]["input_size"][-1])
    rows, step = measure(args.model, args.data, sorted(set(args.sizes) | {trained}), pick_device(args.device))
    chosen = best_size(rows, trained, step)
    text = render(rows, chosen)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
        record = {"trained": trained, "chosen": chosen, "smallest_step": step, "rows": rows}
        args.table.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    if args.out.resolve() != args.model.resolve():
        shutil.copytree(args.model, args.out, dirs_exist_ok=True)
    cfg = {k: v for k, v in read_config(args.out)["pretrained_cfg"].items() if k != SIZE_KEY}
    update_config(args.out, pretrained_cfg={**cfg, **({SIZE_KEY: [3, chosen, chosen]} if chosen != trained else {})},
                  resolution={"trained": trained, "answers": chosen, "chosen_on": "validation balanced accuracy",
                              "smallest_step": round(step, 4),
                              "validation": {str(r["size"]): round(r["val_ba"], 4) for r in rows}})
    log.info("%s answers at %d px (trained at %d); now run python -m train.evaluate --model %s --data %s",
             args.out, chosen, trained, args.out, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
