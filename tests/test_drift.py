"""The drift monitor (skinlesion/ops/drift.py) on synthetic decisions: quiet on data like the
reference, loud on each kind of shift, silent below the minimum sample; CBPE on calibrated data."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from skinlesion.ops.drift import (
    ALARM,
    MIN_SAMPLE,
    NOT_ENOUGH,
    OK,
    WARN,
    Reference,
    estimate_accuracy,
    parse_since,
    psi,
    report,
)
from skinlesion.ops.plots import figures
from skinlesion.ops.record import ANSWERED, BAD_INPUT, REFUSED, UNFAMILIAR, Decision
from train.monitor import estimate_balanced_accuracy, reference_from_decisions

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b", "c")
MIX = (0.6, 0.3, 0.1)
START = datetime(2025, 3, 1, tzinfo=timezone.utc)


def decisions(n: int, seed: int, mix=MIX, shift: float = 0.0, refused: float = 0.01, unfamiliar: float = 0.03,
              span: timedelta = timedelta(days=3)) -> list[Decision]:
    """Decisions of a synthetic model: decided classes drawn from `mix`, the modality check's
    score from N(-8 + shift, 1) (threshold -3), the familiarity score from N(0, 0.5) (threshold 2)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        outcome = rng.choice([REFUSED, UNFAMILIAR, ANSWERED], p=[refused, unfamiliar, 1 - refused - unfamiliar])
        k = rng.choice(len(CLASSES), p=mix)
        p = rng.dirichlet(np.where(np.arange(len(CLASSES)) == k, 8.0, 1.0))
        p[[k, p.argmax()]] = p[[p.argmax(), k]]  # the decided class is the most probable
        out.append(Decision("toy", "m", "classify", outcome, float(rng.gamma(4, 6)),
                            dict(zip(CLASSES, map(float, p))), None if outcome == REFUSED else CLASSES[k],
                            level="clear", check_score=float(rng.normal(-8 + shift, 1)), check_threshold=-3.0,
                            familiarity_score=float(rng.normal(0, 0.5)), familiarity_threshold=2.0,
                            time=START + span * rng.random()))
    return out


@pytest.fixture(scope="module")
def reference() -> Reference:
    val, test = decisions(1500, seed=1), decisions(1500, seed=2)
    rng = np.random.default_rng(0)
    labels = [rng.choice(CLASSES, p=list(d.probabilities.values())) for d in test]  # calibrated
    monitor = reference_from_decisions("toy", CLASSES, val, test, labels, ["a"] * 70 + ["b"] * 20 + ["c"] * 10)
    return Reference.from_dict(json.loads(json.dumps(monitor)))  # as stored in metrics.json


def levels(found) -> dict[str, str]:
    return {s.key: s.level for s in found.statistics}


def test_the_reference_holds_the_validation_figures(reference):
    assert reference.decided_mix["a"] == pytest.approx(0.6, abs=0.04)
    assert sum(reference.training_mix.values()) == pytest.approx(1)
    assert reference.refused_rate == pytest.approx(0.01, abs=0.01)
    bins = reference.scores["check_score"]
    assert len(bins.edges) == 9 and len(bins.shares) == 10 and sum(bins.shares) == pytest.approx(1)
    assert bins.threshold == -3.0 and bins.edges[4] == pytest.approx(-8, abs=0.15)


def test_decisions_like_the_reference_raise_no_alarm(reference):
    found = report(decisions(1000, seed=3), reference)
    assert not found.alarm and found.level == OK, found.text()
    assert all(s.value is not None for s in found.statistics)


def test_a_shifted_class_mix_alarms(reference):
    found = report(decisions(1000, seed=4, mix=(0.2, 0.3, 0.5)), reference)
    assert levels(found)["class_mix"] == ALARM and found.alarm
    assert levels(found)["check_score"] == OK


def test_answers_with_the_patients_record_are_counted_not_judged(reference):
    """Fused with a record, an answer follows its own rule: a stream where the record moves every
    answer's class is not class-mix drift, and CBPE reads the image-alone answers only."""
    plain = decisions(1000, seed=3)
    fused = [replace(d, decided="c", probabilities={"a": 0.05, "b": 0.05, "c": 0.9}, record=True)
             for d in decisions(600, seed=9)]
    found = report(plain + fused, reference)
    alone = report(plain, reference)
    assert levels(found)["class_mix"] == OK and found.live_mix == alone.live_mix
    assert found.accuracy == pytest.approx(alone.accuracy)
    assert found.with_record == sum(d.outcome in (ANSWERED, UNFAMILIAR) for d in fused) > 0
    assert f"Answers with the patient's record: {found.with_record}" in found.text()
    assert found.n == 1600  # every image counted; the checks' scores read them all
    assert next(s for s in found.statistics if s.key == "check_score").n == 1600
    assert levels(report([replace(d, record=False) for d in fused] + plain, reference))["class_mix"] == ALARM


def test_shifted_scores_alarm(reference):
    found = report(decisions(1000, seed=5, shift=1.5), reference)
    assert levels(found)["check_score"] == ALARM and found.alarm
    assert levels(found)["class_mix"] == OK and levels(found)["familiarity_score"] == OK


def test_many_refusals_alarm(reference):
    found = report(decisions(1000, seed=6, refused=0.15), reference)
    assert levels(found)["refused_rate"] == ALARM and found.alarm
    assert "ALARM" in found.text()


def test_a_small_significant_excess_only_warns(reference):
    """Thousands of images make 3 points significant; it takes 5 points to alarm."""
    found = report(decisions(4000, seed=7, refused=0.04), reference)
    assert levels(found)["refused_rate"] == WARN and not found.alarm


def test_below_the_minimum_sample_nothing_alarms(reference):
    found = report(decisions(MIN_SAMPLE - 1, seed=8, mix=(0.1, 0.1, 0.8), shift=3, refused=0.5), reference)
    assert not found.alarm and found.level == OK
    assert set(levels(found).values()) == {NOT_ENOUGH}
    assert "not enough data" in found.text()


def test_bad_inputs_count_but_are_not_judged(reference):
    live = decisions(300, seed=9) + [Decision("toy", "m", "classify", BAD_INPUT, 1.0, error="not an image",
                                              time=START) for _ in range(50)]
    found = report(live, reference)
    assert found.counts[BAD_INPUT] == 50 and found.n == 350
    assert {s.n for s in found.statistics if s.kind == "rate"} == {300}
    with pytest.raises(ValueError, match="other"):
        report([Decision("other", "m", "classify", BAD_INPUT, 1.0)], reference)


def test_timeline_and_latency(reference):
    found = report(decisions(500, seed=10, span=timedelta(days=5)), reference)
    assert found.bin == "day" and 5 <= len(found.timeline) <= 6
    assert found.latency_ms["p50"] <= found.latency_ms["p95"] <= found.latency_ms["p99"]
    assert report(decisions(500, seed=10, span=timedelta(hours=20)), reference).bin == "hour"


def test_cbpe_on_calibrated_data():
    """Labels drawn from the probabilities themselves: calibrated by construction. The decision
    rule favours the rare classes (not the arg-max), as the shipped rule does."""
    rng = np.random.default_rng(0)
    n, classes = 5000, ("w", "x", "y", "z")
    logits = rng.normal(0, 1.5, (n, 4)) + np.log([0.55, 0.25, 0.15, 0.05])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    decided = (np.log(p) - 0.5 * np.log([0.55, 0.25, 0.15, 0.05])).argmax(1)
    live = [Decision("t", "m", "classify", ANSWERED, 1.0, dict(zip(classes, map(float, row))), classes[k])
            for row, k in zip(p, decided)]
    recall = [np.mean(decided[labels == c] == c) for c in range(4)]
    assert estimate_accuracy(live) == pytest.approx(np.mean(decided == labels), abs=0.03)
    assert estimate_balanced_accuracy(live) == pytest.approx(np.mean(recall), abs=0.03)
    assert estimate_accuracy([]) is None and estimate_balanced_accuracy([]) is None


def test_psi():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert np.isfinite(psi([0.0, 1.0], [0.5, 0.5])) and psi([0.0, 1.0], [0.5, 0.5]) > 0.25


def test_parse_since():
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("12h") == timedelta(hours=12)
    assert parse_since("30m") == timedelta(minutes=30)
    for bad in ("7", "d", "7 days", "-1h", ""):
        with pytest.raises(ValueError):
            parse_since(bad)


def test_figures_have_data(reference):
    found = report(decisions(800, seed=11, shift=1.0), reference)
    figs = figures(found)
    assert set(figs) == {"class_mix", "scores", "rates", "accuracy", "latency"}
    assert len(figs["class_mix"].axes[0].patches) == 3 * len(CLASSES)  # live, validation, training
    assert [len(ax.patches) for ax in figs["scores"].axes] == [2 * 10, 2 * 10]  # per check: live and validation
    for name in ("rates", "accuracy", "latency"):
        assert any(len(line.get_xdata()) == len(found.timeline) for line in figs[name].axes[0].lines)
    for name, fig in figs.items():
        assert tuple(fig.get_size_inches()) == ((6, 6.4) if name == "scores" else (6, 3.2))
        fig.savefig(io.BytesIO(), format="png")


def test_without_a_reference_or_decisions(reference):
    """A folder without a reference still gets counts, CBPE and its plots; an empty window too."""
    found = report(decisions(300, seed=12), None)
    assert found.statistics == () and found.level == OK and found.accuracy is not None
    assert "no reference" in found.text() and "no reference" in found.summary()
    for empty in (report([], reference), report([], None)):
        assert empty.n == 0 and empty.timeline == () and "no decisions" in empty.text()
        for fig in [*figures(found).values(), *figures(empty).values()]:
            fig.savefig(io.BytesIO(), format="png")


def test_an_over_confident_model_s_estimate_is_corrected_by_its_validation_offset():
    """Probabilities sharper than the truth (labels drawn from a softer distribution): the raw
    CBPE estimate runs over the measured accuracy alike on validation and test; the served
    estimate subtracts validation's overshoot and lands on the test split's accuracy."""
    def split(seed: int) -> tuple[list[Decision], list[str]]:
        rng = np.random.default_rng(seed)
        true = rng.dirichlet(np.ones(len(CLASSES)) * 0.7, 3000)
        shown = true ** 2 / (true ** 2).sum(1, keepdims=True)  # over-confident
        labels = [CLASSES[rng.choice(len(CLASSES), p=row)] for row in true]
        return [Decision("toy", "m", "classify", ANSWERED, 1.0, dict(zip(CLASSES, map(float, row))),
                         CLASSES[int(row.argmax())], time=START) for row in shown], labels

    (val, val_labels), (test, test_labels) = split(11), split(12)
    found = Reference.from_dict(json.loads(json.dumps(reference_from_decisions(
        "toy", CLASSES, val, test, test_labels, list(CLASSES), val_labels=val_labels))))
    measured = np.mean([d.decided == y for d, y in zip(test, test_labels)])
    assert estimate_accuracy(test) - measured > 0.05  # the raw estimate overshoots
    assert found.cbpe_offset() > 0.05
    assert report(test, found).accuracy == pytest.approx(measured, abs=0.02) == found.estimate(test)
    assert found.cbpe_error("test") <= 0.02


def test_summary(reference):
    assert report(decisions(1000, seed=6, refused=0.15), reference).summary().startswith("ALARM: 1000 images; ")
    assert "refused rate alarm" in report(decisions(1000, seed=6, refused=0.15), reference).summary()
    assert "like the reference" in report(decisions(1000, seed=3), reference).summary()


def test_load(tmp_path, reference):
    (tmp_path / "metrics.json").write_text(json.dumps({"task": "toy"}))
    assert Reference.load(tmp_path) is None
    assert Reference.load(tmp_path / "absent") is None


@pytest.mark.slow
def test_the_shipped_accuracy_estimate_is_within_003_on_test():
    """CBPE's estimated accuracy on the shipped dermoscopy model's test split within 0.03 of the
    measured one (metrics.json "monitor", written by python -m train.monitor)."""
    found = Reference.load(ROOT / "assets" / "models" / "ham10000")
    assert found is not None, "no monitor reference: run python -m train.monitor"
    assert found.cbpe_error("test") <= 0.03, found.cbpe["test"]
