"""The patient's record (age, sex, body site): parsing, the fused answer, its fit and the shipped model's."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REAL_HAM, ROOT, needs_real_ham, run_train

from skinlesion.data import Record
from skinlesion.decision import DecisionRule
from skinlesion.images import InputError
from skinlesion.models.record import CONFIG_KEY, PatientModel
from skinlesion.patient import Patient
from skinlesion.tasks import get_task
from train.patient import fit_record
from train.splits import SplitData

CODES = get_task("ham10000").codes
SITES = ("back", "face")


def test_parse_reads_form_values_and_blanks():
    assert Patient.parse(" 63 ", "Male", "Back") == Patient(63.0, "male", "back")
    assert Patient.parse(70, None, "face", SITES) == Patient(70.0, None, "face")
    blank = Patient.parse("", "unknown", float("nan"))
    assert blank == Patient() and not blank.given and blank.fields == ()
    assert Patient.parse(None, "female", None).fields == ("sex",)


@pytest.mark.parametrize("values, message", [
    (("sixty", None, None), "age must be a number of years"),
    ((150, None, None), "between 0 and 120"),
    ((-1, None, None), "between 0 and 120"),
    ((None, "robot<script>", None), "sex must be one of male, female"),
    ((None, None, "moon"), "unknown body site; choose one of back, face"),
])
def test_parse_refuses_bad_values_without_echoing_them(values, message):
    with pytest.raises(InputError, match=message) as error:
        Patient.parse(*values, sites=SITES)
    assert "sixty" not in str(error.value) and "<script>" not in str(error.value) and "moon" not in str(error.value)


def synthetic_splits(rng: np.random.Generator, n: int = 700):
    """Seven classes; the image's logits see the class only weakly, the site tells akiec (face)
    from nv (back): what a record adds is measurable."""
    splits, logits, known = {}, {}, {}
    for s in ("train", "val", "test"):
        labels = np.arange(n) % len(CODES)
        records = [Record(f"{s}{i}", f"{s}-lesion{i}", CODES[k], None) for i, k in enumerate(labels)]
        for r, k in zip(records, labels):
            site = "face" if CODES[k] == "akiec" else "back" if CODES[k] == "nv" else SITES[rng.integers(2)]
            known[r.image_id] = Patient(float(rng.integers(20, 90)), ("male", "female")[rng.integers(2)], site)
        splits[s] = SplitData(records, [], labels)
        logits[s] = rng.normal(0, 1, (n, len(CODES))) + 1.0 * np.eye(len(CODES))[labels]
    return splits, logits, known


def test_fit_record_chooses_a_weight_that_helps_and_stores_a_model_that_answers_the_same():
    splits, logits, known = synthetic_splits(np.random.default_rng(0))
    spec = type("Spec", (), {"codes": CODES, "task": get_task("ham10000")})
    rule = DecisionRule.fit(logits["val"], splits["val"].labels, CODES, spec.task.high_risk_codes)[0]
    model, measured = fit_record(spec, known, rule, splits, {s: logits[s] for s in ("val", "test")})
    assert model.weight > 0 and set(model.sites) == set(SITES)
    assert len(model.regressions) == 7  # one per non-empty subset of age, sex, site
    for s in ("val", "test"):
        assert measured[s]["with_record"]["balanced_accuracy"] > measured[s]["image"]["balanced_accuracy"]
        low, high = measured[s]["gain_interval"]
        assert low <= measured[s]["gain"] <= high
    # config.json's block gives back the same model: the same fused probabilities
    again = PatientModel.from_config({CONFIG_KEY: json.loads(json.dumps(model.to_config())), "label_names": CODES})
    patients = [Patient(60.0, "male", "face"), Patient(site="back"), Patient()]
    base = logits["test"][:3]
    assert np.allclose(again.rule.probabilities(again.fuse(base, patients)),
                       model.rule.probabilities(model.fuse(base, patients)), atol=1e-5)
    ratio = model.log_ratio(patients)
    assert np.all(ratio[2] == 0)  # nothing given, nothing said
    akiec, nv = CODES.index("akiec"), CODES.index("nv")
    assert ratio[0, akiec] > 0 > ratio[0, nv] and ratio[1, nv] > 0 > ratio[1, akiec]


def test_fit_record_needs_every_class_among_the_records():
    splits, logits, known = synthetic_splits(np.random.default_rng(1), n=70)
    spec = type("Spec", (), {"codes": CODES, "task": get_task("ham10000")})
    rule = DecisionRule.fit(logits["val"], splits["val"].labels, CODES, spec.task.high_risk_codes)[0]
    few = {r.image_id: known[r.image_id] for r in splits["train"].records if r.label != "df"}
    assert fit_record(spec, few, rule, splits, logits) is None


def test_the_bundled_model_answers_with_and_without_a_record(bundled_models):
    predictor = bundled_models["ham10000"]
    image = ROOT / "assets" / "examples" / "ham10000"
    path = sorted(p for p in image.iterdir() if p.suffix == ".jpg")[0]
    alone = predictor.analyse(path, method=None)
    record = predictor.patient(age="75", sex="male", site="face")
    fused = predictor.analyse(path, method=None, patient=record)
    assert alone.patient is None and fused.patient == Patient(75.0, "male", "face")
    assert alone.probabilities != fused.probabilities
    assert abs(sum(fused.probabilities.values()) - 1) < 1e-6
    assert predictor.patient(age="", sex="unknown") is None  # nothing given: the image alone
    assert predictor.analyse(path, method=None, patient=Patient()).probabilities == alone.probabilities
    with pytest.raises(InputError, match="unknown body site"):
        predictor.patient(site="elbow")
    assert bundled_models["neu"].patient(age=40) is None  # steel: no record model
    prepared = [predictor.prepare(path), predictor.prepare(path)]
    many = predictor.analyse_many(prepared, [record, None])
    assert many[0].probabilities == pytest.approx(fused.probabilities, abs=1e-4)
    assert many[1].probabilities == pytest.approx(alone.probabilities, abs=1e-4)


def test_the_bundled_models_record_is_measured_in_its_card():
    metrics = json.loads((ROOT / "assets/models/ham10000/metrics.json").read_text())
    config = json.loads((ROOT / "assets/models/ham10000/config.json").read_text())
    assert config[CONFIG_KEY]["weight"] == metrics[CONFIG_KEY]["weight"]
    assert metrics[CONFIG_KEY]["val"]["gain_interval"][0] > 0  # shipped on a validation gain above zero
    assert metrics[CONFIG_KEY]["test"]["with_record"]["mel"]["sensitivity"] >= 0.9
    assert "With the patient's record" in (ROOT / "assets/models/ham10000/README.md").read_text()


@needs_real_ham
@pytest.mark.slow
def test_refit_on_the_real_data_reproduces_the_shipped_figures(tmp_path):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(ROOT / "assets/models/ham10000", folder)
    result = run_train("--model", folder, "--data", REAL_HAM,
                       module="train.patient")
    assert result.returncode == 0, result.stderr[-2000:]
    shipped = json.loads((ROOT / "assets/models/ham10000/metrics.json").read_text())[CONFIG_KEY]
    again = json.loads((folder / "metrics.json").read_text())[CONFIG_KEY]
    assert again["weight"] == shipped["weight"]
    assert again["val"]["with_record"]["balanced_accuracy"] == pytest.approx(
        shipped["val"]["with_record"]["balanced_accuracy"], abs=0.002)
