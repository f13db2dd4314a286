"""The input check (skinlesion/trust/check.py, trust/features.py, train/trust.py): fitted on the task's own
images, stored in the model folder, applied from the answer's own forward pass."""
import json

import numpy as np
import pytest
import torch
from conftest import REAL_HAM, REAL_NEU, ROOT, needs_real_ham, needs_real_neu
from PIL import Image

from skinlesion.tasks import get_task
from skinlesion.trust.check import PASS_RATE, REFERENCE_FILE, InputCheck
from skinlesion.trust.features import POOLED, FeatureTap, stage_names


def gaussian_features(rng, n, shift=0.0):
    return {"s1": torch.from_numpy(rng.normal(shift, 1, (n, 6))).float(),
            "s2": torch.from_numpy(rng.normal(0, 1 + shift, (n, 10))).float(),
            POOLED: torch.from_numpy(rng.normal(shift, 1, (n, 16))).float()}


def test_check_lets_its_own_kind_through_and_refuses_far_features():
    rng = np.random.default_rng(0)
    reference, val, test = (gaussian_features(rng, n) for n in (2000, 800, 800))
    check = InputCheck.fit(reference, reference[POOLED][:300], val, ("s1", "s2"))
    assert (check.scores(val) <= check.threshold).mean() == pytest.approx(PASS_RATE, abs=0.005)
    assert (check.scores(test) <= check.threshold).mean() >= 0.95
    assert (check.scores(gaussian_features(rng, 200, shift=3.0)) > check.threshold).all()


def test_check_round_trips_through_the_model_folder(tmp_path):
    from train.splits import SplitData
    from train.trust import save_reference
    rng = np.random.default_rng(1)
    reference, val = gaussian_features(rng, 500), gaussian_features(rng, 200)
    check = InputCheck.fit(reference, reference[POOLED][:50], val, ("s1", "s2"))
    train = SplitData([type("R", (), {"image_id": f"img{i}"})() for i in range(500)], [], np.zeros(500, np.int64))
    save_reference(tmp_path, check, train, np.arange(50))
    config = json.loads(json.dumps({"input_check": check.to_config()}))  # as config.json stores it
    loaded = InputCheck.load(tmp_path, config)
    assert np.allclose(loaded.scores(val), check.scores(val), atol=1e-5)
    assert InputCheck.load(tmp_path, {}) is None  # an older model folder: no check


def test_modality_check_refuses_what_it_was_shown_and_round_trips(tmp_path):
    """Outlier exposure: the task's features (and shifted copies, here a wider spread) against
    other images; the threshold keeps PASS_RATE of validation; the folder keeps it exactly."""
    from skinlesion.trust.modality import PASS_RATE as MODALITY_PASS
    from skinlesion.trust.modality import ModalityCheck
    from train.splits import SplitData
    from train.trust import Checks, save_reference
    rng = np.random.default_rng(2)
    inside, val = gaussian_features(rng, 1500), gaussian_features(rng, 600)
    outside, unseen = gaussian_features(rng, 400, shift=2.0), gaussian_features(rng, 300, shift=2.5)
    names = ("s1", "s2", POOLED)
    modality = ModalityCheck.fit(inside, outside, val, names)
    assert modality.stages == ("s1", "s2")
    assert (modality.scores(val) <= modality.threshold).mean() == pytest.approx(MODALITY_PASS, abs=0.005)
    assert (modality.scores(unseen) > modality.threshold).mean() >= 0.95
    familiarity = InputCheck.fit(inside, inside[POOLED][:50], val, ("s1", "s2"), refuses=False)
    train = SplitData([type("R", (), {"image_id": f"img{i}"})() for i in range(1500)], [], np.zeros(1500, np.int64))
    save_reference(tmp_path, Checks(modality, familiarity), train, np.arange(50))
    config = json.loads(json.dumps({"modality_check": modality.to_config(), "input_check": familiarity.to_config()}))
    loaded = ModalityCheck.load(tmp_path, config)
    assert np.allclose(loaded.scores(unseen), modality.scores(unseen), atol=1e-4)
    assert ModalityCheck.load(tmp_path, {}) is None


def test_with_a_modality_check_the_familiarity_check_only_cautions():
    """An image the modality check passes but the familiarity check does not is answered,
    marked unfamiliar — unless its score is past the check's `far` backstop. Without a modality
    check (an older folder), failing the familiarity check refuses."""
    from dataclasses import replace

    from skinlesion.trust import Assessment
    rng = np.random.default_rng(3)
    reference, val = gaussian_features(rng, 1000), gaussian_features(rng, 400)
    far = gaussian_features(rng, 1, shift=3.0)
    cautious = InputCheck.fit(reference, reference[POOLED][:50], val, ("s1", "s2"), refuses=False)
    found = cautious.assess(far, [0], [Assessment()])[0]
    assert found.known and not found.familiar and found.familiarity_score > found.familiarity_threshold
    backstop = replace(cautious, far=found.familiarity_score - 1e-3)  # past `far`: refused even so
    refused = backstop.assess(far, [0], [Assessment()])[0]
    assert not refused.known
    assert (refused.check_score, refused.check_threshold) == (found.familiarity_score, backstop.far)
    refusing = InputCheck.fit(reference, reference[POOLED][:50], val, ("s1", "s2"))
    found = refusing.assess(far, [0], [Assessment()])[0]
    assert not found.known and not found.familiar and found.check_score == found.familiarity_score


def test_tap_records_only_inside_recording_and_per_take():
    import timm
    model = timm.create_model("efficientnet_b0", num_classes=3).eval()
    tap = FeatureTap(model, stage_names(model))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # not recorded
        with tap.recording():
            model(torch.randn(2, 3, 64, 64))
            model(torch.randn(3, 3, 64, 64))
            first = tap.take()
            assert tap.take() == {}
            model(torch.randn(1, 3, 64, 64))
            assert len(tap.take(last=True)[POOLED]) == 1
            model(torch.randn(1, 3, 64, 64))  # after the last take: not recorded
            with pytest.raises(RuntimeError):
                tap.take()
    assert set(first) == {*stage_names(model), POOLED} and all(len(v) == 5 for v in first.values())
    assert first["blocks.6"].shape[1] == 2 * 320 and first[POOLED].shape[1] == 1280
    with pytest.raises(RuntimeError):
        tap.take()


@pytest.fixture
def bundled(bundled_models):
    return bundled_models


def test_bundled_models_ship_their_check(bundled):
    for predictor in bundled.values():
        assert predictor.trust.check is not None and (predictor.folder / REFERENCE_FILE).is_file()
        assert (predictor.folder / REFERENCE_FILE).stat().st_size < 15e6


@needs_real_ham
@needs_real_neu
def test_each_bundled_model_refuses_the_other_tasks_image(bundled):
    """A steel image is not a skin lesion and a dermoscopic image is not steel: the verdict says
    so with no diagnosis, whether or not a heat-map is drawn, and the batch path agrees."""
    ham = sorted((REAL_HAM / "images").glob("*.jpg"))[:3]
    neu = sorted((REAL_NEU / "images").glob("*.jpg"))[:3]
    for key, own, other in (("ham10000", ham, neu), ("neu", neu, ham)):
        predictor, task = bundled[key], get_task(key)
        for path in other:
            analysis = predictor.analyse(path)
            assert not analysis.known and analysis.check_score > analysis.check_threshold
            assert analysis.verdict.level == "unknown" and analysis.verdict.headline == task.refusal
            assert "mean nothing" in analysis.verdict.detail
            plain = predictor.analyse(path, method=None)
            many = predictor.analyse_many([predictor.prepare(path)])[0]
            assert plain.check_score == pytest.approx(analysis.check_score, rel=1e-4)
            assert many.check_score == pytest.approx(analysis.check_score, rel=1e-4)
        known = [predictor.analyse(p, method=None) for p in own]
        assert sum(a.known for a in known) >= 2 and all(a.verdict.level != "unknown" for a in known if a.known)


def test_bundled_models_refuse_synthetic_images(bundled, tmp_path):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (300, 200), (40, 160, 90)).save(flat)
    for predictor in bundled.values():
        assert not predictor.analyse(flat, method=None).known


def test_screenshot_of_the_app_is_not_a_lesion(bundled):
    analysis = bundled["ham10000"].analyse(ROOT / "assets" / "screenshot.png", method=None)
    assert not analysis.known and analysis.verdict.level == "unknown"
