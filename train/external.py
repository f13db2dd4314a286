"""A model folder measured per source: the task's validation and test splits, and each external
source's held-out images (train/sources.py), with the folder's own decision rule.

    python -m train.external --model runs/x/model --data ../shared/data/ham10000 \\
        --extra-data ../shared/data/dermoscopy_external --split runs/x/split.csv [--out external.json]
    python -m train.external compare a.json b.json …   # several models' figures in one table

Why apart from train.evaluate: the external sources hold only some of the task's classes (ISIC
2017 and PH2: nv, mel, bkl), so their figures are over the classes present, and they must be
reported per source, never pooled with the task's test split. Per source: balanced accuracy of
the decided class over the classes present, melanoma (every thresholded class) sensitivity at
the stored threshold, and macro AUC over the classes with positives and negatives.

The held-out images are the split file's `held_out` rows when it has them (what a run trained
with --extra-data kept out), else the sources' own rule (train/sources.py): so a model that never
saw the sources is measured on exactly the images another run held out. A folder without a
fitted rule (an ensemble member, a run stopped before its evaluation) gets one fitted on the
validation split here, as train.evaluate would, and the output says so.
"""
from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from skinlesion.data import DataError, read_split
from skinlesion.decision import DecisionRule
from skinlesion.models.ensemble import load_ensemble
from skinlesion.models.folder import write_json
from skinlesion.models.spec import ModelFolderError
from skinlesion.tasks.verdicts import UNKNOWN
from train.metrics import classification_report, operating_point

from .device import pick_device
from .sources import HELD_OUT, external_records
from .splits import SplitData, folder_arguments, prepare_splits
from .trust import forward_all

log = logging.getLogger("train.external")
TASK_SPLITS = ("val", "test")


def source_figures(rule: DecisionRule, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Balanced accuracy over the classes present, macro AUC where defined, each thresholded
    class's sensitivity and specificity at its stored threshold, and the class counts."""
    probs = rule.probabilities(logits)
    with warnings.catch_warnings():  # a source without some classes: balanced accuracy over those present
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        report = classification_report(probs, labels, rule.codes, rule.decide(probs))
    return {"n": report["n"], "balanced_accuracy": report["balanced_accuracy"], "macro_auc": report["macro_auc"],
            "accuracy": report["accuracy"],
            "operating_point": operating_point(probs, labels, rule.codes, rule.thresholds),
            "classes": {c: int((labels == i).sum()) for i, c in enumerate(rule.codes) if (labels == i).any()}}


def by_source(held: SplitData, source: dict[str, str]) -> dict[str, SplitData]:
    """Held-out images split by their source (image id → source name), in source-name order."""
    parts = {}
    for name in sorted(set(source.values())):
        rows = [i for i, r in enumerate(held.records) if source.get(r.image_id) == name]
        if rows:
            parts[name] = SplitData([held.records[i] for i in rows], [held.images[i] for i in rows], held.labels[rows])
    return parts


def measure(model_dir: Path, data: Path, extra_data: Path, split: Path | None, device: torch.device,
            batch_size: int = 64, workers: int = 2) -> dict:
    """The figures of `model_dir` on the task's validation and test splits and each source's held-out images."""
    net, spec = load_ensemble(model_dir)
    net.to(device)
    steps = spec.preprocessing
    seed = spec.training.get("seed", 0)
    task_records = spec.task.load(data)
    parts = prepare_splits(task_records, spec.input_size, seed, None, spec.codes, split=split, workers=workers,
                           preprocessing=steps, names=TASK_SPLITS)
    records, own_split, source = external_records(extra_data, spec.task, {r.image_id for r in task_records})
    chosen = read_split(split) if split else own_split
    if split and not any(s == HELD_OUT for s in chosen.values()):
        chosen = own_split  # a split of the task's data alone: the sources' own rule says what is held out
    held = prepare_splits(records, spec.input_size, seed, None, spec.codes, split=chosen, workers=workers,
                          preprocessing=steps, names=(HELD_OUT,))[HELD_OUT]
    parts.update(by_source(held, source))
    logits = {name: forward_all(net, spec, part.images, device, batch_size=batch_size).logits
              for name, part in parts.items()}
    stored = "temperature" in spec.config
    rule = spec.rule if stored else DecisionRule.fit(logits["val"], parts["val"].labels, spec.codes,
                                                     spec.task.high_risk_codes)[0]
    return {"model": str(model_dir), "preprocessing": steps, "rule": "stored" if stored else "fitted on val here",
            "thresholds": rule.thresholds,
            "sources": {name: source_figures(rule, logits[name], parts[name].labels) for name in parts}}


def served_figures(rule: DecisionRule, checks, task, forward, labels: np.ndarray) -> dict:
    """A set of images as the app answers it (train/trust.Checks: the modality and familiarity
    checks; `forward`: train/trust.forward_all's logits and features): the shares answered,
    refused and answered-but-unfamiliar; over the answered images, the decided class's balanced
    accuracy over the classes present (all, familiar and unfamiliar apart), each high-risk
    class's share referred (of its images: answered, and the verdict refers) and the 90% sets'
    coverage."""
    codes = rule.codes
    probs = rule.probabilities(forward.logits)
    decided, members = rule.decide(probs), rule.prediction_set(probs)
    known, familiar = checks.answered(forward.features), checks.familiar(forward.features)
    levels = np.array([task.verdict(dict(zip(codes, map(float, p))), codes[k], [c for c, m in zip(codes, row) if m],
                                    rule.thresholds, task, None if f else "unfamiliar").level if kn else UNKNOWN
                       for p, k, row, kn, f in zip(probs, decided, members, known, familiar)])

    def balanced(mask: np.ndarray) -> float | None:
        if not mask.any():
            return None
        with warnings.catch_warnings():  # the classes present only
            warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
            return float(balanced_accuracy_score(labels[mask], decided[mask]))

    unfamiliar = known & ~familiar
    return {"n": int(len(labels)), "answered": float(known.mean()), "refused": float(1 - known.mean()),
            "unfamiliar": float(unfamiliar.mean()), "n_unfamiliar": int(unfamiliar.sum()),
            "balanced_accuracy": balanced(known), "balanced_accuracy_familiar": balanced(known & familiar),
            "balanced_accuracy_unfamiliar": balanced(unfamiliar),
            "referred": {c: float((known & (levels == "refer"))[labels == i].mean())
                         for i, c in enumerate(codes) if c in task.high_risk_codes and (labels == i).any()},
            "set_coverage": float(members[known, labels[known]].mean()) if known.any() else None,
            "classes": {c: int((labels == i).sum()) for i, c in enumerate(codes) if (labels == i).any()}}


def table(results: dict) -> str:
    """A markdown table: one row per source, a sensitivity / specificity column per thresholded
    (high-risk) class of the rule."""
    risky = list(results["thresholds"])
    lines = ["| source | n | balanced accuracy | macro AUC | "
             + " | ".join(f"{c} sensitivity / specificity" for c in risky) + " |",
             "|---|---|---|---|" + "---|" * len(risky)]
    number = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, f in results["sources"].items():
        points = [f["operating_point"].get(c, {}) for c in risky]
        cells = [number(f["balanced_accuracy"]), number(f["macro_auc"]),
                 *(f"{number(q.get('sensitivity'))} / {number(q.get('specificity'))}" for q in points)]
        lines.append(f"| {name} | {f['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(paths: list[Path]) -> str:
    """Several models' figures (--out JSON files, each named by its file's stem) in one markdown
    table: a row per source and model, the sources in the first file's order."""
    named = {Path(path).stem: json.loads(Path(path).read_text()) for path in paths}
    first = next(iter(named.values()))
    risky = list(first["thresholds"])
    lines = ["| source | model | n | balanced accuracy | macro AUC | "
             + " | ".join(f"{c} sensitivity / specificity" for c in risky) + " |",
             "|---|---|---|---|---|" + "---|" * len(risky)]
    for source in first["sources"]:
        for name, results in named.items():
            row = table({**results, "thresholds": dict.fromkeys(risky),
                         "sources": {source: results["sources"][source]}}).splitlines()[-1]
            lines.append(row.replace(f"| {source} |", f"| {source} | {name} |", 1))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        print(comparison([Path(a) for a in argv[1:]]))
        return 0
    p = folder_arguments("python -m train.external", __doc__)
    p.add_argument("--extra-data", type=Path, required=True, help="the external sources (train/sources.py)")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        results = measure(args.model, args.data, args.extra_data, args.split, pick_device(args.device),
                          args.batch_size, args.workers)
    except (ModelFolderError, DataError) as error:
        log.error("%s", error)
        return 2
    if args.out:
        write_json(args.out, results)
    print(f"{args.model} (rule {results['rule']}; preprocessing {results['preprocessing']})")
    print(table(results))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
