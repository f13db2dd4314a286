"""Colour constancy (skinlesion/colour.py): the step a model folder names in `preprocessing`."""
import numpy as np
import pytest

from skinlesion.colour import MINKOWSKI_P, SHADES_OF_GRAY, apply, preprocessing_config, shades_of_gray
from skinlesion.tasks import get_task

CODES = get_task("ham10000").codes


def texture(seed: int = 0) -> np.ndarray:
    """A lesion-like image: a darker brown blob on skin, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:90, :120]
    blob = ((y - 45) ** 2 + (x - 60) ** 2 < 900)[..., None]
    skin, lesion = np.array([200, 150, 130]), np.array([110, 70, 50])
    return np.clip(np.where(blob, lesion, skin) + rng.normal(0, 12, (90, 120, 3)), 0, 255).astype(np.uint8)


def minkowski_means(image: np.ndarray) -> np.ndarray:
    return np.power(np.mean(np.power(image.astype(np.float64), MINKOWSKI_P), axis=(0, 1)), 1 / MINKOWSKI_P)


def test_shades_of_gray_removes_a_colour_cast():
    image = texture()
    cast = np.clip(image * np.array([0.75, 0.95, 1.25]), 0, 255).astype(np.uint8)  # a bluer dermatoscope
    corrected, corrected_cast = shades_of_gray(image), shades_of_gray(cast)
    assert corrected.dtype == np.uint8 and corrected.shape == image.shape
    before = np.abs(image.astype(int) - cast.astype(int)).mean()
    after = np.abs(corrected.astype(int) - corrected_cast.astype(int)).mean()
    assert after < before / 4
    means = minkowski_means(corrected)  # the illuminant estimate is grey afterwards
    assert means.max() - means.min() < 0.02 * means.mean()


def test_gains_average_one_so_brightness_stays_and_grey_images_are_unchanged():
    image = texture(1)
    assert abs(shades_of_gray(image).astype(float).mean() - image.astype(float).mean()) < 0.1 * image.mean()
    grey = np.repeat(texture(2)[..., :1], 3, axis=2)  # steel and other grey images: gains all 1
    assert np.array_equal(shades_of_gray(grey), grey)
    black = np.zeros((8, 8, 3), np.uint8)
    black[..., 0] = 200  # no light in two channels: nothing to estimate, the image is kept
    assert np.array_equal(shades_of_gray(black), black)
    with pytest.raises(ValueError, match="RGB uint8"):
        shades_of_gray(image.astype(np.float32))


def test_apply_follows_the_model_folders_preprocessing_entry():
    image = texture()
    assert apply(image, None) is image and apply(image, {}) is image
    assert apply(image, {"colour_constancy": "none"}) is image
    entry = preprocessing_config("shades_of_gray")
    assert entry == {"colour_constancy": "shades_of_gray", "p": 6}
    assert np.array_equal(apply(image, entry), shades_of_gray(image))
    assert not np.array_equal(apply(image, {**entry, "p": 1}), apply(image, entry))  # p is read, not assumed
    assert preprocessing_config("none") is None
    with pytest.raises(ValueError, match="unknown colour constancy"):
        apply(image, {"colour_constancy": "retinex"})


def test_training_and_evaluation_decode_through_the_same_step(tmp_path):
    from conftest import make_ham_folder

    from skinlesion.data import read_rgb
    from skinlesion.tasks.dermoscopy import load_ham10000
    from skinlesion.transforms import resizer
    from train.splits import prepare_splits
    records = load_ham10000(make_ham_folder(tmp_path / "ham", per_class=3, images_per_lesion=1))[:6]
    split = {r.image_id: "val" for r in records}
    entry = preprocessing_config("shades_of_gray")
    part = prepare_splits(records, 32, 0, None, CODES, split, workers=1, preprocessing=entry,
                          names=("val",))["val"]
    expected = [resizer(32)(shades_of_gray(read_rgb(r.path))) for r in part.records]  # before the resize
    assert all(np.array_equal(a, b) for a, b in zip(part.images, expected))
    plain = prepare_splits(records, 32, 0, None, CODES, split, workers=1, names=("val",))["val"]
    assert not all(np.array_equal(a, b) for a, b in zip(part.images, plain.images))


def test_serving_sees_the_image_through_the_folders_preprocessing(model_folder, tmp_path):
    """A folder trained with colour constancy answers for an image as the same weights without
    the step answer for the corrected image; the page still shows the image as it was sent."""
    import shutil

    from skinlesion import Predictor
    from skinlesion.models.spec import update_config
    folder = tmp_path / "cc"
    shutil.copytree(model_folder, folder)
    update_config(folder, preprocessing=preprocessing_config(SHADES_OF_GRAY))
    rng = np.random.default_rng(3)
    cast = np.clip(rng.normal(120, 30, (60, 80, 3)) * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)
    with_step, without = Predictor.from_pretrained(folder), Predictor.from_pretrained(model_folder)
    analysis = with_step.analyse(cast, method=None)
    assert np.array_equal(analysis.image, cast)
    assert analysis.probabilities == pytest.approx(without.predict(shades_of_gray(cast)), abs=1e-6)
    assert np.abs(shades_of_gray(cast).astype(int) - cast).mean() > 10  # the step changes what the model sees
