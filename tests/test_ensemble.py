"""Ensemble: a folder's model with further models and mirror views answers as one network; the
heat-map, the input check and the similar cases stay the primary model's."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from conftest import run_train

from skinlesion import Predictor
from skinlesion.decision import fit_temperature
from skinlesion.explain import GRAD_CAM, last_stage, upsample_heatmap
from skinlesion.models.ensemble import Ensemble, average, load_ensemble
from skinlesion.models.network import create_model, save_model_folder
from skinlesion.models.spec import ModelFolderError, update_config
from skinlesion.tasks import get_task
from skinlesion.transforms import model_input
from skinlesion.trust.features import POOLED, stage_names
from train.ensemble import member_outputs
from train.splits import prepare_splits

PRIMARY_T, MEMBER_T, RULE_T = 1.2, 0.8, 1.5   # RULE_T: the model_folder fixture's rule temperature


@pytest.fixture
def ensemble_folder(model_folder, tmp_path):
    """The 64 px model folder with a 48 px member of other weights, averaged over two views."""
    folder = tmp_path / "ensemble"
    shutil.copytree(model_folder, folder)
    torch.manual_seed(1)
    member = create_model(7, image_size=48)
    torch.nn.init.normal_(member.get_classifier().weight, std=0.3)
    save_model_folder(member, folder / "members" / "other", get_task("ham10000"))
    update_config(folder, ensemble={"temperature": PRIMARY_T, "views": ["plain", "hflip"],
                                    "members": [{"folder": "members/other", "temperature": MEMBER_T}]})
    return folder


def test_one_model_on_the_plain_view_answers_with_its_own_logits(predictor, photo):
    x = model_input([photo], predictor.spec)
    with torch.no_grad():
        assert Ensemble([predictor.primary]).single
        assert torch.equal(Ensemble([predictor.primary])(x), predictor.primary(x))


def test_mirror_views_average_the_probabilities(predictor, photo):
    x = model_input([photo], predictor.spec)
    net = Ensemble([predictor.primary], views=["plain", "hflip", "vflip"])
    with torch.no_grad():
        expected = torch.softmax(predictor.primary(torch.cat([x, x.flip(-1), x.flip(-2)])), -1).mean(0)
        assert torch.allclose(net(x)[0].exp(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="views"):
        Ensemble([predictor.primary], views=["hflip"])


def test_a_folder_with_members_answers_with_their_calibrated_average(ensemble_folder, photo):
    predictor = Predictor.from_pretrained(ensemble_folder)
    assert not predictor.net.single and predictor.net.passes == 4 and predictor.net.sizes == [None, 48]
    primary, member = predictor.net.members
    x = model_input([photo], predictor.spec)
    with torch.no_grad():
        small = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
        probs = [torch.softmax(primary(v) / PRIMARY_T, -1) for v in (x, x.flip(-1))]
        probs += [torch.softmax(member(v) / MEMBER_T, -1) for v in (small, small.flip(-1))]
        expected = torch.softmax(torch.stack(probs).mean(0).log() / RULE_T, -1)[0].numpy()
    assert np.allclose(list(predictor.predict(photo).values()), expected, atol=1e-5)
    plain = predictor.analyse(photo, method=None)
    explained = predictor.analyse(photo)  # Grad-CAM of the primary, the class decided by the ensemble
    assert np.allclose(list(plain.probabilities.values()), expected, atol=1e-5)
    assert explained.probabilities == pytest.approx(plain.probabilities, abs=1e-6)
    assert explained.decided == plain.decided == explained.target and explained.method == GRAD_CAM
    assert explained.heatmap.shape == photo.shape[:2]
    for method in ("Integrated Gradients", "Occlusion"):
        assert predictor.analyse(photo, method=method).decided == plain.decided


def test_the_answers_pass_is_the_one_grad_cam_explains(ensemble_folder, photo):
    """Answer first, then explain: each model runs once per view, and the map of the primary is
    the one captum's LayerGradCam computes in a pass of its own."""
    predictor = Predictor.from_pretrained(ensemble_folder)
    calls = {k: 0 for k in range(len(predictor.net.members))}
    hooks = [m.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, m in enumerate(predictor.net.members)]
    try:
        explained = predictor.analyse(photo, target="mel")
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {0: 2, 1: 2}  # the plain view and its mirror image, once each
    x = model_input([photo], predictor.spec)
    cam = LayerGradCam(predictor.primary, last_stage(predictor.primary)).attribute(
        x, target=predictor.codes.index("mel"), relu_attributions=True).detach()
    assert np.abs(explained.heatmap - upsample_heatmap(cam, photo.shape[:2])).max() < 1e-4


def test_the_features_are_the_primary_models_plain_view(ensemble_folder, photo):
    net, _ = load_ensemble(ensemble_folder)
    predictor = Predictor.from_pretrained(ensemble_folder)
    x = model_input([photo, photo[::-1]], predictor.spec)
    tap = net.tap(stage_names(net.primary))
    with torch.no_grad(), tap.recording():
        net(x)
        together = tap.take()
        net.primary(x)
        alone = tap.take()
    assert together[POOLED].shape[0] == 2
    for name in alone:
        assert torch.allclose(together[name], alone[name], atol=1e-5)


def test_a_member_with_its_own_normalisation_sees_its_own_input(ensemble_folder, photo):
    """A member trained with another mean and std (an EfficientNet-Lite's 0.5 / 0.5 beside the
    primary's ImageNet statistics) gets the same pixels normalised its own way."""
    config = json.loads((ensemble_folder / "members" / "other" / "config.json").read_text())
    config["pretrained_cfg"].update(mean=[0.5] * 3, std=[0.5] * 3)
    (ensemble_folder / "members" / "other" / "config.json").write_text(json.dumps(config))
    net, spec = load_ensemble(ensemble_folder)
    x = model_input([photo], spec)
    pixels = x * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
    own = F.interpolate((pixels - 0.5) / 0.5, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        member = net.member_log_probs(x)[2]  # the member's plain view (the primary's two views first)
        alone = torch.log_softmax(net.members[1](own) / MEMBER_T, dim=-1)
    assert torch.allclose(member, alone, atol=1e-5)
    update_config(ensemble_folder / "members" / "other", preprocessing={"colour_constancy": "shades_of_gray", "p": 6})
    with pytest.raises(ModelFolderError, match="preprocessing differ"):
        load_ensemble(ensemble_folder)


def test_a_member_outside_the_folder_is_refused(ensemble_folder):
    update_config(ensemble_folder, ensemble={"members": [{"folder": "../elsewhere"}]})
    with pytest.raises(ModelFolderError, match="outside the folder"):
        load_ensemble(ensemble_folder)
    update_config(ensemble_folder, ensemble={"members": [{"folder": "members/missing"}]})
    with pytest.raises(ModelFolderError, match="not found"):
        load_ensemble(ensemble_folder)


@pytest.mark.slow
def test_train_ensemble_then_evaluate_fits_the_rule_on_the_ensemble(tiny_run, tmp_path):
    """The commands of docs/training.md: the folder they make answers as predictions.csv says."""
    out, data, primary = tmp_path / "ens", tiny_run.parent / "ham", tmp_path / "primary"
    shutil.copytree(tiny_run / "model", primary)
    update_config(primary, temperature=1.0)  # a rule temperature that does not calibrate the ensemble
    result = run_train("--primary", primary, "--member", tiny_run / "model", "--views", "plain", "hflip",
                       "--data", data, "--out", out, module="train.ensemble")
    assert result.returncode == 0, result.stderr[-3000:]
    # before train.evaluate, the folder's temperature already calibrates what it answers (a teacher reads it)
    net, spec = load_ensemble(out)
    val = prepare_splits(spec.task.load(data), spec.input_size, spec.training.get("seed", 0), None,
                         spec.codes, preprocessing=spec.preprocessing)["val"]
    answered = average(torch.from_numpy(member_outputs(net, spec, val.images, torch.device("cpu")))).numpy()
    assert spec.rule.temperature == pytest.approx(fit_temperature(answered, val.labels))
    assert spec.rule.temperature != pytest.approx(1.0)
    result = run_train("--model", out, "--data", data, "--no-explanations", "--outliers", "4",
                       module="train.evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    predictor = Predictor.from_pretrained(out)
    assert predictor.net.passes == 4 and (out / "members" / "run" / "model.safetensors").is_file()
    with (out / "predictions.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][:5]
    for row in rows:
        image = next(data.glob(f"**/{row['image_id']}.jpg"))
        analysis = predictor.analyse(image, method=None)
        assert analysis.decided == row["predicted"]
        assert analysis.probabilities["nv"] == pytest.approx(float(row["p_nv"]), abs=1e-4)


def test_the_views_are_the_eight_symmetries_of_the_square():
    """Each view is one of the square's symmetries (numpy's own rotations and mirrors), none twice."""
    from skinlesion.models.ensemble import VIEWS
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5)
    a = x[0].numpy()
    expected = {"plain": a, "hflip": a[..., ::-1], "vflip": a[:, ::-1], "rot180": np.rot90(a, 2, (1, 2)),
                "transpose": a.transpose(0, 2, 1), "rot90": np.rot90(a, 1, (1, 2)), "rot270": np.rot90(a, -1, (1, 2)),
                "antitranspose": np.rot90(a, 2, (1, 2)).transpose(0, 2, 1)}
    assert set(VIEWS) == set(expected)
    for name, view in VIEWS.items():
        assert np.array_equal(view(x)[0].numpy(), expected[name]), name
    assert len({view(x).numpy().tobytes() for view in VIEWS.values()}) == 8


def test_ablation_times_a_row_as_it_would_ship():
    """A row without the table's primary is timed with its own first model as the primary, at
    that model's size: no resizing from the table primary's input."""
    from types import SimpleNamespace

    from train.ablation import shipped_as
    nets = [(Ensemble([torch.nn.Identity()]), SimpleNamespace(input_size=size, mean=mean, std=mean))
            for size, mean in ((224, (0.5,) * 3), (160, (0.4,) * 3), (192, (0.3,) * 3))]
    net, size = shipped_as([1, 2], ("plain", "hflip"), nets, [1.0, 2.0, 3.0])
    assert size == 160 and net.sizes == [None, 192] and net.temperatures == [2.0, 3.0]
    assert net.views == ("plain", "hflip") and net.normalisations == [None, (((0.4,) * 3,) * 2, ((0.3,) * 3,) * 2)]
    assert shipped_as([0], ("plain",), nets, [1.0, 2.0, 3.0])[1] == 224


@pytest.mark.slow
def test_ablation_measures_every_lever_with_a_rule_fitted_on_validation(tiny_run, tmp_path):
    out = tmp_path / "levers.md"
    result = run_train(tiny_run / "model", tiny_run / "model", "--data", tiny_run.parent / "ham", "--out", out,
                       "--names", "first", "again", module="train.ablation")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    views = ["", " · hflip", " · hflip+vflip"]
    assert [r["lever"] for r in rows] == [f"{name}{v}" for name in ("first", "again", "first + again") for v in views]
    for row in rows:
        assert 0 <= row["val_ba"] <= 1 and 0 <= row["test_ba"] <= 1 and row["p50_ms"] > 0
        assert row["train_minutes"] is not None
    # the same model twice is the model alone: averaging equal probabilities changes nothing
    assert rows[6]["test_ba"] == pytest.approx(rows[0]["test_ba"])
    assert rows[3]["val_ba_delta"] == 0 and rows[3]["val_ba_delta_interval"] == [0, 0]  # paired draws
    assert all(r["test_ba_interval"][0] <= r["test_ba"] <= r["test_ba_interval"][1] for r in rows)
    assert out.read_text().count("\n") == 2 + len(rows)
    appended = run_train(tiny_run / "model", "--data", tiny_run.parent / "ham", "--out", out, "--names", "elsewhere",
                         "--views", "plain", "--append", module="train.ablation")  # another data folder's model
    assert appended.returncode == 0, appended.stderr[-3000:]
    both = json.loads(out.with_suffix(".json").read_text())
    assert [r["lever"] for r in both] == [r["lever"] for r in rows] + ["elsewhere"]
    assert not any("val_ba_delta" in r or "against" in r for r in both) and both[0]["test_ba"] == rows[0]["test_ba"]
    assert "val BA − " not in out.read_text() and out.read_text().count("\n") == 2 + len(both)
    refused = run_train(tiny_run / "model", "--data", tiny_run.parent / "ham", "--against", "nothing",
                        module="train.ablation")  # refused before any image is read
    assert refused.returncode != 0 and "--against 'nothing' is none of the rows: " in refused.stderr


@pytest.mark.slow  # the command line in a new process, as tests/test_push_to_hub.py
def test_push_to_hub_uploads_the_members_too(ensemble_folder, tmp_path):
    from test_push_to_hub import env_without_token, run_push
    result = run_push("--model", ensemble_folder, "--repo-id", "someone/skinlesion", "--dry-run",
                      env=env_without_token(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "members/other/model.safetensors" in result.stdout and "members/other/config.json" in result.stdout


def test_the_page_says_which_model_explains(ensemble_folder, predictor):
    from skinlesion.app.views import TaskView
    intro = TaskView.of(Predictor.from_pretrained(ensemble_folder), []).intro
    assert "averages 2 models (efficientnet_b0 at 64 px, efficientnet_b0 at 48 px)" in intro
    assert "mirror images" in intro and "the map and the similar cases come from the first" in intro
    assert "averages" not in TaskView.of(predictor, []).intro


def test_the_page_counts_one_models_mirror_views_as_passes(bundled_models):
    from skinlesion.app.views import TaskView
    intro = TaskView.of(bundled_models["ham10000"], []).intro  # one Lite0 on three views
    assert "averages 3 passes of efficientnet_lite0 at 224 px: on the image and its mirror images" in intro
    assert "1 models" not in intro
