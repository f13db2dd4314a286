"""The decision rule (skinlesion/decision.py): fitted on validation, stored in config.json, and
applied identically by evaluation (the card's numbers) and serving (Predictor, the page)."""
import csv

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from skinlesion import Predictor
from skinlesion.decision import DecisionRule, softmax
from skinlesion.models.spec import read_config
from skinlesion.tasks import get_task

CODES = get_task("ham10000").codes
HIGH = get_task("ham10000").high_risk_codes


def verdict_of(rule: DecisionRule, task: str, probabilities: dict[str, float], caution: str | None = None):
    """The task's verdict for these probabilities, as the Predictor gives it (no heat-map)."""
    probs = np.array([probabilities[c] for c in rule.codes])
    decided = rule.codes[int(rule.decide(probs))]
    members = [c for c, inside in zip(rule.codes, rule.prediction_set(probs)) if inside]
    return get_task(task).verdict(probabilities, decided, members, rule.thresholds, get_task(task), caution)


def imbalanced(n=4000, seed=0):
    """Logits of a model that learned the class prior: rare classes lose the close calls."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
    labels = rng.choice(7, size=n, p=prior)
    logits = rng.normal(0, 1.0, (n, 7)) + 1.6 * np.eye(7)[labels] + np.log(prior)
    return logits, labels


def test_fitted_class_bias_raises_balanced_accuracy_on_held_out_data():
    rule, tau = DecisionRule.fit(*imbalanced(seed=0), CODES, HIGH)
    logits, labels = imbalanced(seed=1)
    probs = rule.probabilities(logits)
    adjusted = balanced_accuracy_score(labels, rule.decide(probs))
    argmax = balanced_accuracy_score(labels, probs.argmax(1))
    assert tau > 0.3 and len(rule.class_bias) == 7
    assert adjusted > argmax + 0.05
    assert np.allclose(probs, softmax(logits, rule.temperature))  # the bias never touches the probabilities
    assert set(rule.thresholds) == {"akiec", "bcc", "mel"} and set(rule.quantiles) == set(CODES)


def test_balanced_classes_keep_the_argmax():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 300)
    logits = rng.normal(0, 1, (len(labels), 6)) + 2.5 * np.eye(6)[labels]
    rule, tau = DecisionRule.fit(logits, labels, get_task("neu").codes, [])
    probs = rule.probabilities(logits)
    assert np.array_equal(rule.decide(probs), probs.argmax(1))
    assert rule.thresholds == {} and 0 < min(rule.quantiles.values()) <= max(rule.quantiles.values()) <= 1


def test_rule_round_trips_through_the_config():
    rule, _ = DecisionRule.fit(*imbalanced(), CODES, HIGH)
    config = {"label_names": CODES, "task": "ham10000", **rule.to_config()}
    assert DecisionRule.from_config(config) == rule
    assert DecisionRule.from_config({"label_names": CODES}).decide(np.array([0.1, 0.2, 0.1, 0.1, 0.1, 0.3, 0.1])) == 5


@pytest.mark.slow
def test_evaluation_and_serving_decide_alike(tiny_run):
    """predictions.csv (written by evaluation) and the Predictor (serving) give the same decided
    class and the same verdict for the same probabilities."""
    folder = tiny_run / "model"
    config = read_config(folder)
    assert "class_bias" in config and len(config["class_bias"]) == 7
    rule = Predictor.from_pretrained(folder).rule  # what serving applies
    assert rule == DecisionRule.from_config(config)
    with (tiny_run / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:
        probs = np.array([float(row[f"p_{c}"]) for c in CODES])
        assert CODES[int(rule.decide(probs))] == row["predicted"]


def test_verdict_names_the_decided_class_not_the_argmax():
    quantiles = {c: 0.9 for c in CODES} | {"nv": 0.1}  # the set: df alone
    rule = DecisionRule(tuple(CODES), class_bias=(0, 0, 0, 3.0, 0, 0, 0), quantiles=quantiles)
    probabilities = dict(zip(CODES, [0.0, 0.0, 0.02, 0.13, 0.0, 0.85, 0.0]))
    assert CODES[int(rule.decide(np.array(list(probabilities.values()))))] == "df"
    verdict = verdict_of(rule, "ham10000", probabilities)
    assert verdict.level == "clear" and verdict.detail.startswith("Classified as Dermatofibroma (13%)")


@pytest.mark.parametrize("task", ["ham10000", "neu"])
def test_both_policies_call_an_answer_unsure_when_its_set_is_not_one_class(task):
    """Steel's manual review and dermoscopy's "uncertain" fire alike, on a set of several
    classes; a set of the decided class alone names it; the set always holds the decided class."""
    codes = get_task(task).codes
    rule = DecisionRule(tuple(codes), quantiles={c: 0.7 for c in codes})  # joins the set at p ≥ 0.3
    unsure = "review" if task == "neu" else "uncertain"
    benign = codes[-2] if task == "ham10000" else codes[0]   # nv: no recall-first threshold
    two = {c: 0.0 for c in codes} | {benign: 0.55, codes[-1]: 0.45}
    one = {c: 0.0 for c in codes} | {benign: 0.9, codes[-1]: 0.1}
    assert verdict_of(rule, task, two).level == unsure and "holds 2 classes" in verdict_of(rule, task, two).detail
    assert verdict_of(rule, task, one).level == ("named" if task == "neu" else "clear")
    flat = np.full((1, len(codes)), 1 / len(codes))  # no class at p ≥ 0.3: the set is the decided class
    assert rule.prediction_set(flat)[0].tolist() == (np.arange(len(codes)) == rule.decide(flat)[0]).tolist()


@pytest.mark.parametrize("task", ["ham10000", "neu"])
def test_an_unfamiliar_image_gets_a_cautious_verdict_that_says_why_first(task):
    """Unfamiliar (another device or clinic?): a high-risk class anywhere in the set refers even
    under its threshold; otherwise the answer is uncertain (steel: review), never clear or named;
    the caution with the folder's figure comes first."""
    from skinlesion.tasks.verdicts import caution
    codes = get_task(task).codes
    rule = DecisionRule(tuple(codes), quantiles={c: 0.7 for c in codes}, thresholds={c: 0.5 for c in
                                                                                      get_task(task).high_risk_codes})
    words = caution(get_task(task), "balanced accuracy 0.55 on 120 unfamiliar held-out images")
    assert words.startswith(get_task(task).unfamiliar) and words.endswith("held-out images).")
    benign = codes[-2] if task == "ham10000" else codes[0]
    one = {c: 0.0 for c in codes} | {benign: 0.9, codes[-1]: 0.1}
    assert verdict_of(rule, task, one).level in ("clear", "named")
    cautious = verdict_of(rule, task, one, words)
    assert cautious.level == ("review" if task == "neu" else "uncertain") and cautious.detail.startswith(words)
    if task == "ham10000":  # melanoma at 35 %: under its threshold of 0.5, inside the set (≥ 0.3)
        mel = {c: 0.0 for c in codes} | {"nv": 0.65, "mel": 0.35}
        assert verdict_of(rule, task, mel).level == "uncertain"
        referred = verdict_of(rule, task, mel, words)
        assert referred.level == "refer" and "In the 90% prediction set: Melanoma" in referred.detail


def test_perfect_validation_keeps_the_raw_probabilities():
    """No mistake to calibrate against: the temperature would run to 0 and every answer to
    100 %; T stays 1."""
    labels = np.repeat(np.arange(6), 50)
    logits = 4.0 * np.eye(6)[labels]
    rule, _ = DecisionRule.fit(logits, labels, get_task("neu").codes, [])
    assert rule.temperature == 1.0


@pytest.mark.slow
def test_evaluation_and_serving_give_the_same_verdict_for_the_same_image(tiny_run):
    """Evaluation's path (a loader of in-memory images → logits → the stored rule) and serving's
    (Predictor.predict → decide → triage) agree on probabilities, decided class and verdict."""
    from skinlesion.data import Record
    from skinlesion.models.network import load_model_folder
    from skinlesion.transforms import eval_transform
    from skinlesion.trust.check import InputCheck
    from skinlesion.trust.modality import ModalityCheck
    from train.device import pick_device
    from train.loaders import make_loader, predict_logits
    from train.splits import prepare_splits
    from train.trust import Checks, forward_all

    folder = tiny_run / "model"
    model, spec = load_model_folder(folder)
    paths = sorted((tiny_run.parent / "ham" / "images").glob("*.jpg"))[::9]
    records = [Record(p.stem, p.stem, "nv", p) for p in paths]
    data = prepare_splits(records, spec.input_size, 0, None, spec.codes,
                          split=_all_in_test(tiny_run, records))["test"]
    logits = predict_logits(model, make_loader(data, eval_transform(spec.input_size), 8, 0, shuffle=False),
                            pick_device("cpu"))
    probs = spec.rule.probabilities(logits)
    predictor = Predictor.from_pretrained(folder)
    # evaluation's figures apply the checks to many images at once (train.trust.Checks): as serving does
    checks = Checks(ModalityCheck.load(folder, spec.config), InputCheck.load(folder, spec.config, refuses=False))
    features = forward_all(model, spec, data.images, pick_device("cpu")).features
    answered, familiar = checks.answered(features), checks.familiar(features)
    for i, (path, row, decided) in enumerate(zip(paths, probs, spec.rule.decide(probs))):
        served = predictor.analyse(path, method=None)
        assert np.allclose([served.probabilities[c] for c in spec.codes], row, atol=1e-5)
        assert served.decided == spec.codes[int(decided)]
        assert (served.known, served.familiar or not served.known) == (answered[i], familiar[i] or not answered[i])
        if served.known:  # else the modality check's refusal, whatever the rule says (tests/test_check.py)
            caution = None if served.familiar else predictor.caution
            assert served.verdict == verdict_of(spec.rule, "ham10000", dict(zip(spec.codes, row)), caution)
        else:
            assert served.verdict.level == "unknown"


def _all_in_test(run, records):
    path = run.parent / "all-test-split.csv"
    rows = "".join(f"{r.image_id},{r.group},nv,test\n" for r in records)
    path.write_text("image_id,group,label,split\n" + rows)
    return path
