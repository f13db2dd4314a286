"""Evaluate a model folder on the validation and test splits, calibrate it, write reports.

    python -m train.evaluate --model DIR --data DIR [--split split.csv] [--out DIR]

Fits the decision rule on validation (skinlesion/decision.py: temperature, the class bias of
the decided class, the recall-first thresholds of the malignant and pre-malignant classes or
the manual-review threshold) and stores it in the model folder's config.json, so the app
applies the same rule. Writes metrics.json, report.md, predictions.csv and the plots to --out
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
from PIL import Image

from skinlesion.classes import DEFAULT_TASK
from skinlesion.data import DataError
from skinlesion.decision import DecisionRule, softmax
from skinlesion.metrics import (classification_report, expected_calibration_error, operating_point,
                                plot_confusion_matrix, review_report)
from skinlesion.explain import energy_inside, peak_inside
from skinlesion.inference import Predictor
from skinlesion.model import CARD_FILE, ModelFolderError, create_model, load_model_folder, update_config
from skinlesion.tasks import get_task
from skinlesion.transforms import eval_transform

from .engine import SplitData, autocast_dtype, make_loader, pick_device, predict_logits, prepare_splits
from .report import CONFUSION_PNG, CURVE_PNG, plot_history, render_card, render_report

log = logging.getLogger("train.evaluate")
EVAL_SPLITS = ("val", "test")
PREDICTIONS_CSV = "predictions.csv"


def write_predictions(path: Path, splits: dict[str, SplitData], probs: dict[str, np.ndarray],
                      decided: dict[str, np.ndarray], codes: list[str]) -> None:
    """Per image calibrated probabilities, for error analysis and for checking a model later."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "split", "label", "predicted", *(f"p_{c}" for c in codes)])
        for s in EVAL_SPLITS:
            for record, row, k in zip(splits[s].records, probs[s], decided[s]):
                writer.writerow([record.image_id, s, record.label, codes[int(k)],
                                 *(f"{p:.6f}" for p in row)])


def explanation_quality(model: torch.nn.Module, config: dict, data: SplitData, data_root: Path) -> dict | None:
    """Where Grad-CAM looks, against the task's annotations (HAM10000 lesion masks, NEU defect
    boxes): the mean share of heat-map energy inside, and how often the peak is inside — for
    this model and for the same architecture with random weights (a map that does not depend
    on what was learned would score the same)."""
    task = get_task(config.get("task", DEFAULT_TASK))
    masks = {}
    for record in data.records:
        with Image.open(record.path) as original:
            shape = (original.height, original.width)
        mask = task.annotation(data_root, record.image_id, shape)
        if mask is not None and mask.any():
            masks[record.image_id] = (record.path, mask)
    if not masks:
        return None
    random_model = create_model(config["num_classes"], architecture=config["architecture"],
                                image_size=config["pretrained_cfg"]["input_size"][-1])
    torch.nn.init.normal_(random_model.get_classifier().weight, std=0.01)  # a zero head has no gradient
    result = {"annotation": task.annotation_name, "n": len(masks),
              "annotated_area": float(np.mean([m.mean() for _, m in masks.values()]))}
    device = next(model.parameters()).device
    for name, m in (("trained", model), ("random_weights", random_model)):
        predictor = Predictor(m, config, device=device)
        energy, peak = [], []
        for path, mask in masks.values():
            heatmap = predictor.explain(path).heatmap
            share = energy_inside(heatmap, mask)
            if share is not None:
                energy.append(share)
            peak.append(peak_inside(heatmap, mask))
        result[name] = {"energy_inside": float(np.mean(energy)) if energy else None,
                        "peak_inside": float(np.mean(peak))}
    return result


def evaluate(model: torch.nn.Module, config: dict, splits: dict[str, SplitData], model_dir: Path,
             out: Path, device: torch.device, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, batch_size: int = 128, workers: int = 0,
             extra: dict | None = None, data_root: Path | None = None) -> dict:
    """Calibrate on validation, measure validation and test, store calibration in the config."""
    codes = config["label_names"]
    size = config["pretrained_cfg"]["input_size"][-1]
    logits = {s: predict_logits(model, make_loader(splits[s], eval_transform(size), batch_size,
                                                   workers, shuffle=False),
                                device, amp_dtype, channels_last) for s in EVAL_SPLITS}
    labels = {s: splits[s].labels for s in EVAL_SPLITS}

    task = config.get("task", DEFAULT_TASK)
    rule, bias_strength = DecisionRule.fit(logits["val"], labels["val"], codes, task)
    probs = {s: rule.probabilities(logits[s]) for s in EVAL_SPLITS}
    decided = {s: rule.decide(probs[s]) for s in EVAL_SPLITS}

    metrics = {"task": task, "labels": codes, **rule.to_config(), "bias_strength": bias_strength,
               "training": config.get("training", {}), "splits": {}}
    for s in EVAL_SPLITS:
        argmax = classification_report(probs[s], labels[s], codes)
        metrics["splits"][s] = {
            **classification_report(probs[s], labels[s], codes, decided[s]),
            "argmax": {k: argmax[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
            "ece_before_temperature": expected_calibration_error(softmax(logits[s]), labels[s]),
            "ece_after_temperature": expected_calibration_error(probs[s], labels[s]),
            "operating_point": operating_point(probs[s], labels[s], codes, rule.thresholds),
            **({"review": review_report(probs[s], labels[s], decided[s], rule.review_threshold)}
               if rule.review_threshold is not None else {}),
        }
    if data_root is not None:
        metrics["explanations"] = explanation_quality(model, config, splits["test"], Path(data_root))
    metrics.update(extra or {})

    out.mkdir(parents=True, exist_ok=True)
    config = update_config(model_dir, **rule.to_config())
    plot_confusion_matrix(metrics["splits"]["test"]["confusion_matrix"], codes, out / CONFUSION_PNG,
                          f"test split (n={metrics['splits']['test']['n']})")
    if metrics.get("history"):
        plot_history(metrics["history"], out / CURVE_PNG)
    write_predictions(out / PREDICTIONS_CSV, splits, probs, decided, codes)
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
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--split", type=Path, help="split.csv of the training run (default: remake it)")
    p.add_argument("--out", type=Path, help="where reports go (default: the model folder)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-explanations", action="store_true",
                   help="skip the Grad-CAM localisation check against the task's annotations")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        model, config = load_model_folder(args.model)
        task = config.get("task", DEFAULT_TASK)
        records = get_task(task).load(args.data)
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
                       autocast_dtype(device, None), batch_size=args.batch_size, workers=args.workers,
                       data_root=None if args.no_explanations else args.data)
    test = metrics["splits"]["test"]
    log.info("test: balanced accuracy %.4f, accuracy %.4f, macro F1 %.4f; temperature %.3f",
             test["balanced_accuracy"], test["accuracy"], test["macro_f1"], metrics["temperature"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
