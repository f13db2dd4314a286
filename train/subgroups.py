"""Who the model works for: its answers on the validation and test splits by subgroup — age
band, sex and body site from the data's metadata (Task.groups), and for images of skin the
estimated skin tone (skinlesion/skintone.py: ITA° of the skin outside the lesion's mask).

    python -m train.subgroups --model assets/models/ham10000 --data ../shared/data/ham10000 \\
        [--split runs/x/split.csv] [--out runs/subgroups]

The answers are the folder's as served (`Predictor.analyse_many`: the stored rule, the 90%
sets, the input check). Per split and group: the count; balanced accuracy of the decided
class over the classes with at least MIN_CLASS images in the group; each thresholded class's
sensitivity and specificity at its stored threshold; the 90% set's coverage and mean size;
the input check's pass rate. Each figure has a bootstrap 95% interval (BOOTSTRAP resamples
of the group's images, percentiles). A group with fewer than MIN_IMAGES images, or a
sensitivity with fewer than MIN_POSITIVES positives, gets its count and no figure. The
training split's count of each group goes beside them (the page warns of a rare skin tone).

Writes `subgroups` into the folder's metrics.json, the plot subgroups.png and the card; and
--out/predictions.csv, one row per image, from which every figure can be recomputed
(`columns`, `figures`). `python -m train.evaluate` runs the same (`report`) as its last step.
With the masks, it also measures the serving-time skin-tone estimate (no mask) against the
mask-based one.
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import numpy as np

from skinlesion import Predictor
from skinlesion.batch import BATCH_SIZE
from skinlesion.data import DataError, read_rgb, read_split, split_records
from skinlesion.models.card import CARD_FILE, read_metrics, render_card
from skinlesion.models.card_subgroups import SUBGROUPS_PNG
from skinlesion.models.folder import copy_file, write_atomically, write_json, write_text
from skinlesion.models.spec import read_spec
from skinlesion.skintone import ATTRIBUTE as SKIN_TONE
from skinlesion.skintone import GROUPS, group, skin_ita
from skinlesion.tasks.dermoscopy import AGE_BANDS

from .metrics import BOOTSTRAP, balanced_accuracy, interval
from .splits import folder_arguments

log = logging.getLogger("train.subgroups")
SPLITS = ("val", "test")
MIN_IMAGES = 30      # fewer images in a group: its count, no figure
MIN_POSITIVES = 10   # fewer positives of a class: no sensitivity
MIN_CLASS = 5        # a group's balanced accuracy averages the classes with at least this many images in it
ORDER = [name for _, name in AGE_BANDS] + [name for name, _ in GROUPS]  # groups with an order; "unknown" last


def columns(rows: list[dict], thresholded: list[str]) -> dict[str, np.ndarray]:
    """predictions.csv's rows as arrays (read back from the CSV, the values are strings)."""
    number = lambda key: np.array([int(r[key]) for r in rows])  # noqa: E731
    return {"label": np.array([r["label"] for r in rows]), "decided": np.array([r["decided"] for r in rows]),
            "in_set": number("in_set"), "set_size": number("set_size"), "known": number("known"),
            **{f"flag_{c}": number(f"flag_{c}").astype(bool) for c in thresholded}}


def point_figures(a: dict[str, np.ndarray], thresholded: list[str], classes: list[str]) -> dict[str, float | None]:
    """The figures of one group's arrays (`columns`); balanced accuracy over `classes`."""
    out = {"balanced_accuracy": balanced_accuracy(a["label"], a["decided"], classes),
           "set_coverage": float(a["in_set"].mean()), "set_size": float(a["set_size"].mean()),
           "check_pass_rate": float(a["known"].mean())}
    for code in thresholded:
        flagged, positive = a[f"flag_{code}"], a["label"] == code
        out[f"{code}_sensitivity"] = float(flagged[positive].mean()) if positive.sum() >= MIN_POSITIVES else None
        out[f"{code}_specificity"] = float((~flagged[~positive]).mean()) if (~positive).any() else None
    return out


def figures(rows: list[dict], thresholded: list[str], rng: np.random.Generator) -> dict:
    """One group's figures with bootstrap 95% intervals, or its count alone when too small."""
    if len(rows) < MIN_IMAGES:
        return {"n": len(rows), "too_few": True}
    a = columns(rows, thresholded)
    labels, counts = np.unique(a["label"], return_counts=True)
    classes = [str(c) for c, n in zip(labels, counts) if n >= MIN_CLASS]
    point = point_figures(a, thresholded, classes)
    draws = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(rows), len(rows))
        draws.append(point_figures({k: v[pick] for k, v in a.items()}, thresholded, classes))
    out = {"n": len(rows), "classes": classes, "positives": {c: int((a["label"] == c).sum()) for c in thresholded}}
    for key, value in point.items():
        samples = [d[key] for d in draws if d[key] is not None]
        out[key] = None if value is None else dict(zip(("value", "low", "high"), (value, *interval(samples))))
    return out


def prediction_rows(predictor: Predictor, data: Path, split: dict[str, str]) -> list[dict]:
    """One row per validation and test image: the answer as served, its groups and skin tone."""
    task, thresholds = predictor.task, predictor.rule.thresholds
    records = [r for r in task.load(data) if split.get(r.image_id) in SPLITS]
    groups = task.groups(data)
    rows = []
    for start in range(0, len(records), BATCH_SIZE):
        batch = records[start:start + BATCH_SIZE]
        images = [read_rgb(r.path) for r in batch]
        analyses = predictor.analyse_many([predictor.prepare(image) for image in images])
        for record, image, a in zip(batch, images, analyses):
            row = {"split": split[record.image_id], "image_id": record.image_id, "label": record.label,
                   "decided": a.decided, "known": int(a.known), "in_set": int(record.label in a.prediction_set),
                   "set_size": len(a.prediction_set),
                   **{f"flag_{c}": int(a.probabilities[c] >= t) for c, t in thresholds.items()},
                   **groups.get(record.image_id, {})}
            if task.skin:
                mask = task.annotation(data, record.image_id, image.shape[:2])
                angle, served = skin_ita(image, mask), skin_ita(image)
                row.update({"ita": "" if angle is None else round(angle, 2), SKIN_TONE: group(angle) or "unknown",
                            "ita_served": "" if served is None else round(served, 2)})
            rows.append(row)
        log.info("%d / %d images", len(rows), len(records))
    return rows


def training_counts(predictor: Predictor, data: Path, split: dict[str, str]) -> dict[str, dict[str, int]]:
    """How many training images each group holds (the page warns when an image's skin tone is
    rare there): the metadata's groups, and for skin the mask-based skin tone."""
    task = predictor.task
    records = [r for r in task.load(data) if split.get(r.image_id) == "train"]
    groups = task.groups(data)
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        found = dict(groups.get(record.image_id, {}))
        if task.skin:
            image = read_rgb(record.path)
            found[SKIN_TONE] = group(skin_ita(image, task.annotation(data, record.image_id, image.shape[:2])))
        for attribute, value in found.items():
            counts.setdefault(attribute, {}).setdefault(value or "unknown", 0)
            counts[attribute][value or "unknown"] += 1
    return counts


def ita_agreement(rows: list[dict]) -> dict:
    """The serving estimate (no mask) against the mask-based one: the share in the same group
    and within one group, and the mean absolute difference in degrees."""
    order = [name for name, _ in GROUPS]
    pairs = [(float(r["ita"]), float(r["ita_served"])) for r in rows
             if r.get("ita") not in ("", None) and r.get("ita_served") not in ("", None)]
    steps = [abs(order.index(group(a)) - order.index(group(b))) for a, b in pairs]
    return {"n": len(pairs), "same_group": float(np.mean([s == 0 for s in steps])),
            "within_one_group": float(np.mean([s <= 1 for s in steps])),
            "mean_abs_difference_deg": float(np.mean([abs(a - b) for a, b in pairs]))}


def in_order(value: str) -> tuple:
    """Age bands and skin tones in their order, other groups by name, "unknown" last."""
    return (value == "unknown", ORDER.index(value) if value in ORDER else len(ORDER), value)


def subgroup_figures(rows: list[dict], attributes: list[str], thresholded: list[str]) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for name in SPLITS:
        part = [r for r in rows if r["split"] == name]
        out[name] = {attribute: {value: figures([r for r in part if r[attribute] == value], thresholded, rng)
                                 for value in sorted({r[attribute] for r in part}, key=in_order)}
                     for attribute in attributes}
    return out


def plot(subgroups: dict, attributes: list[str], code: str | None, path: Path) -> None:
    """Balanced accuracy and `code`'s sensitivity (when a class is thresholded) per test group,
    with their 95% intervals."""
    from train.report import _pyplot, _save_figure
    plt = _pyplot()
    test = subgroups["splits"]["test"]
    fig, axes = plt.subplots(1, len(attributes), figsize=(3.2 * len(attributes), 4), sharey=True)
    for ax, attribute in zip(np.atleast_1d(axes), attributes):
        shown = [(g, f) for g, f in test[attribute].items() if not f.get("too_few")]
        for offset, (key, colour, label) in enumerate((("balanced_accuracy", "#2e86c1", "balanced accuracy"),
                                                       (f"{code}_sensitivity", "#b71c1c", f"{code} sensitivity"))):
            drawn = [(i + (offset - 0.5) * 0.3, f[key]) for i, (_, f) in enumerate(shown) if f.get(key)]
            for n, (x, p) in enumerate(drawn):
                ax.errorbar(x, p["value"], yerr=[[p["value"] - p["low"]], [p["high"] - p["value"]]], fmt="o",
                            color=colour, capsize=3, label=label if n == 0 else None)
        ax.set_xticks(range(len(shown)), [f"{g}\n(n={f['n']})" for g, f in shown], rotation=60, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(attribute)
    np.atleast_1d(axes)[0].set_ylabel("test split, 95% bootstrap interval")
    handles = {h.get_label(): h for ax in np.atleast_1d(axes) for h in ax.get_legend_handles_labels()[0]}
    np.atleast_1d(axes)[0].legend(list(handles.values()), list(handles), fontsize=7, loc="lower left")
    _save_figure(fig, path, dpi=100)


def write_predictions(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(path, write)


def report(predictor: Predictor, data: Path, split: dict[str, str], out: Path) -> dict:
    """metrics.json's `subgroups` for a folder's Predictor, its plot (subgroups.png) and
    predictions.csv into `out`. `split`: image id → train / val / test."""
    rows = prediction_rows(predictor, data, split)
    attributes = [a for a in ("age", "sex", "site", SKIN_TONE) if rows and a in rows[0]]
    thresholded = list(predictor.rule.thresholds)
    write_predictions(out / "predictions.csv", rows)
    found = {"attributes": attributes, "min_images": MIN_IMAGES, "min_positives": MIN_POSITIVES,
             "min_class": MIN_CLASS, "bootstrap": BOOTSTRAP, "splits": subgroup_figures(rows, attributes, thresholded),
             "training_counts": training_counts(predictor, data, split)}
    if predictor.task.skin:
        found["ita_agreement"] = ita_agreement([r for r in rows if r["split"] == "test"])
    if attributes:
        test = [r["label"] for r in rows if r["split"] == "test"]
        shown = max(thresholded, key=test.count) if thresholded else None  # the one with most positives: mel
        plot(found, attributes, shown, out / SUBGROUPS_PNG)
    return found


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments("python -m train.subgroups", __doc__)
    p.add_argument("--out", type=Path, default=Path("runs/subgroups"), help="where predictions.csv goes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    predictor = Predictor.from_pretrained(args.model)
    metrics = read_metrics(args.model)
    if metrics is None:
        log.error("%s has no metrics.json: evaluate it first (python -m train.evaluate)", args.model)
        return 2
    try:
        split = (read_split(args.split) if args.split else
                 split_records(predictor.task.load(args.data), predictor.spec.training.get("seed", 0)))
        metrics["subgroups"] = report(predictor, args.data, split, args.out)
    except DataError as error:
        log.error("%s", error)
        return 2
    if (args.out / SUBGROUPS_PNG).is_file():
        copy_file(args.out / SUBGROUPS_PNG, args.model / SUBGROUPS_PNG)
    write_json(args.model / "metrics.json", metrics)
    write_text(args.model / CARD_FILE, render_card(read_spec(args.model), metrics))
    log.info("wrote %s, its card and plot, and %s", args.model / "metrics.json", args.out / "predictions.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
