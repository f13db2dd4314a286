"""What a patient's record (age, sex, body site) adds to a model folder's answer: fit it, measure
it, store it (skinlesion/models/record.py says how the answer uses it).

    python -m train.patient --model DIR --data DIR [--split split.csv]

`python -m train.evaluate` fits it with the image's own rule (`fit_record`, on the logits it
has); this command fits it again alone. A logistic regression per subset of the record's fields
is fitted on the training split's records, those fields alone (any subset may be given; a
training image without a record, another source's, is left out); the weight of its evidence is
the one of WEIGHTS whose rule, fitted on validation, reaches the highest validation balanced
accuracy; that rule (temperature, class bias, recall-first thresholds, conformal sets) is stored with it in
config.json (`patient`). Measured on validation and test, beside the image alone under its own
rule: balanced accuracy with the paired lesion-bootstrap 95% interval of the difference, macro
AUC, each high-risk class's sensitivity and specificity at its threshold, the 90% sets' coverage
(metrics.json's `patient`; the card's table); and the record alone, without the image, under a
rule of its own. Nothing is chosen on test.
"""
from __future__ import annotations

import itertools
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from skinlesion.data import DataError, read_split, split_records
from skinlesion.decision import DecisionRule
from skinlesion.models.card import CARD_FILE, METRICS_FILE, read_metrics, render_card
from skinlesion.models.ensemble import load_ensemble
from skinlesion.models.folder import write_json, write_text
from skinlesion.models.record import CONFIG_KEY, PatientModel, encode, key
from skinlesion.models.spec import ModelFolderError, ModelSpec, read_spec, update_config
from skinlesion.patient import FIELDS, Patient
from train.metrics import (
    balanced_accuracy,
    classification_report,
    grouped_resamples,
    interval,
    macro_auc,
    operating_point,
)

from .device import pick_device
from .splits import EVAL_SPLITS, SplitData, folder_arguments, prepare_splits
from .trust import forward_all

log = logging.getLogger("train.patient")
WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
REGULARISATION = 1.0  # the regression's C: 0.1–3 gave validation balanced accuracies within 0.008 of one another


def fit_regressions(patients: list[Patient], labels: np.ndarray, sites: tuple[str, ...],
                    classes: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """A multinomial regression over `encode`'s columns per non-empty subset of the fields, each
    on those fields alone (the others blanked in every row), and the log class shares."""
    regressions = {}
    for k in range(1, len(FIELDS) + 1):
        for fields in itertools.combinations(FIELDS, k):
            rows = [replace(p, **{f: None for f in FIELDS if f not in fields}) for p in patients]
            fitted = LogisticRegression(C=REGULARISATION, max_iter=3000).fit(encode(rows, sites), labels)
            regressions[key(fields)] = (fitted.coef_, fitted.intercept_)
    return regressions, np.log(np.bincount(labels, minlength=classes) / len(labels))


def figures(rule: DecisionRule, logits: np.ndarray, labels: np.ndarray, codes: list[str],
            high_risk: list[str]) -> tuple[dict, np.ndarray]:
    """One split's figures under `rule`, and the classes it decided."""
    probs = rule.probabilities(logits)
    decided = rule.decide(probs)
    report = classification_report(probs, labels, codes, decided)
    found = {"balanced_accuracy": report["balanced_accuracy"], "macro_auc": macro_auc(probs, labels),
             "set_coverage": float(rule.prediction_set(probs)[np.arange(len(labels)), labels].mean())}
    for code, point in operating_point(probs, labels, codes, rule.thresholds).items():
        if code in high_risk:
            found[code] = {"sensitivity": point.get("sensitivity"), "specificity": point.get("specificity")}
    return found, decided


def fit_record(spec: ModelSpec, known: dict[str, Patient], rule: DecisionRule, splits: dict[str, SplitData],
               logits: dict[str, np.ndarray]) -> tuple[PatientModel, dict] | None:
    """The record model of a network whose served `logits` on validation and test are given
    (`rule`: the image's own, fitted on them), from the training split's records in `known`
    (image id → Patient), and what it measured (metrics.json's `patient`); None when those
    records do not hold every class (or there are none)."""
    codes, high_risk = list(spec.codes), spec.task.high_risk_codes
    train = [(known[r.image_id], label) for r, label in zip(splits["train"].records, splits["train"].labels)
             if r.image_id in known]
    labels = np.array([label for _, label in train], dtype=np.int64)
    if set(labels) != set(range(len(codes))):
        log.warning("no record model: the training split's records do not hold every class")
        return None
    sites = tuple(sorted({p.site for p, _ in train} - {None}))
    regressions, log_prior = fit_regressions([p for p, _ in train], labels, sites, len(codes))
    patients = {s: [known.get(r.image_id, Patient()) for r in splits[s].records] for s in EVAL_SPLITS}
    y = {s: splits[s].labels for s in EVAL_SPLITS}
    draft = PatientModel(sites, regressions, log_prior, 0.0, rule)
    ratio = {s: draft.log_ratio(patients[s]) for s in EVAL_SPLITS}

    def rule_at(weight: float) -> DecisionRule:
        return DecisionRule.fit(logits["val"] + weight * ratio["val"], y["val"], codes, high_risk)[0]

    scores = {w: figures(rule_at(w), logits["val"] + w * ratio["val"], y["val"], codes, high_risk)[0]
              ["balanced_accuracy"] for w in WEIGHTS}
    weight = max(WEIGHTS, key=scores.get)
    model = replace(draft, weight=weight, rule=rule_at(weight))
    log.info("record model on %d training records (%d sites): weight %.2f (validation balanced accuracy by "
             "weight: %s)", len(train), len(sites), weight, ", ".join(f"{w}: {b:.3f}" for w, b in scores.items()))
    measured: dict = {"weight": weight, "weight_scores": {str(w): b for w, b in scores.items()},
                      "training_records": len(train)}
    alone_rule = DecisionRule.fit(ratio["val"] + log_prior, y["val"], codes, high_risk)[0]  # the record, no image
    for s in EVAL_SPLITS:
        alone, alone_decided = figures(rule, logits[s], y[s], codes, high_risk)
        fused, fused_decided = figures(model.rule, model.fuse(logits[s], patients[s]), y[s], codes, high_risk)
        picks = grouped_resamples([r.group for r in splits[s].records])  # paired: both on the same draws
        gains = np.array([balanced_accuracy(y[s][p], fused_decided[p]) - balanced_accuracy(y[s][p], alone_decided[p])
                          for p in picks])
        gain = fused["balanced_accuracy"] - alone["balanced_accuracy"]
        measured[s] = {"image": alone, "with_record": fused, "gain": gain, "gain_interval": interval(gains),
                       "record_alone": figures(alone_rule, ratio[s] + log_prior, y[s], codes, high_risk)[0]}
        log.info("%s: balanced accuracy %.3f alone, %.3f with the record (%+.3f, %+.3f to %+.3f)", s,
                 alone["balanced_accuracy"], fused["balanced_accuracy"], gain, *interval(gains))
    return model, measured


def refit(folder: Path, data: Path, split_file: Path | None, device_name: str = "auto") -> dict:
    """The folder's record model fitted again on its served logits, stored in config.json, and
    measured into metrics.json and the card."""
    net, spec = load_ensemble(folder)
    known = spec.task.patients(data)
    if not known:
        raise DataError(f"task {spec.task.key!r} has no patient records in {data}")
    records = spec.task.load(data)
    split = read_split(split_file) if split_file else split_records(records, spec.training.get("seed", 0))
    splits = prepare_splits(records, spec.input_size, spec.training.get("seed", 0), None, spec.codes, split=split,
                            preprocessing=spec.preprocessing, names=("train", *EVAL_SPLITS))
    device = pick_device(device_name)
    logits = {s: forward_all(net.to(device), spec, splits[s].images, device).logits for s in EVAL_SPLITS}
    fitted = fit_record(spec, known, spec.rule, splits, logits)
    if fitted is None:
        raise DataError(f"the training images' patient records in {data} do not hold every class")
    model, measured = fitted
    update_config(folder, **{CONFIG_KEY: model.to_config()})
    metrics = read_metrics(folder)
    if metrics is not None:
        metrics[CONFIG_KEY] = measured
        write_json(folder / METRICS_FILE, metrics)
        write_text(folder / CARD_FILE, render_card(read_spec(folder), metrics))
    return measured


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments("python -m train.patient", __doc__)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        refit(args.model, args.data, args.split, args.device)
    except (ModelFolderError, DataError) as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
