import numpy as np
import pytest

from skinlesion.decision import fit_temperature, recall_first_thresholds, softmax
from train.metrics import classification_report, expected_calibration_error, operating_point

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
