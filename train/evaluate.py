"""Evaluate a model folder on the validation and test splits, calibrate it, write reports.

    python -m train.evaluate --model DIR --data DIR [--split split.csv] [--extra-data DIR] [--out DIR]

Fits the decision rule on validation (skinlesion/decision.py: temperature, the class bias of
the decided class, the recall-first thresholds of the malignant and pre-malignant classes, the
conformal quantiles of the 90% prediction sets) and the two input checks (train/trust.py: the
modality check and the familiarity check, on the training and validation splits; measured on
test, shifted test and the development families of train/outliers.py) and stores them in the
model folder (config.json, reference.safetensors), so the app applies the same rule. Each set is
then measured as the app answers it (train/external.served_figures: answered, refused,
unfamiliar, balanced accuracy, referred, set coverage): the test split, (strongly) shifted
copies of it and, with --extra-data (the sources a run trained on: their training rows join the
training split, as in the run), each source's held-out images; what unfamiliar images cost
goes into config.json (`unfamiliar`) for the caution an unfamiliar image's answer gives.
Writes metrics.json, report.md, predictions.csv and the plots to --out
(default: the model folder); metrics.json, the confusion matrix and the model card (README.md,
rendered from metrics.json) go into the model folder; last, the folder as served is measured
by subgroup (train/subgroups.py: metrics.json's `subgroups`, subgroups.png). Without --split, the split is made
again from the data with the seed recorded at training time — the whole validation and test
splits, also for a model trained on --max-samples.
"""
from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skinlesion import Predictor
from skinlesion.data import DataError, read_split, split_records
from skinlesion.decision import DecisionRule, softmax
from skinlesion.models.card import CARD_FILE, CONFUSION_PNG, METRICS_FILE, RELIABILITY_PNG, render_card
from skinlesion.models.card_subgroups import SUBGROUPS_PNG
from skinlesion.models.ensemble import Ensemble, load_ensemble
from skinlesion.models.folder import copy_file, write_atomically, write_json, write_text
from skinlesion.models.record import CONFIG_KEY as PATIENT_KEY
from skinlesion.models.spec import ModelFolderError, ModelSpec, read_spec, update_config
from skinlesion.tasks.verdicts import unsure
from train.metrics import (
    classification_report,
    expected_calibration_error,
    operating_point,
    reliability,
    set_report,
    unsure_report,
)

from . import subgroups
from .device import autocast_dtype, pick_device
from .explanations import explanation_report
from .external import by_source, served_figures
from .gallery import make_gallery
from .patient import fit_record
from .report import CURVE_PNG, plot_confusion_matrix, plot_history, plot_reliability, render_report
from .sources import HELD_OUT, from_source, with_sources
from .splits import EVAL_SPLITS, SplitData, folder_arguments, prepare_splits
from .trust import Checks, Forward, fit_check, forward_all, save_reference

log = logging.getLogger("train.evaluate")
PREDICTIONS_CSV = "predictions.csv"


@dataclass
class EvalOptions:
    """How to run the evaluation; none of it changes the figures."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True
    batch_size: int = 32
    data: Path | None = None       # the task's data folder: annotations, confirmations; its parent holds the
                                   # other tasks' data folders (the input check's development families)
    explanations: bool = True      # measure the explanations (minutes on a CPU; needs `data`)
    outliers: int = 300            # images per development family of the input check


def write_predictions(path: Path, splits: dict[str, SplitData], probs: dict[str, np.ndarray],
                      rule: DecisionRule) -> None:
    """Per image the decided class, the 90% prediction set and the calibrated probabilities,
    for error analysis and for checking a model later."""
    codes = rule.codes

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "split", "label", "predicted", "prediction_set", *(f"p_{c}" for c in codes)])
            for s in EVAL_SPLITS:
                for record, row, k, members in zip(splits[s].records, probs[s], rule.decide(probs[s]),
                                                   rule.prediction_set(probs[s])):
                    writer.writerow([record.image_id, s, record.label, codes[int(k)],
                                     " ".join(c for c, inside in zip(codes, members) if inside),
                                     *(f"{p:.6f}" for p in row)])
    write_atomically(path, write)


def split_metrics(rule: DecisionRule, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Everything measured on one split with the rule, plus the plain arg-max for comparison."""
    probs = rule.probabilities(logits)
    decided = rule.decide(probs)
    argmax = classification_report(probs, labels, rule.codes)
    members = rule.prediction_set(probs)
    unsure_rows = np.array([unsure([c for c, m in zip(rule.codes, row) if m], rule.codes[k])
                            for row, k in zip(members, decided)], dtype=bool)
    return {
        **classification_report(probs, labels, rule.codes, decided),
        "argmax": {k: argmax[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        "ece_before_temperature": expected_calibration_error(softmax(logits), labels),
        "ece_after_temperature": expected_calibration_error(probs, labels),
        "reliability": {"before_temperature": reliability(softmax(logits), labels),
                        "after_temperature": reliability(probs, labels)},
        "operating_point": operating_point(probs, labels, rule.codes, rule.thresholds),
        "prediction_sets": set_report(members, labels, rule.codes),
        "unsure": unsure_report(unsure_rows, labels, decided),
    }


def evaluate(model: torch.nn.Module | Ensemble, spec: ModelSpec, splits: dict[str, SplitData], model_dir: Path,
             out: Path, options: EvalOptions, extra: dict | None = None,
             held_out: dict[str, SplitData] | None = None) -> dict:
    """Fit the decision rule on what `model` (a model, or an Ensemble: skinlesion/models/ensemble.py)
    outputs and the input checks on its primary model's features, measure validation, test and
    the `held_out` images of other sources (by source), store the rule and the checks in the
    model folder and write the reports; returns the metrics (metrics.json)."""
    run = dict(device=options.device, amp_dtype=options.amp_dtype, channels_last=options.channels_last,
               batch_size=options.batch_size)
    net = model if isinstance(model, Ensemble) else Ensemble([model])
    # The training split serves the input check and the gallery: the primary model's features
    # alone (the same as in the whole network's pass, which records only the primary's plain view).
    forwards = {s: forward_all(net if s in EVAL_SPLITS else net.primary, spec, splits[s].images, **run)
                for s in ("train", *EVAL_SPLITS)}
    logits = {s: forwards[s].logits for s in EVAL_SPLITS}
    rule, bias_strength = DecisionRule.fit(logits["val"], splits["val"].labels, spec.codes,
                                              spec.task.high_risk_codes)
    others = options.data.resolve().parent if options.data is not None else None  # the other tasks' data
    own = np.array([not from_source(r) for r in splits["train"].records])  # the gallery's: the task's own data
    checks, gallery, check_report, shifted = fit_check(net, spec, splits, forwards, **run, data_root=others,
                                                      outliers=options.outliers, seed=spec.training.get("seed", 0),
                                                      own=own)
    sources = served_sets(net, rule, checks, spec, forwards["test"], shifted, splits["test"].labels, held_out or {},
                          run)
    metrics = {"task": spec.task.key, "labels": list(spec.codes), **rule.to_config(), "bias_strength": bias_strength,
               "training": spec.training, "answered_by": net.describe(spec.input_size), **check_report,
               "sources": sources, "unfamiliar": unfamiliar_cost(sources),
               "splits": {s: split_metrics(rule, logits[s], splits[s].labels) for s in EVAL_SPLITS}}
    if options.explanations and options.data is not None:
        metrics["explanations"] = explanation_report(net.primary, spec, splits["test"].records, Path(options.data))
    metrics.update(extra or {})

    out.mkdir(parents=True, exist_ok=True)
    save_reference(model_dir, checks, splits["train"], gallery)
    probs = {s: rule.probabilities(logits[s]) for s in EVAL_SPLITS}
    metrics["similar_cases"] = make_gallery(model_dir, spec, splits, forwards["test"].features["pooled"],
                                            rule.decide(probs["test"]), options.data)
    # what a patient's record adds (train/patient.py), fitted on the same logits under this rule
    record = fit_record(spec, spec.task.patients(options.data) if options.data is not None else {}, rule,
                        splits, logits)
    if record:
        metrics[PATIENT_KEY] = record[1]
    update_config(model_dir, **rule.to_config(), input_check=checks.familiarity.to_config(),
                  modality_check=checks.modality.to_config(), unfamiliar=metrics["unfamiliar"],
                  **{PATIENT_KEY: record[0].to_config() if record else None})
    write_predictions(out / PREDICTIONS_CSV, splits, probs, rule)
    if options.data is not None:  # the folder as served, by age, sex, site and skin tone (train/subgroups.py)
        split = {r.image_id: name for name, part in splits.items() for r in part.records}
        predictor = Predictor.from_pretrained(model_dir, device=options.device)
        metrics["subgroups"] = subgroups.report(predictor, Path(options.data), split, out / "subgroups")
    write_reports(metrics, read_spec(model_dir), model_dir, out)
    return metrics


def served_sets(net: Ensemble, rule: DecisionRule, checks: Checks, spec: ModelSpec, test: Forward,
                shifted: tuple[str, Forward], labels: np.ndarray, held_out: dict[str, SplitData],
                run: dict) -> dict[str, dict]:
    """Each set as the app answers it (train/external.served_figures): the test split, its
    (strongly) shifted copies, and each source's held-out images."""
    found = {"test": served_figures(rule, checks, spec.task, test, labels),
             shifted[0]: served_figures(rule, checks, spec.task, shifted[1], labels)}
    for name, part in held_out.items():
        found[name] = served_figures(rule, checks, spec.task, forward_all(net, spec, part.images, **run), part.labels)
    return found


def unfamiliar_cost(sources: dict[str, dict]) -> dict:
    """config.json's `unfamiliar`: the balanced accuracy of the answered images the familiarity
    check found unfamiliar — on the other sources' held-out images when there are any, else on
    (strongly) shifted copies of the test split — beside the familiar test images', in words
    (`measured`, what an unfamiliar image's caution quotes) and in numbers."""
    copies = {k: v for k, v in sources.items() if k.endswith("shifted test")}
    others = {k: v for k, v in sources.items() if k != "test" and k not in copies}
    where, found = ("held-out images of other sources", others) if others else (
        f"{next(iter(copies)).replace('test', 'copies of test images')}", copies)
    n = sum(v["n_unfamiliar"] for v in found.values())
    weighted = [(v["balanced_accuracy_unfamiliar"], v["n_unfamiliar"]) for v in found.values()
                if v["balanced_accuracy_unfamiliar"] is not None]
    unfamiliar = sum(a * k for a, k in weighted) / max(1, sum(k for _, k in weighted)) if weighted else None
    familiar = sources["test"]["balanced_accuracy_familiar"]
    measured = (f"balanced accuracy {unfamiliar:.2f} on {n} unfamiliar {where}, {familiar:.2f} on familiar test "
                f"images" if unfamiliar is not None and familiar is not None else None)
    return {"measured": measured, "balanced_accuracy": unfamiliar, "n": n, "on": where,
            "balanced_accuracy_familiar_test": familiar}


def write_reports(metrics: dict, spec: ModelSpec, model_dir: Path, out: Path) -> None:
    """metrics.json, report.md and plots to `out`; metrics.json, the confusion matrix and the
    card (rendered from them) into the model folder, which carries its evidence when it ships.
    Each file is replaced whole (skinlesion/models/folder.py): the app may be reading the folder."""
    test = metrics["splits"]["test"]
    plot_confusion_matrix(test["confusion_matrix"], spec.codes, out / CONFUSION_PNG, f"test split (n={test['n']})")
    plot_reliability(test["reliability"], out / RELIABILITY_PNG, f"test split (n={test['n']})")
    if metrics.get("history"):
        plot_history(metrics["history"], out / CURVE_PNG)
    write_json(out / METRICS_FILE, metrics)
    write_text(out / "report.md", render_report(metrics))
    if out.resolve() != model_dir.resolve():
        for name in (METRICS_FILE, CONFUSION_PNG, RELIABILITY_PNG):
            copy_file(out / name, model_dir / name)
    if (out / "subgroups" / SUBGROUPS_PNG).is_file():
        copy_file(out / "subgroups" / SUBGROUPS_PNG, model_dir / SUBGROUPS_PNG)
    write_text(model_dir / CARD_FILE, render_card(spec, metrics))


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments("python -m train.evaluate", __doc__)
    p.add_argument("--out", type=Path, help="where reports go (default: the model folder)")
    p.add_argument("--batch-size", type=int, default=32, help="images per pass (32 suits a CPU; more on a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--outliers", type=int, default=300,
                   help="images per development family the input check is measured on")
    p.add_argument("--extra-data", type=Path,
                   help="the other sources the model trained on (train/sources.py): their training rows join "
                        "the training split, their held-out images are measured by source")
    p.add_argument("--no-explanations", action="store_true",
                   help="skip the explanation checks (localisation, faithfulness, sanity; minutes on a CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    try:
        model, spec = load_ensemble(args.model)
        seed = spec.training.get("seed", 0)
        records = spec.task.load(args.data)
        split = read_split(args.split) if args.split else split_records(records, seed)
        records, split, source = with_sources(records, args.extra_data, spec.task, split)
        decoded = dict(image_size=spec.input_size, seed=seed, max_samples=None, codes=spec.codes, split=split,
                       workers=args.workers + 1, preprocessing=spec.preprocessing)
        splits = prepare_splits(records, **decoded)
        held_out = by_source(prepare_splits(records, **decoded, names=(HELD_OUT,))[HELD_OUT], source)
    except (ModelFolderError, DataError) as error:
        log.error("%s", error)
        return 2
    empty = [s for s in EVAL_SPLITS if len(splits[s].labels) == 0]
    if empty:
        log.error("no images of the %s split(s) found in %s", " and ".join(empty), args.data)
        return 2
    device = pick_device(args.device)
    options = EvalOptions(device, autocast_dtype(device, None), batch_size=args.batch_size,
                          data=args.data, explanations=not args.no_explanations, outliers=args.outliers)
    metrics = evaluate(model.to(device), spec, splits, args.model, args.out or args.model, options,
                       held_out=held_out)
    test = metrics["splits"]["test"]
    log.info("test: balanced accuracy %.4f, accuracy %.4f, macro F1 %.4f; temperature %.3f",
             test["balanced_accuracy"], test["accuracy"], test["macro_f1"], metrics["temperature"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
