"""Evaluate a model folder on the validation and test splits, calibrate it, write reports.

    python -m train.evaluate --model DIR --data DIR [--split split.csv] [--out DIR]

Fits the temperature (validation NLL) and the recall-first thresholds of the malignant and
pre-malignant classes (validation sensitivity ≥ 0.90) and stores both in the model folder's
config.json, so the app uses them. Writes metrics.json, report.md, predictions.csv and the plots to --out
(default: the model folder) and the model card (README.md) into the model folder. Without
--split, the split is made again from the data with the seed recorded at training time —
the whole validation and test splits, also for a model trained on --max-samples.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from skinlesion.classes import DEFAULT_TASK, high_risk_codes
from skinlesion.data import DataError, load_ham10000
from skinlesion.metrics import (SENSITIVITY_TARGET, classification_report,
                                expected_calibration_error, fit_temperature, operating_point,
                                plot_confusion_matrix, recall_first_thresholds, softmax)
from skinlesion.model import CARD_FILE, ModelFolderError, load_model_folder, update_config
from skinlesion.transforms import eval_transform

from .engine import SplitData, autocast_dtype, make_loader, pick_device, predict_logits, prepare_splits
from .report import CONFUSION_PNG, CURVE_PNG, plot_history, render_card, render_report

log = logging.getLogger("train.evaluate")
EVAL_SPLITS = ("val", "test")
PREDICTIONS_CSV = "predictions.csv"


def write_predictions(path: Path, splits: dict[str, SplitData], probs: dict[str, np.ndarray],
                      codes: list[str]) -> None:
    """Per image calibrated probabilities, for error analysis and for checking a model later."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "split", "label", "predicted", *(f"p_{c}" for c in codes)])
        for s in EVAL_SPLITS:
            for record, row in zip(splits[s].records, probs[s]):
                writer.writerow([record.image_id, s, record.label, codes[int(row.argmax())],
                                 *(f"{p:.6f}" for p in row)])


def evaluate(model: torch.nn.Module, config: dict, splits: dict[str, SplitData], model_dir: Path,
             out: Path, device: torch.device, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, batch_size: int = 128, workers: int = 0,
             extra: dict | None = None) -> dict:
    """Calibrate on validation, measure validation and test, store calibration in the config."""
    codes = config["label_names"]
    size = config["pretrained_cfg"]["input_size"][-1]
    logits = {s: predict_logits(model, make_loader(splits[s], eval_transform(size), batch_size,
                                                   workers, shuffle=False),
                                device, amp_dtype, channels_last) for s in EVAL_SPLITS}
    labels = {s: splits[s].labels for s in EVAL_SPLITS}

    temperature = fit_temperature(logits["val"], labels["val"])
    probs = {s: softmax(logits[s], temperature) for s in EVAL_SPLITS}
    risky = [c for c in high_risk_codes(config.get("task", DEFAULT_TASK)) if c in codes]
    by_index = recall_first_thresholds(probs["val"], labels["val"], [codes.index(c) for c in risky])
    thresholds = {codes[i]: t for i, t in by_index.items()}

    metrics = {"task": config.get("task", DEFAULT_TASK), "labels": codes,
               "temperature": temperature, "sensitivity_target": SENSITIVITY_TARGET,
               "thresholds": thresholds, "training": config.get("training", {}), "splits": {}}
    for s in EVAL_SPLITS:
        metrics["splits"][s] = {
            **classification_report(probs[s], labels[s], codes),
            "ece_before_temperature": expected_calibration_error(softmax(logits[s]), labels[s]),
            "ece_after_temperature": expected_calibration_error(probs[s], labels[s]),
            "operating_point": operating_point(probs[s], labels[s], codes, thresholds),
        }
    metrics.update(extra or {})

    out.mkdir(parents=True, exist_ok=True)
    config = update_config(model_dir, temperature=temperature, thresholds=thresholds,
                           sensitivity_target=SENSITIVITY_TARGET)
    plot_confusion_matrix(metrics["splits"]["test"]["confusion_matrix"], codes, out / CONFUSION_PNG,
                          f"test split (n={metrics['splits']['test']['n']})")
    if metrics.get("history"):
        plot_history(metrics["history"], out / CURVE_PNG)
    write_predictions(out / PREDICTIONS_CSV, splits, probs, codes)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_report(metrics))
    if out.resolve() != model_dir.resolve():  # the folder that ships carries its evidence
        shutil.copy(out / "metrics.json", model_dir / "metrics.json")
        shutil.copy(out / CONFUSION_PNG, model_dir / CONFUSION_PNG)
    (model_dir / CARD_FILE).write_text(render_card(config, metrics))
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="HAM10000 folder")
    p.add_argument("--split", type=Path, help="split.csv of the training run (default: remake it)")
    p.add_argument("--out", type=Path, help="where reports go (default: the model folder)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        model, config = load_model_folder(args.model)
        task = config.get("task", DEFAULT_TASK)
        records = load_ham10000(args.data, task=task)
        splits = prepare_splits(records, config["pretrained_cfg"]["input_size"][-1],
                                config.get("training", {}).get("seed", 0), None, task,
                                split_file=args.split, workers=args.workers + 1)
    except (ModelFolderError, DataError) as error:
        log.error("%s", error)
        return 2
    empty = [s for s in EVAL_SPLITS if len(splits[s].labels) == 0]
    if empty:
        log.error("no images of the %s split(s) found in %s", " and ".join(empty), args.data)
        return 2
    device = pick_device(args.device)
    metrics = evaluate(model.to(device), config, splits, args.model, args.out or args.model, device,
                       autocast_dtype(device, None), batch_size=args.batch_size, workers=args.workers)
    test = metrics["splits"]["test"]
    log.info("test: balanced accuracy %.4f, accuracy %.4f, macro F1 %.4f; temperature %.3f",
             test["balanced_accuracy"], test["accuracy"], test["macro_f1"], metrics["temperature"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
