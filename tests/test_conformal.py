"""The 90% prediction sets (skinlesion/trust/conformal.py), pinned to a library's answer."""
import numpy as np
import pytest
from crepes import ConformalClassifier

from skinlesion.decision import DecisionRule
from skinlesion.tasks import get_task
from skinlesion.trust.conformal import ALPHA, SHARED, conformal_quantile, fit_quantiles, nonconformity, prediction_sets

CODES = ("a", "b", "c", "d")


def random_probs(rng, n, k=len(CODES)):
    return rng.dirichlet(np.ones(k) * 0.7, size=n)


@pytest.mark.parametrize("own", [(), ("a",), ("a", "c")])
def test_sets_match_crepes_mondrian_classifier(own):
    """Each class's membership equals crepes' non-smoothed Mondrian conformal classifier with the
    calibration images binned by their class group."""
    rng = np.random.default_rng(0)
    cal, test = random_probs(rng, 400), random_probs(rng, 300)
    labels = rng.integers(0, len(CODES), 400)
    group = lambda code: code if code in own else SHARED  # noqa: E731
    quantiles = fit_quantiles(cal, labels, CODES, own)
    ours = prediction_sets(test, [quantiles[c] for c in CODES])

    cc = ConformalClassifier().fit(nonconformity(cal)[np.arange(400), labels],
                                   bins=np.array([group(CODES[k]) for k in labels]))
    for k, code in enumerate(CODES):
        theirs = cc.predict_set(nonconformity(test)[:, [k]], bins=np.full(len(test), group(code)),
                                confidence=1 - ALPHA, smoothing=False)[:, 0].astype(bool)
        assert (ours[:, k] == theirs).all(), code


def test_coverage_holds_on_exchangeable_data():
    """Calibrated on one half of draws from a model that is right about its probabilities, the
    sets cover the other half's true class about 90% of the time, and each own-quantile class too."""
    rng = np.random.default_rng(1)
    probs = random_probs(rng, 6000)
    labels = np.array([rng.choice(len(CODES), p=p) for p in probs])
    quantiles = fit_quantiles(probs[:3000], labels[:3000], CODES, ("a",))
    sets = prediction_sets(probs[3000:], [quantiles[c] for c in CODES])
    covered = sets[np.arange(3000), labels[3000:]]
    assert 0.88 <= covered.mean() <= 0.93
    assert covered[labels[3000:] == 0].mean() >= 0.88


def test_quantile_is_every_class_when_too_few_scores():
    assert conformal_quantile(np.array([0.1, 0.2])) == 1.0  # ⌈3 × 0.9⌉ = 3 > 2 scores
    assert conformal_quantile(np.arange(1, 20) / 20) == pytest.approx(0.9)  # the 18th of 19


def test_rule_fits_quantiles_for_each_high_risk_class_and_round_trips():
    """The dermoscopy rule gives mel, bcc and akiec their own quantile and the rest one shared;
    config.json round-trips it, and the rule's sets are the quantiles' sets."""
    codes = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, 700)
    logits = rng.normal(size=(700, 7)) + 2.5 * np.eye(7)[labels]
    rule, _ = DecisionRule.fit(logits, labels, codes, get_task("ham10000").high_risk_codes)
    shared = {rule.quantiles[c] for c in ("bkl", "df", "nv", "vasc")}
    assert len(shared) == 1 and set(rule.quantiles) == set(codes)
    again = DecisionRule.from_config({"label_names": list(codes), **rule.to_config()})
    assert again == rule
    probs = rule.probabilities(logits)
    conformal = prediction_sets(probs, [rule.quantiles[c] for c in codes])
    served = rule.prediction_set(probs)
    decided = rule.decide(probs)
    assert served[np.arange(len(probs)), decided].all()  # never empty: the decided class is in it
    assert (served == (conformal | (np.arange(7) == decided[:, None]))).all()
