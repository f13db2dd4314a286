"""The model's levers, measured on one split: each model alone, every combination of them, each with
and without mirror views (test-time augmentation), every row with its own decision rule fitted
on validation — as `python -m train.ensemble` + `python -m train.evaluate` would ship it.

    python -m train.ablation assets/models/ham10000 runs/lite0-224/model --data ../shared/data/ham10000 \\
        --out results/ablation/levers.md

The first folder is the primary (the one that explains). Every model's outputs on every view are
computed once (train/ensemble.member_outputs) and combined as skinlesion/models/ensemble.py combines
them (each model's own temperature fitted alone on validation, the probabilities averaged); the
rule (skinlesion/decision.py: temperature, class bias, recall-first thresholds) is fitted on
validation. Columns: validation balanced accuracy (what a choice may look at); on test, balanced
accuracy, macro AUC, each high-risk class's sensitivity and specificity at its stored threshold
(the task's: Task.high_risk_codes), ECE; the
network's forward pass p50 on one image as the row would ship (its first model the primary, at that
model's input size; ms, this machine, no input check or heat-map); the
training minutes of the models (from each run's metrics.json history when the folder is
runs/<name>/model). Nothing is chosen on test. Each row's difference from the first row (or from
the row `--against` names, e.g. what ships) comes with its 95% interval (`with_intervals`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from skinlesion.decision import DecisionRule, fit_temperature
from skinlesion.models.ensemble import VIEWS, Ensemble, load_ensemble
from skinlesion.models.markdown import f, table
from train.metrics import (
    balanced_accuracy,
    classification_report,
    expected_calibration_error,
    grouped_resamples,
    interval,
    macro_auc,
    operating_point,
)

from .device import pick_device
from .ensemble import member_outputs, tempered_average
from .splits import prepare_splits

log = logging.getLogger("train.ablation")
VIEWS_MEASURED = ("plain", "hflip", "vflip")  # --views' default: each row on its first 1, 2, 3 views
TIMED_RUNS = 30


def training_minutes(folder: Path) -> float | None:
    """The epochs' minutes of the run runs/<name>/model came from: its metrics.json history, or
    its checkpoint's when the run's final evaluation was not waited for."""
    run = folder.parent
    if folder.name != "model":
        return None
    if (run / "metrics.json").is_file():
        history = json.loads((run / "metrics.json").read_text()).get("history", [])
    elif (run / "checkpoint.pt").is_file():
        history = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True).get("history", [])
    else:
        return None
    seconds = [h.get("seconds") for h in history]
    return sum(seconds) / 60 if seconds and None not in seconds else None


@torch.inference_mode()
def forward_p50(net: Ensemble, size: int) -> float:
    """Median milliseconds of one image's pass through `net` on the CPU, after a warm-up."""
    net = net.to("cpu", memory_format=torch.channels_last).eval()
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    for _ in range(5):
        net(x)
    times = []
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def lever(name: str, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray], codes: list[str],
          high_risk: list[str], temperatures: list[float]) -> tuple[dict, dict[str, np.ndarray]]:
    """One row: the given passes (models × views), each at its model's temperature, averaged;
    and the classes its rule decides on each split (for `with_intervals`)."""
    logits = {s: tempered_average(outputs[s], temperatures) for s in labels}
    rule, _ = DecisionRule.fit(logits["val"], labels["val"], codes, high_risk)
    row: dict = {"lever": name}
    calibrated = {s: rule.probabilities(logits[s]) for s in labels}
    decided = {s: rule.decide(calibrated[s]) for s in labels}
    for s in labels:
        row[f"{s}_ba"] = classification_report(calibrated[s], labels[s], codes, decided[s])["balanced_accuracy"]
    probs = calibrated["test"]
    row.update(test_auc=macro_auc(probs, labels["test"]), test_ece=expected_calibration_error(probs, labels["test"]))
    for code, point in operating_point(probs, labels["test"], codes, rule.thresholds).items():
        row.update({f"{code}_sensitivity": point.get("sensitivity"), f"{code}_specificity": point.get("specificity")})
    return row, decided


def with_intervals(rows: list[dict], decided: list[dict[str, np.ndarray]], labels: dict[str, np.ndarray],
                   groups: dict[str, list[str]], against: int = 0) -> list[dict]:
    """Each row's balanced accuracy with its 95% interval, and its difference from the row
    `against` (the first, unless another is named: what ships, say) with the difference's 95%
    interval: a paired bootstrap that draws the split's lesions (metrics.grouped_resamples; every
    row on the same draws). The rules stay as fitted on validation: the intervals hold the splits'
    sampling noise, which decides whether one lever really beats another."""
    for s in labels:
        picks = grouped_resamples(groups[s])  # drawn once: every row on the same draws
        draws = np.array([[balanced_accuracy(labels[s][pick], d[s][pick]) for pick in picks] for d in decided])
        for row, own in zip(rows, draws):
            row[f"{s}_ba_interval"] = interval(own)
            row[f"{s}_ba_delta"] = row[f"{s}_ba"] - rows[against][f"{s}_ba"]
            row[f"{s}_ba_delta_interval"] = interval(own - draws[against])
    if against:
        for row in rows:
            row["against"] = rows[against]["lever"]  # render's header names it
    return rows


def shipped_as(group: list[int], view_set: tuple[str, ...], nets: list, temperatures: list[float]
               ) -> tuple[Ensemble, int]:
    """The group's models as a folder with its first model as the primary would answer (its input
    size; the others resized and renormalised from it), and that size: what the forward p50 times,
    and (all the models, every view) what the rows' passes are taken from."""
    first = nets[group[0]][1]
    specs = [nets[m][1] for m in group]
    return Ensemble([nets[m][0].primary for m in group], [temperatures[m] for m in group],
                    [None] + [s.input_size for s in specs[1:]], view_set,
                    [None] + [((first.mean, first.std), (s.mean, s.std)) for s in specs[1:]]), first.input_size


def measure(folders: list[Path], data: Path, device: torch.device, names: list[str] | None = None,
            against: str | None = None, views: Sequence[str] = VIEWS_MEASURED) -> list[dict]:
    view_sets = [tuple(views[:k]) for k in range(1, len(views) + 1)]  # each row on the first k views
    nets = [load_ensemble(folder) for folder in folders]
    spec = nets[0][1]
    models = [net.primary for net, _ in nets]
    if any((s.codes, s.preprocessing) != (spec.codes, spec.preprocessing) for _, s in nets):
        raise SystemExit("python -m train.ablation: the folders' classes or preprocessing differ")
    names = list(names or [f"{s.architecture.removeprefix('tf_').removeprefix('efficientnet_')}-{s.input_size}"
                           for _, s in nets])  # b0-192
    combinations = [list(g) for k in range(1, len(models) + 1) for g in itertools.combinations(range(len(models)), k)]
    plan = [(group, view_set, " + ".join(names[m] for m in group)
             + ("" if len(view_set) == 1 else " · " + "+".join(view_set[1:])))
            for group in combinations for view_set in view_sets]  # a row per models × views
    levers = [label for *_, label in plan]
    if against is not None and against not in levers:
        raise SystemExit(f"python -m train.ablation: --against {against!r} is none of the rows: {', '.join(levers)}")
    splits = prepare_splits(spec.task.load(data), spec.input_size, spec.training.get("seed", 0), None, spec.codes,
                            preprocessing=spec.preprocessing)
    labels = {s: splits[s].labels for s in ("val", "test")}
    groups = {s: [r.group for r in splits[s].records] for s in labels}
    everything, _ = shipped_as(list(range(len(models))), tuple(views), nets, [1.0] * len(models))
    everything = everything.to(device)
    raw = {s: member_outputs(everything, spec, splits[s].images, device) for s in labels}  # model-major
    temperatures = [fit_temperature(raw["val"][m * len(views)], labels["val"]) for m in range(len(models))]
    minutes = [training_minutes(folder) for folder in folders]
    rows, decided = [], []
    for group, view_set, label in plan:
        passes = [m * len(views) + views.index(v) for m in group for v in view_set]
        log.info("%s", label)
        row, answers = lever(label, {s: raw[s][passes] for s in labels}, labels, list(spec.codes),
                             spec.task.high_risk_codes, [temperatures[p // len(views)] for p in passes])
        decided.append(answers)
        row["p50_ms"] = forward_p50(*shipped_as(group, view_set, nets, temperatures))
        known = [minutes[m] for m in group]
        row["train_minutes"] = sum(known) if None not in known else None
        rows.append(row)
    return with_intervals(rows, decided, labels, groups, levers.index(against) if against else 0)


def difference(row: dict, split: str) -> str:
    """'+0.004 (-0.021 to +0.030)': the row's balanced accuracy minus the reference row's, 95% interval."""
    low, high = row[f"{split}_ba_delta_interval"]
    return f"{row[f'{split}_ba_delta']:+.3f} ({low:+.3f} to {high:+.3f})"


def render(rows: list[dict]) -> str:
    """The rows as a Markdown table: a sensitivity / specificity column per high-risk class the
    rows hold; with the bootstrap intervals (`with_intervals`), each split's difference from the
    reference row (the first unless `against` names another) and the test figure's interval.
    (Tables written before the intervals render without.)"""
    risky = [k.removesuffix("_sensitivity") for k in (rows[0] if rows else {}) if k.endswith("_sensitivity")]
    paired = bool(rows) and "val_ba_delta" in rows[0]
    reference = rows[0].get("against", "first row") if rows else "first row"
    header = ["lever", "val BA", *([f"val BA − {reference} (95%)"] if paired else []),
              "test BA (95%)" if paired else "test BA", *([f"test BA − {reference} (95%)"] if paired else []),
              "test macro AUC", *(f"{c} sensitivity / specificity" for c in risky),
              "test ECE", "forward p50 (ms)", "training (min)"]

    def cells(r: dict) -> list[str]:
        if not paired:
            return [f(r["val_ba"]), f(r["test_ba"])]
        low, high = r["test_ba_interval"]
        own = r["lever"] == rows[0].get("against", rows[0]["lever"])  # the reference row itself
        return [f(r["val_ba"]), "—" if own else difference(r, "val"), f"{f(r['test_ba'])} ({f(low)}–{f(high)})",
                "—" if own else difference(r, "test")]
    return table(header, [[r["lever"], *cells(r), f(r["test_auc"]),
                           *(f"{f(r[f'{c}_sensitivity'])} / {f(r[f'{c}_specificity'])}" for c in risky),
                           f(r["test_ece"]), f"{r['p50_ms']:.0f}",
                           "n/a" if r["train_minutes"] is None else f"{r['train_minutes']:.0f}"]
                          for r in rows])


def unpaired(row: dict) -> dict:
    """The row without its difference from a reference row, which holds only within one data folder's draws."""
    return {k: v for k, v in row.items() if not k.endswith(("_ba_delta", "_ba_delta_interval")) and k != "against"}


def networks(lever: str) -> str:
    """The networks a row runs, its name before the views: 'student + soup · hflip+vflip' -> 'student + soup'."""
    return lever.split(" · ")[0]


def lever_row(rows: list[dict], reference: str) -> dict:
    """A table's own lever at one network's cost: its best row on validation among those that run one
    network other than the reference row's (any views, with or without the record); where every row
    runs the reference's network (views, answer sizes), its best row other than the reference (of a
    table of one row, that row)."""
    others = [r for r in rows if r["lever"] != reference]
    own = [r for r in others if " + " not in networks(r["lever"]) and networks(r["lever"]) != networks(reference)]
    return max(own or others or rows, key=lambda r: r["val_ba"])


def render_summary(sections: list[tuple[str, str, list[dict], str]]) -> str:
    """One row per table: (its title, a link to it, its rows, its reference row's name) -> the lever's
    row (`lever_row`) beside the reference's validation figure."""
    def cells(title: str, link: str, rows: list[dict], reference: str) -> list[str]:
        r = lever_row(rows, reference)
        ref = next(x for x in rows if x["lever"] == reference)
        delta = ("—" if r is ref else difference(r, "val") if "val_ba_delta" in r
                 else f"{r['val_ba'] - ref['val_ba']:+.3f}")
        mel = f"{f(r['mel_sensitivity'])} / {f(r['mel_specificity'])}" if "mel_sensitivity" in r else "n/a"
        return [f"[{title}]({link})", r["lever"], f(r["val_ba"]), f"{reference}: {f(ref['val_ba'])}", delta,
                f(r["test_ba"]), f(r["test_auc"]), mel, f"{r['p50_ms']:.0f}",
                "n/a" if r.get("train_minutes") is None else f"{r['train_minutes']:.0f}"]
    return table(["lever", "its row at one network's cost", "val BA", "reference: val BA", "val BA − reference (95%)",
                  "test BA", "test macro AUC", "mel sensitivity / specificity", "forward p50 (ms)", "training (min)"],
                 [cells(*s) for s in sections])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="model folders, the primary first (one split and task)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--names", nargs="+", help="a row name per folder (default: architecture-size)")
    p.add_argument("--out", type=Path, help="Markdown table to write (and .json beside it)")
    p.add_argument("--against", metavar="LEVER", help="the row every difference is taken from, by its name "
                   "(default: the first; e.g. 'student · hflip+vflip' for what ships)")
    p.add_argument("--views", nargs="+", default=list(VIEWS_MEASURED), choices=list(VIEWS),
                   help="the views, starting with plain: each model and combination on its first 1, 2, … of them")
    p.add_argument("--append", action="store_true", help="add the rows to --out's table instead of replacing it: "
                   "models measured each on its own data folder (train.downscale's copies) in one table, whose "
                   "rows then carry no paired differences (those need one data folder)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.append and not args.out:
        p.error("--append needs --out")
    if args.names and len(args.names) != len(args.models):
        p.error("--names: one name per model folder")
    if args.views[0] != "plain" or len(set(args.views)) != len(args.views):
        p.error("--views must start with plain and name each view once")
    rows = measure(args.models, args.data, pick_device(args.device), args.names, args.against, tuple(args.views))
    if args.append:
        table_rows = args.out.with_suffix(".json")
        rows = [unpaired(r) for r in (json.loads(table_rows.read_text()) if table_rows.is_file() else []) + rows]
    rendered = render(rows)
    print(rendered)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(rendered)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
