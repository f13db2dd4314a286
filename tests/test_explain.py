"""Grad-CAM on the answer's own pass, against captum's LayerGradCam and a plain-PyTorch implementation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from skinlesion.app.views import overlay
from skinlesion.explain import last_stage, upsample_heatmap
from skinlesion.transforms import model_input


@pytest.fixture
def photo():
    rng = np.random.default_rng(1)
    image = np.full((75, 100, 3), (190, 140, 120), np.uint8)
    image[20:55, 30:70] = (80, 40, 30)
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


def plain_grad_cam(model, layer, x, index, size):
    """Textbook Grad-CAM with hooks: ReLU(Σ_k mean(dy/dA_k) · A_k), bilinear, scaled to max 1."""
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.update(a=o))
    try:
        x = x.clone().requires_grad_(True)  # parameters are frozen: the graph starts at the input
        logits = model(x)
        (grads,) = torch.autograd.grad(logits[0, index], saved["a"])
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * saved["a"]).sum(1, keepdim=True))
    up = F.interpolate(cam, size, mode="bilinear")[0, 0]
    return (up / up.max()).detach().numpy(), logits.detach()


@pytest.mark.parametrize("target", [None, "mel", "df"])
def test_grad_cam_matches_a_plain_implementation(predictor, photo, target):
    result = predictor.analyse(photo, target=target)
    x = model_input([photo], predictor.spec)
    index = predictor.codes.index(result.target)
    reference, logits = plain_grad_cam(predictor.primary, last_stage(predictor.primary), x, index, photo.shape[:2])
    if target is None:
        assert result.target == result.decided == predictor.codes[int(predictor.rule.decide(
            predictor.rule.probabilities(logits.numpy()))[0])]
    assert result.heatmap.shape == photo.shape[:2] and result.heatmap.dtype == np.float32
    assert result.heatmap.max() == pytest.approx(1) and result.heatmap.min() >= 0
    assert np.abs(result.heatmap - reference).max() < 1e-4


@pytest.mark.parametrize("target", [None, "bcc"])
def test_grad_cam_on_the_answers_pass_matches_captums_layer_grad_cam(predictor, photo, target):
    result = predictor.analyse(photo, target=target)
    x = model_input([photo], predictor.spec)
    cam = LayerGradCam(predictor.primary, last_stage(predictor.primary)).attribute(
        x, target=predictor.codes.index(result.target), relu_attributions=True).detach()
    assert np.abs(result.heatmap - upsample_heatmap(cam, photo.shape[:2])).max() < 1e-4


def test_analyse_returns_the_probabilities_of_the_same_pass(predictor, photo):
    result = predictor.analyse(photo, target="bcc")
    assert result.target == "bcc" and result.method == "Grad-CAM"
    assert result.probabilities == pytest.approx(predictor.predict(photo), abs=1e-6)
    plain = predictor.analyse(photo, method=None)  # no heat-map: the same answer
    assert plain.heatmap is None and plain.decided == result.decided and plain.verdict == result.verdict


def test_last_stage_is_the_last_block_of_efficientnet(predictor):
    assert last_stage(predictor.primary) is predictor.primary.blocks[-1]


def test_overlay_keeps_the_image_size_and_follows_opacity(predictor, photo):
    result = predictor.analyse(photo)
    shown = overlay(result.image, result.heatmap, 0.6)
    assert shown.size == (100, 75) and shown.mode == "RGB"
    assert np.array_equal(np.asarray(overlay(photo, result.heatmap, 0.0)), photo)
    hot = result.heatmap > 0.8
    changed = np.abs(np.asarray(shown).astype(int) - photo).sum(-1)
    assert changed[hot].mean() > changed[result.heatmap < 0.05].mean()


def test_unknown_target_is_a_clear_error(predictor, photo):
    from skinlesion.images import InputError
    with pytest.raises(InputError, match="unknown class 'xyz'; choose one of akiec"):
        predictor.analyse(photo, target="xyz")


@pytest.mark.parametrize("method", ["Grad-CAM", "Integrated Gradients", "Occlusion"])
def test_every_method_depends_on_the_input_and_on_the_weights(predictor, photo, method):
    """A map that stayed the same for another image, or with other weights, would explain
    nothing: each method must change with both (the sanity check's negative control)."""
    import copy

    from scipy.stats import spearmanr

    from skinlesion import Predictor
    result = predictor.analyse(photo, target="mel", method=method)
    assert result.method == method and result.heatmap.shape == photo.shape[:2]
    assert 0 <= result.heatmap.min() and result.heatmap.max() == pytest.approx(1.0)
    moved = np.roll(photo, (20, 35), axis=(0, 1))  # the dark patch elsewhere
    other_input = predictor.analyse(moved, target="mel", method=method).heatmap
    assert spearmanr(result.heatmap.ravel(), other_input.ravel())[0] < 0.9
    model = copy.deepcopy(predictor.primary)
    torch.manual_seed(1)
    for module in model.modules():  # every layer re-initialised: a model that learned nothing
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
    torch.nn.init.normal_(model.get_classifier().weight, std=0.1)
    other_weights = Predictor(model, predictor.spec).analyse(photo, target="mel", method=method).heatmap
    assert other_weights.std() == 0 or abs(spearmanr(result.heatmap.ravel(), other_weights.ravel())[0]) < 0.9


def test_unknown_method_is_refused_with_the_choices(predictor, photo):
    from skinlesion.images import InputError
    with pytest.raises(InputError, match="unknown explanation method 'LIME'.*Grad-CAM, Integrated Gradients, Occ"):
        predictor.analyse(photo, method="LIME")
