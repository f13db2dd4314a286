"""Drift a person can see: are the images coming in still like the ones the model was measured on?

    reference = Reference.load(model_folder)       # metrics.json's "monitor" (python -m train.monitor)
    found = report(decisions, reference)           # decisions: ops.record.Decision, one task's
    print(found.text()); plots.figures(found)      # plain text for a terminal or cron; plots (plots.py)

The reference is what the model's decisions look like on data like its own (the validation
split, answered as served): the decided-class mix, the two checks' score distributions over the
validation deciles, the refused and unfamiliar rates, and how far the performance estimate
below (CBPE) was from the truth on the test split. A report compares a window of live
decisions with it:

- the decided-class mix and each check's score distribution by PSI (`psi`, `LEVELS`);
- the refused and unfamiliar rates by a one-sided binomial test against the validation rate
  plus a minimum excess (`rate_statistic`);
- the accuracy estimated from the calibrated probabilities alone (CBPE: `estimate_accuracy`,
  less its over-estimate on validation: `Reference.estimate`), with the estimate's error on the
  test split beside it — live images come without labels;
- latency percentiles, and the rates and estimated accuracy per hour or day.

Only images the model looked at (answered, unfamiliar, refused) enter the statistics; bad
inputs and errors are counted, nothing more. Answers that used the patient's record enter the
checks' scores and the rates (the image alone decides those) but not the decided-class mix or
the estimate: they follow their own rule (`answers_of`). No statistic judges fewer than `MIN_SAMPLE`
images: its value is shown, its level says "not enough data", and it never alarms.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import binomtest

from ..models.card import read_metrics
from .record import ANSWERED, OUTCOMES, REFUSED, UNFAMILIAR, Decision

MONITOR_KEY = "monitor"          # metrics.json's key of the reference
ANSWERS = (ANSWERED, UNFAMILIAR)  # an image with a decided class (unfamiliar: answered with caution)
LOOKED_AT = (ANSWERED, UNFAMILIAR, REFUSED)  # an image the model analysed
CHECKS = {"check_score": "modality check score", "familiarity_score": "familiarity check score"}
DECILES = np.linspace(0.1, 0.9, 9)

OK, WARN, ALARM, NOT_ENOUGH = "ok", "warn", "alarm", "not enough data"
LEVELS = ((0.25, ALARM), (0.10, WARN))  # PSI ≥ 0.25: alarm; ≥ 0.10: warn; else ok (the usual credit-scoring levels)
PSI_EPSILON = 1e-4               # an empty bin's share, so that the logarithm stays finite
# Below this many images a statistic is not judged. PSI of a stable stream is noise of about
# (bins − 1)/n: simulated on the validation deciles (10 bins) and on the HAM10000 decided mix,
# 100 images warn in 34-39% and alarm in 0.7-2.6% of windows; 200 warn in 2.5-3.5% and alarm
# in under 0.1%; 300 warn in under 0.5%.
MIN_SAMPLE = 200
RATE_P = 0.001                   # a rate's one-sided binomial test: significant below this p-value …
RATE_EXCESS = {ALARM: 0.05, WARN: 0.02}  # … and an excess over the reference of at least this much
HOURLY_UP_TO = timedelta(days=2)  # a longer window is shown per day


# -- performance without labels ----------------------------------------------------------------

def answers_of(decisions: Iterable[Decision]) -> list[Decision]:
    """The answers on the image alone: what the reference was measured on. An answer that used
    the patient's record follows its own rule (skinlesion/models/record.py), so its decided class
    and probabilities are not comparable with the reference: counted (`with_record`), not judged."""
    return [d for d in decisions if d.outcome in ANSWERS and d.decided is not None and d.probabilities
            and not d.record]


def estimate_accuracy(decisions: Iterable[Decision]) -> float | None:
    """Expected accuracy of the answered images (answered and unfamiliar) from their calibrated
    probabilities alone: the mean of p(decided class). None without answers.

    Why this works (confidence-based performance estimation, NannyML's CBPE): when the
    probabilities are calibrated, p_i(c) is the chance that image i truly is of class c, so the
    decision for i is right with probability p_i(decided_i), and the expected share right is
    the mean of those — whatever the decision rule (the class bias and thresholds of
    decision.py decide other than the arg-max; the estimate holds all the same). It holds as
    long as the calibration does: under covariate shift (other images, same p(label | image))
    and not under concept shift, nor far outside the training data (hence the familiarity
    check beside it). `Reference.cbpe` records how close it came on the test split."""
    answers = answers_of(decisions)
    if not answers:
        return None
    return float(np.mean([d.probabilities[d.decided] for d in answers]))


# -- the reference -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreBins:
    """One check's score distribution on validation: the raw scores binned by their validation
    deciles (open ends: (-inf, e1], (e1, e2], …, (e9, inf)). Raw scores, not score/threshold
    ratios: the modality check's threshold is a negative logit, which a ratio would turn around."""
    threshold: float | None
    edges: tuple[float, ...]
    shares: tuple[float, ...]
    n: int

    def counts(self, scores: Sequence[float]) -> np.ndarray:
        """How many of `scores` fall in each bin."""
        index = np.searchsorted(np.asarray(self.edges), np.asarray(scores, dtype=float), side="left")
        return np.bincount(index, minlength=len(self.edges) + 1)

    def labels(self) -> list[str]:
        """The bins in words, for a plot."""
        e = [f"{x:.3g}" for x in self.edges]
        return [f"≤{e[0]}", *(f"{a}…{b}" for a, b in zip(e, e[1:])), f">{e[-1]}"]


@dataclass(frozen=True)
class Reference:
    """What the model's decisions look like on data like its own (metrics.json's "monitor",
    written by `python -m train.monitor`)."""
    task: str
    classes: tuple[str, ...]
    decided_mix: dict[str, float]       # validation: share of each decided class among the answered images
    training_mix: dict[str, float]      # the training split's labels
    refused_rate: float                 # validation: shares of the analysed images
    unfamiliar_rate: float
    scores: dict[str, ScoreBins]        # CHECKS' keys → validation bins
    cbpe: dict[str, dict]               # split → {"n", "accuracy": {"estimated", "measured"}, …}
    n: dict[str, int]                   # images per split

    @classmethod
    def from_dict(cls, monitor: Mapping[str, Any]) -> "Reference":
        return cls(monitor["task"], tuple(monitor["classes"]), dict(monitor["decided_mix"]),
                   dict(monitor["training_mix"]), float(monitor["rates"]["refused"]),
                   float(monitor["rates"]["unfamiliar"]),
                   {k: ScoreBins(v["threshold"], tuple(v["edges"]), tuple(v["shares"]), int(v["n"]))
                    for k, v in (monitor.get("scores") or {}).items()},
                   dict(monitor.get("cbpe") or {}), dict(monitor["n"]))

    @classmethod
    def load(cls, folder: str | Path) -> "Reference | None":
        """The reference of a model folder; None when its metrics.json has none."""
        metrics = read_metrics(folder)
        monitor = (metrics or {}).get(MONITOR_KEY)
        return cls.from_dict(monitor) if monitor else None

    def cbpe_offset(self) -> float:
        """How far CBPE's raw estimate ran over the measured accuracy on validation (estimated −
        measured; 0 when not measured): every served estimate subtracts it (`estimate`). Why: one
        temperature, fitted by the likelihood of all classes, leaves p(decided class) somewhat
        over- or under-confident for the classes the class bias decides; validation, the split the
        rule was fitted on, measures by how much, and the test split says whether the corrected
        estimate holds (`cbpe_error`)."""
        found = (self.cbpe.get("val") or {}).get("accuracy")
        return found["estimated"] - found["measured"] if found else 0.0

    def corrected(self, estimated: float) -> float:
        """A raw CBPE estimate less `cbpe_offset`, within 0 … 1."""
        return min(1.0, max(0.0, estimated - self.cbpe_offset()))

    def estimate(self, decisions: Iterable[Decision]) -> float | None:
        """The accuracy estimated for `decisions`, `corrected`."""
        found = estimate_accuracy(decisions)
        return None if found is None else self.corrected(found)

    def cbpe_error(self, split: str = "test") -> float | None:
        """|corrected estimate − measured| accuracy on `split`; None when not measured."""
        found = (self.cbpe.get(split) or {}).get("accuracy")
        return abs(self.corrected(found["estimated"]) - found["measured"]) if found else None


def mix(decided: Iterable[str], classes: Sequence[str]) -> dict[str, float]:
    """Share of each class among `decided` (0 for an absent class)."""
    decided = list(decided)
    return {c: decided.count(c) / len(decided) if decided else 0.0 for c in classes}


# -- the statistics ----------------------------------------------------------------------------

def psi(live: Sequence[float], reference: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two distributions over the same bins (shares):
    Σ (live − ref) · ln(live / ref), an empty bin counting as `epsilon`.

    Why PSI and not a two-sample test (chi-squared, Kolmogorov-Smirnov): a test answers "is
    there any difference at all?", so its p-value alarms on a negligible shift once a window holds
    thousands of images, and never on a large one in a window of a few dozen. PSI is an effect
    size (the symmetrised Kullback-Leibler divergence of the two histograms) with fixed, widely
    used levels (`LEVELS`), so the same shift reads the same at any traffic; its sampling noise
    at small n is handled by `MIN_SAMPLE` instead."""
    a = np.maximum(np.asarray(live, dtype=float), epsilon)
    e = np.maximum(np.asarray(reference, dtype=float), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_level(value: float) -> str:
    return next((level for bound, level in LEVELS if value >= bound), OK)


@dataclass(frozen=True)
class Statistic:
    """One drift statistic of a report, with what a plot of it needs."""
    key: str                         # class_mix, check_score, familiarity_score, refused_rate, unfamiliar_rate
    title: str
    kind: str                        # psi or rate
    n: int                           # the images it judged
    value: float | None              # PSI, or the live rate (shown, not judged, below MIN_SAMPLE); None: no image
    level: str                       # ok, warn, alarm or not enough data (fewer than MIN_SAMPLE images)
    detail: str = ""
    labels: tuple[str, ...] = ()     # the bins (PSI) …
    live: tuple[float, ...] = ()     # … with the live shares …
    reference: tuple[float, ...] = ()  # … and the reference's; a rate: (reference rate,)


def psi_statistic(key: str, title: str, labels: Sequence[str], counts: np.ndarray,
                  reference: Sequence[float], detail: str = "") -> Statistic:
    n = int(np.sum(counts))
    live = tuple(float(x) for x in counts / n) if n else tuple(0.0 for _ in labels)
    value = psi(live, reference) if n else None
    level = NOT_ENOUGH if n < MIN_SAMPLE else psi_level(value)
    return Statistic(key, title, "psi", n, value, level, detail, tuple(labels), live, tuple(reference))


def rate_statistic(key: str, title: str, k: int, n: int, reference: float, reference_n: int) -> Statistic:
    """A rate (refused, unfamiliar) against the validation rate: alarm when a one-sided binomial
    test finds the live rate higher (p < RATE_P) and it exceeds the reference by at least
    RATE_EXCESS[alarm] (5 points); warn at RATE_EXCESS[warn]. The test alone would alarm on a
    fraction of a point once n is large; the excess alone, on chance in a small window. A
    reference rate of 0 (none refused on n validation images) is taken as 1/n: no proof of 0."""
    if not n:
        return Statistic(key, title, "rate", n, None, NOT_ENOUGH, reference=(reference,))
    p0 = max(reference, 1.0 / max(reference_n, 1))
    rate, p_value = k / n, binomtest(k, n, min(p0, 1.0), alternative="greater").pvalue
    level = NOT_ENOUGH if n < MIN_SAMPLE else next(
        (lv for lv in (ALARM, WARN) if p_value < RATE_P and rate - reference >= RATE_EXCESS[lv]), OK)
    detail = f"{k} of {n}; binomial p {'< 0.001' if p_value < 0.001 else f'= {p_value:.3f}'}"
    return Statistic(key, title, "rate", n, rate, level, detail, reference=(reference,))


# -- the report --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimeBin:
    start: datetime
    n: int                           # images analysed (answered, unfamiliar, refused)
    refused: float | None
    unfamiliar: float | None
    accuracy: float | None           # estimated (CBPE)
    latency_ms: tuple[float, float, float] | None  # p50, p95, p99 of the answered images


@dataclass(frozen=True)
class Report:
    task: str
    start: datetime | None
    end: datetime | None
    counts: dict[str, int]           # images per outcome
    statistics: tuple[Statistic, ...]  # none without a reference
    accuracy: float | None           # estimated (CBPE) on the answered images
    cbpe_error: float | None         # the estimate's error on the reference's test split
    latency_ms: dict[str, float]     # p50, p95, p99 of the answered images
    timeline: tuple[TimeBin, ...]
    bin: str                         # hour or day
    reference: Reference | None = field(repr=False)
    live_mix: dict[str, float] = field(default_factory=dict)  # decided classes of the answered images
    with_record: int = 0             # answers that used the patient's record: left out of the mix and CBPE

    @property
    def level(self) -> str:
        """The worst statistic's level (ok, warn or alarm); not-enough-data statistics count as ok."""
        levels = {s.level for s in self.statistics}
        return ALARM if ALARM in levels else WARN if WARN in levels else OK

    @property
    def alarm(self) -> bool:
        return self.level == ALARM

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def _judgement(self) -> str:
        if self.reference is None:
            return "drift not judged: the model folder has no reference (python -m train.monitor writes it)"
        if all(s.level == NOT_ENOUGH for s in self.statistics):
            return f"not enough data: each statistic needs {MIN_SAMPLE} images"
        return ""

    def summary(self) -> str:
        """One line: the level, the images, what is out of line, the estimated accuracy."""
        loud = [f"{s.title} {s.level}" for s in self.statistics if s.level in (WARN, ALARM)]
        parts = [f"{self.level.upper()}: {self.n} images", self._judgement() or (
            ", ".join(loud) if loud else "every statistic like the reference")]
        if self.accuracy is not None:
            parts.append(f"estimated accuracy {self.accuracy:.2f}")
        return "; ".join(parts) + "."

    def text(self) -> str:
        """A short plain-text report (a terminal, a cron mail)."""
        span = "no decisions" if self.start is None else (
            f"{self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M} UTC")
        lines = [f"Drift report, task {self.task}: {span}",
                 f"Level: {self.level.upper()}" + (f" ({self._judgement()})" if self._judgement() else ""),
                 f"Images: {self.n} (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items()) + ")"]
        for s in self.statistics:
            shown = "" if s.value is None else f"PSI {s.value:.3f}" if s.kind == "psi" else (
                f"{s.value:.1%} vs {s.reference[0]:.1%}")
            lines.append(f"  {s.title:<25} {shown:<15} {s.level:<16} n={s.n}" + (f"  ({s.detail})" if s.detail else ""))
        if self.with_record:
            lines.append(f"Answers with the patient's record: {self.with_record} (left out of the decided-class "
                         "mix and the estimated accuracy: the reference is the image alone)")
        if self.accuracy is not None:
            lines.append(f"Estimated accuracy {self.accuracy:.3f} (CBPE: from the model's probabilities alone)")
            test = (self.reference.cbpe.get("test") or {}).get("accuracy") if self.reference else None
            if test:
                lines.append(f"  on the test split it estimated {self.reference.corrected(test['estimated']):.3f}"
                             f" where {test['measured']:.3f} was measured")
        if self.latency_ms:
            lines.append("Latency of answered images: "
                         + ", ".join(f"{k} {v:.0f} ms" for k, v in self.latency_ms.items()))
        return "\n".join(lines)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _latency(decisions: Sequence[Decision]) -> tuple[float, float, float] | None:
    values = [d.latency_ms for d in decisions if d.outcome in ANSWERS]
    return tuple(float(v) for v in np.percentile(values, [50, 95, 99])) if values else None


def timeline(decisions: Sequence[Decision], bin: str | None = None,
             estimate: Callable[[Sequence[Decision]], float | None] = estimate_accuracy
             ) -> tuple[str, tuple[TimeBin, ...]]:
    """The analysed images per hour (a window up to two days) or per day (None: by the span), each
    bin's accuracy by `estimate`."""
    times = [_utc(d.time) for d in decisions]
    if bin is None:
        bin = "hour" if not times or max(times) - min(times) <= HOURLY_UP_TO else "day"
    floor = {"hour": dict(minute=0, second=0, microsecond=0), "day": dict(hour=0, minute=0, second=0, microsecond=0)}
    groups: dict[datetime, list[Decision]] = {}
    for t, d in zip(times, decisions):
        groups.setdefault(t.replace(**floor[bin]), []).append(d)
    bins = []
    for start in sorted(groups):
        part = groups[start]
        outcomes = [d.outcome for d in part]
        n = len(part)
        bins.append(TimeBin(start, n, outcomes.count(REFUSED) / n if n else None,
                            outcomes.count(UNFAMILIAR) / n if n else None, estimate(part), _latency(part)))
    return bin, tuple(bins)


def _scores(looked: Sequence[Decision], key: str, bins: ScoreBins) -> tuple[list[float], int]:
    """The live scores of a check measured against the reference's threshold, and how many
    others were left out (another model's check, or the familiarity check's far limit refusing)."""
    threshold_key = key.replace("score", "threshold")
    same = [d for d in looked if getattr(d, key) is not None and (
        bins.threshold is None or getattr(d, threshold_key) is not None
        and math.isclose(getattr(d, threshold_key), bins.threshold, rel_tol=1e-6, abs_tol=1e-9))]
    return [getattr(d, key) for d in same], sum(getattr(d, key) is not None for d in looked) - len(same)


def drift_statistics(looked: Sequence[Decision], reference: Reference) -> list[Statistic]:
    """The decided-class mix, each check's scores (PSI) and the two rates of the analysed images."""
    answers = answers_of(looked)
    classes = list(reference.classes)
    statistics = [psi_statistic("class_mix", "decided-class mix", classes,
                                np.array([sum(d.decided == c for d in answers) for c in classes]),
                                [reference.decided_mix.get(c, 0.0) for c in classes])]
    for key, bins in reference.scores.items():
        scores, left_out = _scores(looked, key, bins)
        statistics.append(psi_statistic(key, CHECKS.get(key, key), bins.labels(), bins.counts(scores), bins.shares,
                                        f"{left_out} of another threshold left out" if left_out else ""))
    for outcome_, rate in ((REFUSED, reference.refused_rate), (UNFAMILIAR, reference.unfamiliar_rate)):
        statistics.append(rate_statistic(f"{outcome_}_rate", f"{outcome_} rate",
                                         sum(d.outcome == outcome_ for d in looked), len(looked), rate,
                                         reference.n.get("val", 0)))
    return statistics


def report(decisions: Iterable[Decision], reference: Reference | None, bins: str | None = None) -> Report:
    """The drift report of a window of one task's decisions against the model's reference (None:
    a folder without one — counts, CBPE, latency and the timeline, no drift statistics).
    `bins`: hour or day for the timeline (None: hourly up to two days, else daily)."""
    decisions = sorted(decisions, key=lambda d: _utc(d.time))
    tasks = sorted({d.task for d in decisions})
    if reference is not None and set(tasks) - {reference.task}:
        raise ValueError(f"decisions of task(s) {', '.join(set(tasks) - {reference.task})} against the reference "
                         f"of {reference.task!r}")
    counts = {o: sum(d.outcome == o for d in decisions) for o in OUTCOMES}
    looked = [d for d in decisions if d.outcome in LOOKED_AT]
    answers = answers_of(looked)
    classes = list(reference.classes) if reference else sorted({d.decided for d in answers})
    latency = _latency(looked)
    estimate = reference.estimate if reference else estimate_accuracy
    bin_, bins_over_time = timeline(looked, bins, estimate)
    return Report(reference.task if reference else ", ".join(tasks) or "-",
                  _utc(decisions[0].time) if decisions else None, _utc(decisions[-1].time) if decisions else None,
                  counts, tuple(drift_statistics(looked, reference)) if reference else (),
                  estimate(answers), reference.cbpe_error() if reference else None,
                  dict(zip(("p50", "p95", "p99"), latency)) if latency else {}, bins_over_time, bin_, reference,
                  mix((d.decided for d in answers), classes),
                  sum(d.record and d.outcome in ANSWERS for d in looked))


def parse_since(text: str) -> timedelta:
    """"7d", "12h", "30m" (also "2w", "1.5h") → a timedelta; ValueError otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([wdhm])\s*", text or "")
    if not found:
        raise ValueError(f"{text!r}: give a number and a unit, as 7d, 12h or 30m")
    unit = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}[found.group(2)]
    return timedelta(**{unit: float(found.group(1))})
