"""Compare training runs on the same split: one table row per run, validation and test.

    python -m train.ablation runs/ablation/* runs/b0-192 --data ../shared/data/ham10000 \\
        --out results/ablation/table.md

For every run folder (OUT of `python -m train`): balanced accuracy with the arg-max and with
the fitted decision rule (decision.py, fitted on that run's validation split), with and
without flip test-time augmentation (the image and its two mirror images, averaged), macro
AUC, ECE after temperature, and the training time. Nothing is chosen on the test split.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from sklearn.metrics import balanced_accuracy_score

from skinlesion.card import f, table
from skinlesion.decision import DecisionRule
from skinlesion.metrics import expected_calibration_error, macro_auc
from skinlesion.model import load_model_folder
from skinlesion.transforms import eval_transform

from .engine import make_loader, pick_device, predict_logits, prepare_splits

log = logging.getLogger("train.ablation")


class Flipped(torch.nn.Module):
    """The model averaged over the image and its horizontal and vertical mirror images, in
    probability (as Predictor's TTA does), returned as log-probabilities."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature, self.pretrained_cfg = model, temperature, model.pretrained_cfg
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [self.model(v) / self.temperature for v in (x, x.flip(-1), x.flip(-2))]
        return torch.stack([v.softmax(-1) for v in views]).mean(0).log()


def score(run: Path, data: Path, device: torch.device) -> dict:
    model, spec = load_model_folder(run / "model")
    splits = prepare_splits(spec.task.load(data), spec.input_size, 0, None, spec.codes, split=run / "split.csv")
    row: dict = {"run": run.name, **{k: spec.training.get(k) for k in (
        "initialisation", "image_size", "epochs", "best_epoch", "class_weights")},
        "architecture": spec.architecture}
    history = json.loads((run / "metrics.json").read_text()).get("history", [])
    row["train_minutes"] = sum(h["seconds"] for h in history) / 60
    labels = {s: splits[s].labels for s in ("val", "test")}
    loaders = {s: make_loader(splits[s], eval_transform(spec.input_size), 128, 0, shuffle=False) for s in labels}
    temperature = None
    for name in ("plain", "tta"):  # TTA: the mirror images averaged at the plain rule's temperature
        net = model if temperature is None else Flipped(model, temperature)
        logits = {s: predict_logits(net.to(device), loaders[s], device) for s in labels}
        rule, _ = DecisionRule.fit(logits["val"], labels["val"], spec.codes, spec.task.key)
        temperature = rule.temperature
        for s in labels:
            probs = rule.probabilities(logits[s])
            row[f"{name}_{s}_argmax"] = balanced_accuracy_score(labels[s], probs.argmax(1))
            row[f"{name}_{s}_rule"] = balanced_accuracy_score(labels[s], rule.decide(probs))
            row[f"{name}_{s}_auc"] = macro_auc(probs, labels[s])
            row[f"{name}_{s}_ece"] = expected_calibration_error(probs, labels[s])
    return row


def render(rows: list[dict]) -> str:
    header = ["run", "init", "architecture", "px", "epochs (best)", "class weights", "train min",
              "val BA arg-max", "val BA rule", "test BA arg-max", "test BA rule",
              "test BA rule + flip TTA", "test macro AUC", "test ECE"]
    body = [[r["run"], r["initialisation"], r["architecture"], r["image_size"], f"{r['epochs']} ({r['best_epoch']})",
             r["class_weights"], f"{r['train_minutes']:.0f}",
             f(r["plain_val_argmax"]), f(r["plain_val_rule"]), f(r["plain_test_argmax"]),
             f(r["plain_test_rule"]), f(r["tta_test_rule"]), f(r["plain_test_auc"]), f(r["plain_test_ece"])]
            for r in rows]
    return table(header, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="run folders of python -m train")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, help="Markdown table to write (and .json beside it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    device = pick_device("auto")
    rows = []
    for run in args.runs:
        if not (run / "model" / "config.json").is_file():
            log.warning("%s: no model folder, skipped", run)
            continue
        log.info("scoring %s", run)
        rows.append(score(run, args.data, device))
    table = render(rows)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
