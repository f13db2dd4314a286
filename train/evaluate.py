"""Evaluate a model folder on the validation and test splits, calibrate it, write reports.

    python -m train.evaluate --model DIR --data DIR [--split split.csv] [--out DIR]

Fits the decision rule on validation (skinlesion/decision.py: temperature, the class bias of
the decided class, the recall-first thresholds of the malignant and pre-malignant classes or
the manual-review threshold) and stores it in the model folder's config.json, so the app
applies the same rule. Writes metrics.json, report.md, predictions.csv and the plots to --out
(default: the model folder); metrics.json, the confusion matrix and the model card (README.md,
rendered from metrics.json) go into the model folder. Without --split, the split is made
again from the data with the seed recorded at training time — the whole validation and test
splits, also for a model trained on --max-samples.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skinlesion.card import CARD_FILE, CONFUSION_PNG, METRICS_FILE, render_card
from skinlesion.data import DataError
from skinlesion.decision import DecisionRule, softmax
from skinlesion.folder import copy_file, write_atomically, write_json, write_text
from skinlesion.metrics import classification_report, expected_calibration_error, operating_point, review_report
from skinlesion.model import load_model_folder
from skinlesion.spec import ModelFolderError, ModelSpec, read_spec, update_config
from skinlesion.transforms import eval_transform

from .engine import SplitData, autocast_dtype, make_loader, pick_device, predict_logits, prepare_splits
from .explanations import explanation_report
from .report import CURVE_PNG, plot_confusion_matrix, plot_history, render_report

log = logging.getLogger("train.evaluate")
EVAL_SPLITS = ("val", "test")
PREDICTIONS_CSV = "predictions.csv"


@dataclass
class EvalOptions:
    """How to run the evaluation; none of it changes the figures."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    batch_size: int = 128
    workers: int = 0
    data_root: Path | None = None  # the task's data folder, for the explanation checks; None skips them


def write_predictions(path: Path, splits: dict[str, SplitData], probs: dict[str, np.ndarray],
                      decided: dict[str, np.ndarray], codes: list[str]) -> None:
    """Per image calibrated probabilities, for error analysis and for checking a model later."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "split", "label", "predicted", *(f"p_{c}" for c in codes)])
            for s in EVAL_SPLITS:
                for record, row, k in zip(splits[s].records, probs[s], decided[s]):
                    writer.writerow([record.image_id, s, record.label, codes[int(k)],
                                     *(f"{p:.6f}" for p in row)])
    write_atomically(path, write)


def split_metrics(rule: DecisionRule, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Everything measured on one split with the rule, plus the plain arg-max for comparison."""
    probs = rule.probabilities(logits)
    decided = rule.decide(probs)
    argmax = classification_report(probs, labels, rule.codes)
    return {
        **classification_report(probs, labels, rule.codes, decided),
        "argmax": {k: argmax[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        "ece_before_temperature": expected_calibration_error(softmax(logits), labels),
        "ece_after_temperature": expected_calibration_error(probs, labels),
        "operating_point": operating_point(probs, labels, rule.codes, rule.thresholds),
        **({"review": review_report(probs, labels, decided, rule.review_threshold)}
           if rule.review_threshold is not None else {}),
    }


def evaluate(model: torch.nn.Module, spec: ModelSpec, splits: dict[str, SplitData], model_dir: Path,
             out: Path, options: EvalOptions, extra: dict | None = None) -> dict:
    """Fit the decision rule on validation, measure validation and test, store the rule in the
    model's config and write the reports; returns the metrics (metrics.json)."""
    logits = {s: predict_logits(model, make_loader(splits[s], eval_transform(spec.input_size), options.batch_size,
                                                   options.workers, shuffle=False),
                                options.device, options.amp_dtype, options.channels_last) for s in EVAL_SPLITS}
    rule, bias_strength = DecisionRule.fit(logits["val"], splits["val"].labels, spec.codes, spec.task.key)
    metrics = {"task": spec.task.key, "labels": list(spec.codes), **rule.to_config(), "bias_strength": bias_strength,
               "training": spec.training,
               "splits": {s: split_metrics(rule, logits[s], splits[s].labels) for s in EVAL_SPLITS}}
    if options.data_root is not None:
        metrics["explanations"] = explanation_report(model, spec, splits["test"].records, Path(options.data_root))
    metrics.update(extra or {})

    out.mkdir(parents=True, exist_ok=True)
    update_config(model_dir, **rule.to_config())
    probs = {s: rule.probabilities(logits[s]) for s in EVAL_SPLITS}
    write_predictions(out / PREDICTIONS_CSV, splits, probs, {s: rule.decide(probs[s]) for s in EVAL_SPLITS},
                      list(spec.codes))
    write_reports(metrics, read_spec(model_dir), model_dir, out)
    return metrics


def write_reports(metrics: dict, spec: ModelSpec, model_dir: Path, out: Path) -> None:
    """metrics.json, report.md and plots to `out`; metrics.json, the confusion matrix and the
    card (rendered from them) into the model folder, which carries its evidence when it ships.
    Each file is replaced whole (skinlesion/folder.py): the app may be reading the folder."""
    test = metrics["splits"]["test"]
    plot_confusion_matrix(test["confusion_matrix"], spec.codes, out / CONFUSION_PNG, f"test split (n={test['n']})")
    if metrics.get("history"):
        plot_history(metrics["history"], out / CURVE_PNG)
    write_json(out / METRICS_FILE, metrics)
    write_text(out / "report.md", render_report(metrics))
    if out.resolve() != model_dir.resolve():
        for name in (METRICS_FILE, CONFUSION_PNG):
            copy_file(out / name, model_dir / name)
    write_text(model_dir / CARD_FILE, render_card(spec, metrics))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--split", type=Path, help="split.csv of the training run (default: remake it)")
    p.add_argument("--out", type=Path, help="where reports go (default: the model folder)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-explanations", action="store_true",
                   help="skip the explanation checks (localisation, faithfulness, sanity; minutes on a CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        model, spec = load_model_folder(args.model)
        splits = prepare_splits(spec.task.load(args.data), spec.input_size, spec.training.get("seed", 0), None,
                                spec.codes, split=args.split, workers=args.workers + 1)
    except (ModelFolderError, DataError) as error:
        log.error("%s", error)
        return 2
    empty = [s for s in EVAL_SPLITS if len(splits[s].labels) == 0]
    if empty:
        log.error("no images of the %s split(s) found in %s", " and ".join(empty), args.data)
        return 2
    device = pick_device(args.device)
    options = EvalOptions(device, autocast_dtype(device, None), batch_size=args.batch_size, workers=args.workers,
                          data_root=None if args.no_explanations else args.data)
    metrics = evaluate(model.to(device), spec, splits, args.model, args.out or args.model, options)
    test = metrics["splits"]["test"]
    log.info("test: balanced accuracy %.4f, accuracy %.4f, macro F1 %.4f; temperature %.3f",
             test["balanced_accuracy"], test["accuracy"], test["macro_f1"], metrics["temperature"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
