import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from skinlesion.decision import fit_temperature, recall_first_thresholds, softmax
from train.ablation import render, with_intervals
from train.metrics import (
    balanced_accuracy,
    classification_report,
    expected_calibration_error,
    grouped_resamples,
    operating_point,
)

CODES = ["a", "b", "c"]


def sample(n=3000, temperature=2.0, seed=0):
    """Labels drawn from softmax(logits / temperature): calibrated at exactly `temperature`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 3))
    p = softmax(logits, temperature)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return logits, labels


def test_temperature_scaling_recovers_the_true_temperature_and_lowers_ece():
    logits, labels = sample()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(softmax(logits, t), labels) < expected_calibration_error(softmax(logits), labels)
    assert expected_calibration_error(softmax(logits, t), labels) < 0.03


def test_ece_is_zero_for_perfect_confident_predictions_and_high_for_wrong_ones():
    labels = np.array([0, 1, 2, 0])
    assert expected_calibration_error(np.eye(3)[labels], labels) == 0
    assert expected_calibration_error(np.eye(3)[(labels + 1) % 3], labels) == 1


def test_recall_first_threshold_reaches_the_target_sensitivity():
    logits, labels = sample(seed=1)
    probs = softmax(logits)
    thresholds = recall_first_thresholds(probs, labels, [0, 2], target=0.9)
    for k, t in thresholds.items():
        positives = probs[labels == k, k]
        assert (positives >= t).mean() >= 0.9
        assert (positives >= np.nextafter(t, 1)).mean() < 0.9  # the highest such threshold
    op = operating_point(probs, labels, CODES, {"a": thresholds[0]})
    assert op["a"]["sensitivity"] >= 0.9 and 0 < op["a"]["specificity"] < 1


def test_report_handles_a_class_absent_from_the_split():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 1, 0, 0])
    report = classification_report(probs, labels, CODES)
    assert report["accuracy"] == 0.75
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert report["per_class"]["c"]["support"] == 0 and report["per_class"]["c"]["sensitivity"] is None
    assert report["per_class"]["a"]["specificity"] == 1.0
    assert report["macro_auc"] == pytest.approx(2 / 3)  # mean over a and b; c has no positives


def test_a_grouped_resample_draws_whole_lesions():
    groups = ["l0", "l0", "l1", "l2", "l2", "l2", "l3"]
    picks = grouped_resamples(groups, n=200, seed=1)
    assert len(picks) == 200
    for pick in picks:
        drawn = [groups[i] for i in pick]
        for lesion in set(drawn):  # a lesion drawn k times brings all its images k times
            assert drawn.count(lesion) % groups.count(lesion) == 0
    assert all((a == b).all() for a, b in zip(picks, grouped_resamples(groups, n=200, seed=1)))
    assert len({tuple(p) for p in picks}) > 50  # the draws differ


def test_balanced_accuracy_is_sklearns_and_skips_absent_classes():
    rng = np.random.default_rng(0)
    labels, decided = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    assert balanced_accuracy(labels, decided) == pytest.approx(balanced_accuracy_score(labels, decided))
    assert balanced_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1]), classes=[0, 1, 2]) == pytest.approx(0.75)


def test_the_ablation_says_when_a_lever_beats_the_first_row_beyond_the_splits_noise():
    rng = np.random.default_rng(0)
    groups = {s: [f"{s}{i // 2}" for i in range(400)] for s in ("val", "test")}  # two images a lesion
    labels = {s: np.repeat(rng.integers(0, 3, 200), 2) for s in groups}
    base = {s: np.where(rng.random(400) < 0.6, labels[s], (labels[s] + 1) % 3) for s in groups}
    better = {s: labels[s].copy() for s in groups}  # right wherever the first row is, and more
    rows = [{"lever": name, **{f"{s}_ba": balanced_accuracy(labels[s], d[s]) for s in groups}, "test_auc": 0.9,
             "test_ece": 0.01, "p50_ms": 20.0, "train_minutes": None}
            for name, d in (("first", base), ("same", base), ("better", better))]
    rows = with_intervals(rows, [base, base, better], labels, groups)
    assert rows[1]["val_ba_delta"] == 0 and rows[1]["val_ba_delta_interval"] == (0, 0)
    low, high = rows[2]["val_ba_delta_interval"]
    assert 0 < low <= rows[2]["val_ba_delta"] <= high
    for row in rows:
        assert row["test_ba_interval"][0] <= row["test_ba"] <= row["test_ba_interval"][1]
    text = render(rows)
    assert "val BA − first row (95%)" in text and "| — |" in text and "+0.000 (+0.000 to +0.000)" in text
    # against another row (what ships, say): every difference is taken from it, and the header names it
    rows = with_intervals([dict(r) for r in rows], [base, base, better], labels, groups, against=2)
    assert rows[0]["val_ba_delta"] == pytest.approx(rows[0]["val_ba"] - rows[2]["val_ba"])
    assert rows[0]["val_ba_delta"] < 0
    assert rows[0]["val_ba_delta_interval"][1] < 0 and rows[2]["val_ba_delta_interval"] == (0, 0)
    text = render(rows)
    assert "val BA − better (95%)" in text and "first row" not in text
    assert [line.split(" | ")[2] for line in text.splitlines()[2:]][2] == "—"  # the reference row's own cell
