"""A run's report.md and plots; the model cards and the results tables of the project's docs.

Every table comes from metrics.json through skinlesion/models/card.py. After evaluating a bundled
model (or changing the renderer), re-render the bundled models' cards and the tables of
docs/results.md, docs/levers.md, docs/explanations.md and docs/trust.md (the blocks between
`<!-- KIND: TASK -->` and `<!-- /KIND -->`, KIND being results, patient, explanations, trust or checks, and
levers: the table `python -m train.ablation` wrote to results/ablation/levers-NAME.json; resolution:
the one `python -m train.resolution` wrote to results/ablation/resolution-NAME.json; summary: a row
for each of those tables in the doc it names, `<!-- summary: levers.md -->`) with:

    python -m train.report
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from skinlesion.models.card import (
    CARD_FILE,
    explanation_tables,
    f,
    headline_table,
    patient_table,
    read_metrics,
    render_card,
    render_tables,
    table,
    trust_tables,
)
from skinlesion.models.card_checks import served_table
from skinlesion.models.folder import write_atomically, write_text
from skinlesion.models.spec import read_spec
from skinlesion.tasks import TASKS

CURVE_PNG = "validation_curve.png"
DOCS = [Path(__file__).resolve().parents[1] / "docs" / name
        for name in ("results.md", "levers.md", "explanations.md", "trust.md")]
BLOCK_KINDS = "results|patient|explanations|trust|checks|levers|resolution|summary"
RESULTS_BLOCK = re.compile(rf"(<!-- ({BLOCK_KINDS}): (\S+) -->\n)(.*?)(<!-- /\2 -->)", re.S)
LEVERS = Path(__file__).resolve().parents[1] / "results" / "ablation"  # train/ablation.py, train/resolution.py


def render_history(history: list[dict]) -> str:
    keys = [k for k in history[0] if k.startswith("val_balanced_accuracy_")]
    rows = [[h["epoch"], f(h["train_loss"], 4), f"{h['lr']:.2e}", f"{h['images_per_s']:.0f}",
             *(f(h[k], 4) for k in keys)] for h in history]
    return ("\n### Training (per epoch)\n"
            + table(["epoch", "train loss", "last lr", "images/s",
                     *(f"val bal. acc. ({k.rsplit('_', 1)[1]})" for k in keys)], rows)
            + f"\n![validation curve]({CURVE_PNG})\n")


def render_report(metrics: dict) -> str:
    t = metrics.get("training", {})
    head = (f"# Evaluation report — {metrics['task']}\n\n"
            f"Best epoch {t.get('best_epoch', '?')} ({t.get('weights', '?')} weights), selected on validation "
            f"balanced accuracy; the test split was not used for any choice.\n\n")
    return head + render_tables(metrics) + (render_history(metrics["history"]) if metrics.get("history") else "")


def with_results(text: str) -> str:
    """`text` with each block replaced from that task's bundled model's metrics.json: `results`
    by the headline table, `explanations` by the explanation tables, `trust` by the trust
    tables, `checks` by the table of sets answered, refused and unfamiliar, `patient` by the
    table of the answer with the patient's record; `levers` from the
    ablation's rows, `resolution` from the answer sizes' rows, `summary` from the tables of the doc
    it names (`lever_sections`)."""
    # each renderer takes the metrics and the model folder's path from docs/ (for its figures)
    render = {"results": lambda m, _: headline_table(m), "patient": lambda m, _: patient_table(m),
              "explanations": lambda m, _: explanation_tables(m).lstrip("\n"),
              "trust": lambda m, folder: trust_tables(m, folder).lstrip("\n"),
              "checks": lambda m, _: served_table(m)}

    def block(match: re.Match) -> str:
        if match[2] == "levers":
            from .ablation import render as levers
            rows = LEVERS / f"levers-{match[3]}.json"
            body = levers(json.loads(rows.read_text())) if rows.is_file() else f"(no {rows.name})\n"
            return match[1] + body + match[5]
        if match[2] == "summary":
            from .ablation import render_summary
            return match[1] + render_summary(lever_sections(DOCS[0].parent / match[3])) + match[5]
        if match[2] == "resolution":
            from .resolution import render as sizes
            path = LEVERS / f"resolution-{match[3]}.json"
            record = json.loads(path.read_text()) if path.is_file() else None
            return match[1] + (sizes(record["rows"], record["chosen"]) if record else f"(no {path.name})\n") + match[5]
        folder = TASKS[match[3]].model_folder
        metrics = read_metrics(folder)
        at = Path(os.path.relpath(folder, DOCS[0].parent)).as_posix() + "/"
        return match[1] + (render[match[2]](metrics, at) if metrics else "(no metrics.json)\n") + match[5]
    return RESULTS_BLOCK.sub(block, text)


def lever_sections(doc: Path) -> list[tuple[str, str, list[dict], str]]:
    """Each levers and resolution table of `doc` whose rows are in results/ablation/, in order: the
    `## ` heading it sits under (less "(measured, not shipped)"), a link to that heading, its rows and
    its reference row's name (the row `against` names, the first, or the chosen answer size)."""
    sections, heading = [], ""
    for m in re.finditer(r"^## (.+)$|^<!-- (levers|resolution): (\S+) -->$", doc.read_text(), re.M):
        path = LEVERS / f"{m[2]}-{m[3]}.json"
        if m[1] or not path.is_file():
            heading = m[1] or heading
            continue
        record = json.loads(path.read_text())
        if m[2] == "resolution":
            rows = record["rows"]
            reference = next(r["lever"] for r in rows if r["size"] == record["chosen"])
        else:
            rows, reference = record, record[0].get("against", record[0]["lever"])
        sections.append((heading.removesuffix(" (measured, not shipped)"), f"{doc.name}#{anchor(heading)}", rows,
                         reference))
    return sections


def anchor(heading: str) -> str:
    """The link anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path, dpi: int) -> None:
    """A finished figure as a PNG, replaced whole (it may be in a model folder), then freed."""
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    _pyplot().close(fig)


def plot_history(history: list[dict], path) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss")
    for key in (k for k in history[0] if k.startswith("val_balanced_accuracy_")):
        acc_ax.plot(epochs, [h[key] for h in history], marker="o", label=key.rsplit("_", 1)[1])
    acc_ax.set(xlabel="epoch", ylabel="validation balanced accuracy")
    acc_ax.legend()
    _save_figure(fig, path, dpi=110)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], codes: Sequence[str], path, title: str) -> None:
    plt = _pyplot()
    m = np.asarray(matrix)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(codes), 0.8 + 0.8 * len(codes)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(m):
        ax.text(j, i, f"{count}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(codes)), codes)
    ax.set_yticks(range(len(codes)), codes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save_figure(fig, path, dpi=120)


def plot_reliability(bins: dict[str, list[dict]], path, title: str) -> None:
    """The reliability diagram before and after temperature scaling, with each bin's count."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    for ax, (name, rows) in zip(axes, bins.items()):
        used = [r for r in rows if r["count"]]
        centres = [(r["low"] + r["high"]) / 2 for r in used]
        ax.bar(centres, [r["accuracy"] for r in used], width=0.09, color="#2e86c1", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        for x, r in zip(centres, used):
            ax.text(x, r["accuracy"] + 0.02, str(r["count"]), ha="center", fontsize=7)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.1)
        ax.set_xlabel("top probability")
        ax.set_title(name.replace("_", " "))
    axes[0].set_ylabel("accuracy of the top class (bar labels: images)")
    axes[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Reliability, {title}")
    _save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=Path, nargs="*", default=DOCS, help="Markdown files whose tables to re-render")
    p.add_argument("--models", type=Path, nargs="*", help="model folders whose card to re-render "
                   "(default: the bundled ones)")
    args = p.parse_args(argv)
    for folder in args.models if args.models is not None else [t.model_folder for t in TASKS.values()]:
        metrics = read_metrics(folder)
        if metrics is not None:
            _write_if_changed(folder / CARD_FILE, render_card(read_spec(folder), metrics))
    for doc in args.docs:
        _write_if_changed(doc, with_results(doc.read_text()))
    return 0


def _write_if_changed(path: Path, text: str) -> None:
    changed = not path.is_file() or path.read_text() != text
    if changed:
        write_text(path, text)
    print(f"{path}: {'updated' if changed else 'already up to date'}")


if __name__ == "__main__":
    sys.exit(main())
