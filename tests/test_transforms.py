import numpy as np
import torch

from skinlesion.transforms import Augmentation, eval_transform, normalize, resizer, train_transform


def test_train_transform_keeps_size_and_dtype_and_varies():
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    transform = train_transform(64)
    transform.set_random_seed(0)
    outputs = [transform(image=image)["image"] for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.uint8 for o in outputs)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_eval_transform_squashes_the_whole_image_without_crop():
    image = np.zeros((150, 200, 3), np.uint8)
    image[:, :10] = 255   # a bright stripe on the left border survives (no centre crop)
    out = eval_transform(64)(image=image)["image"]
    assert out.shape == (3, 64, 64)
    assert out[:, :, 0].float().mean() > 200 and out[:, :, -1].float().mean() < 5
    # the cache's resize is the same pixels as the eval pipeline's
    assert np.array_equal(resizer(64)(image), out.permute(1, 2, 0).numpy())


def test_normalize_matches_the_formula():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (batch.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(batch, mean, std), expected, atol=1e-5)


def test_augmentation_strength_scales_the_ranges():
    half = Augmentation(strength=0.5)
    assert half.scale_range == (1 - 0.075, 1 + 0.075) and half.rotate_range == (-10.0, 10.0)
    assert half.translate_range == (-0.025, 0.025) and half.jitter == (0.1, 0.1, 0.075, 0.015)
    assert half.noise_std_range == (0.01, 0.02)  # the upper std only, as train_transform always did
    assert Augmentation(strength=0.0).rotate_range == (0.0, 0.0)


def test_no_acquisition_shift_is_the_pipeline_as_it_was():
    image = np.random.default_rng(1).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    plain, zero = train_transform(64), train_transform(64, Augmentation(shift=0.0))
    assert [type(t) for t in plain.transforms] == [type(t) for t in zero.transforms]
    plain.set_random_seed(3)
    zero.set_random_seed(3)
    for _ in range(5):
        assert torch.equal(plain(image=image)["image"], zero(image=image)["image"])
    assert Augmentation(shift=0.0).jitter == Augmentation().jitter


def test_acquisition_shift_adds_its_steps_and_keeps_the_output_format():
    from albumentations import Downscale, ImageCompression, RandomResizedCrop, Sharpen
    a = Augmentation(shift=1.0)
    transform = train_transform(64, a)
    names = repr(transform)
    for step in (RandomResizedCrop, Downscale, Sharpen, ImageCompression):
        assert step.__name__ in names
    assert "CircularVignette" in names
    assert a.jitter[0] > Augmentation().jitter[0] and a.jitter[3] == Augmentation().jitter[3]  # hue kept
    assert Augmentation(shift=5.0).shifted_p(a.zoom_p) == 1.0
    transform.set_random_seed(0)
    image = np.random.default_rng(2).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    outputs = [transform(image=image)["image"] for _ in range(8)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.uint8 for o in outputs)


def test_circular_vignette_darkens_the_corners_only():
    from skinlesion.transforms import CircularVignette
    image = np.full((60, 80, 3), 200, np.uint8)
    out = CircularVignette(radius=(1.0, 1.0), p=1.0)(image=image)["image"]
    assert out[0, 0].max() == 0 and out[-1, -1].max() == 0
    assert (out[25:35, 35:45] == 200).all() and out.dtype == np.uint8
