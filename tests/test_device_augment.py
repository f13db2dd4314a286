"""The device augmentation path (train/device_augment.py) keeps train_transform's semantics."""
import json

import albumentations.augmentations.pixel.functional as AF
import numpy as np
import pytest
import torch
from conftest import make_ham_folder, run_train

from skinlesion.transforms import Augmentation, train_transform
from train.device_augment import DeviceBatches, _contrast, _hue, _saturation, augment, geometry
from train.splits import SplitData

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def as_batch(image: np.ndarray, n: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.stack([image] * n)).permute(0, 3, 1, 2).contiguous()


def as_image(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("op, reference, factor", [
    (_hue, AF.adjust_hue_torchvision, 0.03), (_hue, AF.adjust_hue_torchvision, -0.4),
    (_contrast, AF.adjust_contrast_torchvision, 0.8), (_saturation, AF.adjust_saturation_torchvision, 0.85),
    (_saturation, AF.adjust_saturation_torchvision, 1.15)])
def test_colour_steps_use_albumentations_formulas(op, reference, factor):
    ours = op(as_batch(IMAGE).float(), torch.tensor([factor]).view(-1, 1, 1, 1))[0].clamp(0, 255)
    theirs = reference(IMAGE.astype(np.float32) / 255, factor) * 255  # its float path: no uint8 rounding
    assert np.abs(as_image(ours) - theirs).max() < 0.01


def test_the_pose_is_one_of_the_eight_dihedral_poses_drawn_evenly():
    poses = [np.rot90(IMAGE[:, ::-1] if flip else IMAGE, k) for flip in (0, 1) for k in range(4)]
    out = geometry(as_batch(IMAGE, 800).float(), Augmentation(strength=0.0), torch.Generator().manual_seed(0)).round()
    found = [next(i for i, pose in enumerate(poses) if np.array_equal(as_image(o), pose)) for o in out]
    counts = np.bincount(found, minlength=8)
    assert counts.min() > 800 / 8 * 0.7  # every pose, none much rarer than 1/8


def test_whole_pipeline_matches_albumentations_statistics():
    """The same image through train_transform and through augment, 2000 times each: how often it
    comes out as a pure pose (no affine, no colour, no noise: 0.3 × 0.2 × 0.7 = 0.042), and how
    the brightness, contrast and red-blue balance of the results spread."""
    image = np.clip(np.linspace(30, 220, 48)[None, :, None] + RNG.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
    poses = [np.rot90(image[:, ::-1] if flip else image, k) for flip in (0, 1) for k in range(4)]
    transform = train_transform(48)
    transform.set_random_seed(0)
    theirs = np.stack([transform(image=image)["image"].permute(1, 2, 0).numpy() for _ in range(2000)])
    ours = augment(as_batch(image, 2000), Augmentation(), torch.Generator().manual_seed(0)).permute(0, 2, 3, 1).numpy()

    def pure(images):
        return np.mean([any(np.array_equal(i, p) for p in poses) for i in images])
    assert pure(theirs) == pytest.approx(0.042, abs=0.01) and pure(ours) == pytest.approx(0.042, abs=0.01)
    for stat in (lambda a: a.mean((1, 2, 3)), lambda a: a.std((1, 2, 3)),
                 lambda a: a[..., 0].mean((1, 2)) - a[..., 2].mean((1, 2))):
        t, o = stat(theirs.astype(float)), stat(ours.astype(float))
        assert o.mean() == pytest.approx(t.mean(), rel=0.02, abs=0.1)
        assert o.std() == pytest.approx(t.std(), rel=0.1)


def test_augment_gives_each_image_its_own_draws_and_is_seeded():
    batch = as_batch(IMAGE, 16)
    a = augment(batch, Augmentation(), torch.Generator().manual_seed(1))
    b = augment(batch, Augmentation(), torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == batch.shape and torch.equal(a, b)
    assert len({bytes(x.numpy()) for x in a}) == 16


def test_device_batches_shard_like_the_loader():
    data = SplitData([], [np.full((8, 8, 3), i, np.uint8) for i in range(50)], np.arange(50) % 7)
    shards = [DeviceBatches(data, torch.device("cpu"), 8, True, None, seed=3, shard=(r, 2)) for r in (0, 1)]
    for epoch in (1, 2):
        seen = []
        for shard in shards:
            shard.batch_sampler.sampler.set_epoch(epoch)
            seen.append({int(x[0, 0, 0]) for batch, labels in shard for x in batch})
            assert all(torch.equal(labels, batch[:, 0, 0, 0].long() % 7) for batch, labels in shard)
        assert len(seen[0]) == len(seen[1]) == 24 and not seen[0] & seen[1]  # 25 per rank, full batches of 8
    val = DeviceBatches(data, torch.device("cpu"), 16, False, None)
    assert torch.equal(torch.cat([b[:, 0, 0, 0] for b, _ in val]), torch.arange(50, dtype=torch.uint8))


@pytest.mark.slow
def test_training_with_device_augmentation_end_to_end(tmp_path):
    data = make_ham_folder(tmp_path / "ham", per_class=20)
    result = run_train("--data", data, "--out", tmp_path / "run", "--epochs", "2", "--image-size", "32",
                       "--batch-size", "16", "--workers", "0", "--augment-on", "device", "--no-explanations")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "first step done" in result.stderr and "augmented on the device" in result.stderr
    history = json.loads((tmp_path / "run/metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["first_step_s"] > 0 for h in history)
    config = json.loads((tmp_path / "run/model/config.json").read_text())
    assert config["training"]["augment_on"] == "device"


def test_one_augmentation_object_drives_both_pipelines():
    """With the affine, the colour jitter and the noise / blur turned off in the one settings
    object, both pipelines give nothing but the eight poses."""
    poses_only = Augmentation(affine_p=0.0, colour_p=0.0, noise_or_blur_p=0.0)
    poses = [np.rot90(IMAGE[:, ::-1] if flip else IMAGE, k) for flip in (0, 1) for k in range(4)]
    transform = train_transform(32, poses_only)
    transform.set_random_seed(0)
    theirs = [transform(image=IMAGE)["image"].permute(1, 2, 0).numpy() for _ in range(40)]
    ours = augment(as_batch(IMAGE, 40), poses_only, torch.Generator().manual_seed(0)).permute(0, 2, 3, 1).numpy()
    for images in (theirs, ours):
        assert all(any(np.array_equal(i, p) for p in poses) for i in images)
