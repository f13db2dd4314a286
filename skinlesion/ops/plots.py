"""The drift report's plots (drift.py's `Report`), for the Monitor tab: matplotlib figures of
their own (not pyplot's: nothing global to close), drawn by Agg."""
from __future__ import annotations

from datetime import timedelta
from typing import Sequence

import numpy as np

from .drift import ALARM, NOT_ENOUGH, OK, WARN, Report, Statistic

SIZE = (6, 3.2)                  # inches, one plot; the scores' figure stacks one per check
LIVE, REFERENCE_COLOUR, TRAINING = "#2e86c1", "#aab7b8", "#7d6608"
LEVEL_COLOUR = {OK: "#1e8449", WARN: "#d68910", ALARM: "#b71c1c", NOT_ENOUGH: "#7f8c8d"}


def _figure(rows: int = 1):
    """A figure of its own (not pyplot's: nothing global to close), drawn by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(SIZE[0], SIZE[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]


def _title(s: Statistic | None, title: str) -> tuple[str, str]:
    """A plot's title with its statistic's value and level, and the level's colour."""
    if s is None:
        return f"{title} (no reference)", "black"
    value = "" if s.value is None else f"PSI {s.value:.2f}, " if s.kind == "psi" else f"{s.value:.1%}, "
    return f"{s.title}: {value}{s.level} (n={s.n})", LEVEL_COLOUR[s.level]


def _bars(ax, title: tuple[str, str], labels: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]]):
    """Grouped bars of shares, one group per label, one bar per series."""
    rotate = 45 if sum(len(label) for label in labels) > 50 else 0  # long class names, decile ranges
    width = 0.8 / len(series)
    x = np.arange(len(labels))
    for i, (name, values, colour) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=colour)
    ax.set_xticks(x, labels, rotation=rotate, fontsize=7 if rotate else 8, ha="right" if rotate else "center")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.3 * max((max(v, default=0) for _, v, _ in series), default=0) or 1)  # room for the legend
    ax.set_title(title[0], fontsize=9, color=title[1])
    ax.legend(fontsize=7, ncols=len(series), loc="upper center")


def _class_mix(report_: Report):
    fig, (ax,) = _figure()
    reference = report_.reference
    labels = list(report_.live_mix)
    series = [("live", list(report_.live_mix.values()), LIVE)]
    if reference is not None:
        series += [("validation", [reference.decided_mix.get(c, 0.0) for c in labels], REFERENCE_COLOUR),
                   ("training labels", [reference.training_mix.get(c, 0.0) for c in labels], TRAINING)]
    statistic = next((s for s in report_.statistics if s.key == "class_mix"), None)
    _bars(ax, _title(statistic, "decided-class mix"), labels, series)
    return fig


def _scores_figure(report_: Report):
    """One plot per check: the live scores against validation's, over validation's deciles."""
    checks = list(report_.reference.scores.items()) if report_.reference else []
    fig, axes = _figure(max(1, len(checks)))
    by_key = {s.key: s for s in report_.statistics}
    for ax, (key, bins) in zip(axes, checks):
        s = by_key[key]
        _bars(ax, _title(s, s.title), s.labels, [("live", s.live, LIVE), ("validation", s.reference,
                                                                          REFERENCE_COLOUR)])
        ax.set_xlabel(f"validation deciles of the score; the check's threshold {bins.threshold:.3g}", fontsize=8)
    if not checks:
        axes[0].text(0.5, 0.5, "no reference: no score distribution to compare", ha="center", va="center")
        axes[0].set_axis_off()
    return fig


def _over_time(report_: Report, series: Sequence[tuple[str, list, str]], ylabel: str, title: str,
               references: Sequence[tuple[float, str]] = (), limits: tuple = (0, None)):
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    fig, (ax,) = _figure()
    starts = [b.start for b in report_.timeline]
    for name, values, colour in series:
        ax.plot(starts, [np.nan if v is None else v for v in values], marker="o", markersize=3, label=name,
                color=colour)
    for value, colour in references:
        ax.axhline(value, color=colour, linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*limits)
    ax.set_title(f"{title} (per {report_.bin}" + ("; dashed: validation)" if references else ")"), fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    if len(starts) == 1:  # one bin: a bin's width either side, not the locator's years
        width = timedelta(hours=1) if report_.bin == "hour" else timedelta(days=1)
        ax.set_xlim(starts[0] - width, starts[0] + width)
    if starts:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return fig


def figures(report_: Report) -> dict:
    """The report's plots, name → matplotlib Figure (Agg): class_mix, scores (one plot per check),
    rates, accuracy and latency over time. The caller saves or shows them (fig.savefig)."""
    reference, bins = report_.reference, report_.timeline
    rates = [(reference.refused_rate, LEVEL_COLOUR[ALARM]), (reference.unfamiliar_rate, LEVEL_COLOUR[WARN])] \
        if reference else []
    val = ((reference.cbpe.get("val") or {}).get("accuracy") or {}).get("measured") if reference else None
    latency = [b.latency_ms or (None, None, None) for b in bins]
    return {
        "class_mix": _class_mix(report_),
        "scores": _scores_figure(report_),
        "rates": _over_time(report_, [("refused", [b.refused for b in bins], LEVEL_COLOUR[ALARM]),
                                      ("unfamiliar", [b.unfamiliar for b in bins], LEVEL_COLOUR[WARN])],
                            "share of analysed images", "refused and unfamiliar", rates),
        "accuracy": _over_time(report_, [("estimated accuracy (CBPE)", [b.accuracy for b in bins], LIVE)],
                               "accuracy", "estimated accuracy", [(val, REFERENCE_COLOUR)] if val else [],
                               limits=(0, 1.02)),
        "latency": _over_time(report_, [(f"p{q}", [v[i] for v in latency], colour) for i, (q, colour) in
                                        enumerate(((50, LIVE), (95, LEVEL_COLOUR[WARN]), (99, LEVEL_COLOUR[ALARM])))],
                              "ms", "latency of answered images"),
    }
