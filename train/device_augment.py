"""Training batches made on the accelerator (--augment-on device): the split's uint8 images are
put on the device once, and each batch is indexed and augmented there, per image, with the
draws of skinlesion.transforms.train_transform. No loader workers: nothing to start, nothing to
copy per step, so one GPU is not kept waiting by its CPU (docs/training.md).

The same augmentations, with the same probabilities and ranges (one `Augmentation` feeds
both); what differs:
- the pose and the affine are one bilinear resampling (F.grid_sample) instead of two; the
  border reflects about the edge (cv2's BORDER_REFLECT) rather than about the edge pixel
  (BORDER_REFLECT_101), which differs by one pixel at the border;
- pixels stay float between the steps and are rounded to uint8 once at the end, where
  albumentations rounds after each step; the translation is not rounded to whole pixels;
tests/test_device_augment.py checks the colour formulas against albumentations' own functions
and the whole pipeline's output statistics against train_transform's on the same image.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from skinlesion.transforms import Augmentation

from .loaders import batch_order, rank_seed
from .splits import SplitData

GRAY = (0.299, 0.587, 0.114)  # cv2's RGB → gray weights, as albumentations' colour jitter uses


class DeviceBatches:
    """A drop-in for the training / validation DataLoader: yields (uint8 NCHW batch, labels),
    both already on `device`, in the same `batch_order` as the loader's."""

    def __init__(self, data: SplitData, device: torch.device, batch_size: int, shuffle: bool,
                 augmentation: Augmentation | None, seed: int = 0, shard: tuple[int, int] | None = None):
        self.images = torch.from_numpy(np.stack(data.images)).permute(0, 3, 1, 2).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)
        self.augmentation = augmentation  # None: no augmentation (validation)
        own = rank_seed(seed, shard)
        self.batch_sampler = batch_order(len(self.labels), batch_size, shuffle, seed, shard,
                                         torch.Generator().manual_seed(own))
        self.generator = torch.Generator(device).manual_seed(own)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for indices in self.batch_sampler:
            index = torch.as_tensor(indices, device=self.images.device)
            batch = self.images[index]
            if self.augmentation is not None:
                batch = augment(batch, self.augmentation, self.generator)
            yield batch, self.labels[index]


def augment(batch: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """uint8 NCHW → uint8 NCHW, each image with its own draws (see the module docstring)."""
    x = batch.float()
    x = geometry(x, augmentation, generator)
    x = colour_jitter(x, augmentation, generator)
    x = noise_or_blur(x, augmentation, generator)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _chance(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def geometry(x: torch.Tensor, a: Augmentation, g: torch.Generator) -> torch.Tensor:
    """HorizontalFlip, VerticalFlip, RandomRotate90, then Affine (p a.affine_p): scale x and y apart,
    translation x and y apart, rotation about the centre; one resampling for all of them."""
    n, device = len(x), x.device
    one = torch.ones(n, device=device)
    # the pose: a dihedral matrix on normalised coordinates (exact on the pixel grid)
    flip_x = torch.where(_chance(n, 0.5, g, device), -one, one)
    flip_y = torch.where(_chance(n, 0.5, g, device), -one, one)
    quarter = torch.randint(0, 4, (n,), generator=g, device=device) * (math.pi / 2)
    pose = _rotation(quarter) @ torch.diag_embed(torch.stack([flip_x, flip_y], 1))
    # the affine, or the identity for the images it skips
    applied = _chance(n, a.affine_p, g, device)
    scale = torch.stack([_uniform(n, *a.scale_range, g, device) for _ in range(2)], 1)
    shift = torch.stack([_uniform(n, *a.translate_range, g, device) for _ in range(2)], 1) * 2  # ±1 = half a side
    angle = _uniform(n, *a.rotate_range, g, device) * (math.pi / 180)
    scale, shift = torch.where(applied[:, None], scale, 1.0), torch.where(applied[:, None], shift, 0.0)
    angle = torch.where(applied, angle, 0.0)
    forward = _rotation(angle) @ torch.diag_embed(scale) @ pose  # input → output coordinates
    inverse = torch.linalg.inv(forward)  # grid_sample asks, for each output pixel, where to read
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def colour_jitter(x: torch.Tensor, a: Augmentation, g: torch.Generator) -> torch.Tensor:
    """ColorJitter (p a.colour_p): brightness, contrast, saturation and hue, in an order drawn for
    each image, with albumentations' formulas; the images it skips get the identity factors."""
    n, device = len(x), x.device
    applied = _chance(n, a.colour_p, g, device)
    *spreads, hue = a.jitter
    factors = [torch.where(applied, _uniform(n, 1 - b, 1 + b, g, device), 1.0) for b in spreads]
    factors.append(torch.where(applied, _uniform(n, -hue, hue, g, device), 0.0))
    ops = (_brightness, _contrast, _saturation, _hue)
    order = torch.rand(n, 4, generator=g, device=device).argsort(1)
    for position in range(4):
        for k, op in enumerate(ops):
            chosen = (order[:, position] == k).nonzero().squeeze(1)
            if len(chosen):
                x[chosen] = op(x[chosen], factors[k][chosen].view(-1, 1, 1, 1)).clamp_(0, 255)
    return x


def _brightness(x, f):
    return x * f


def _contrast(x, f):
    return x * f + _gray(x).mean((2, 3), keepdim=True) * (1 - f)


def _saturation(x, f):
    return x * f + _gray(x) * (1 - f)


def _hue(x, f):
    """Rotate the hue by f of the full circle (HSV), as cv2's conversion does."""
    r, g_, b = x.unbind(1)
    value, _ = x.max(1)
    low, _ = x.min(1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, 1.0)
    hue = torch.where(value == r, ((g_ - b) / safe) % 6,
                      torch.where(value == g_, (b - r) / safe + 2, (r - g_) / safe + 4))
    hue = torch.where(chroma > 0, hue, 0.0) / 6 + f.view(-1, 1, 1)
    hue = (hue % 1.0) * 6
    k = torch.stack([(5 + hue) % 6, (3 + hue) % 6, (1 + hue) % 6], 1)  # HSV → RGB, one formula per channel
    return value[:, None] - chroma[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def noise_or_blur(x: torch.Tensor, a: Augmentation, g: torch.Generator) -> torch.Tensor:
    """OneOf([GaussNoise(std a.noise_std_range of 255, per channel), GaussianBlur(a.blur_taps,
    a.blur_sigma)], p a.noise_or_blur_p)."""
    n, device = len(x), x.device
    applied = _chance(n, a.noise_or_blur_p, g, device)
    noisy = applied & _chance(n, 0.5, g, device)
    blurred = (applied & ~noisy).nonzero().squeeze(1)
    std = _uniform(n, *a.noise_std_range, g, device) * 255 * noisy
    x = x + torch.randn(x.shape, generator=g, device=device) * std.view(-1, 1, 1, 1)
    if len(blurred):
        x[blurred] = _blur(x[blurred], a, g)
    return x.clamp_(0, 255)


def _blur(x: torch.Tensor, a: Augmentation, g: torch.Generator) -> torch.Tensor:
    """A separable Gaussian per image, its taps drawn as albumentations draws them: every count
    of a.blur_taps alike, an even one made odd (3, 4 or 5 taps: 3 a third of the time, else 5);
    a narrower kernel is the widest one with zeros outside. The border is reflected about the
    edge pixel, as cv2 does."""
    n, c, h, w = x.shape
    device = x.device
    sigma = _uniform(n, *a.blur_sigma, g, device)
    low, high = a.blur_taps
    taps = (low + torch.rand(n, generator=g, device=device) * (high - low + 1)).floor().long() | 1
    half = (high | 1) // 2
    offsets = torch.arange(-half, half + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-(offsets ** 2) / (2 * sigma[:, None] ** 2)) * (offsets.abs() <= taps[:, None] // 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one per image and channel
    flat = F.pad(x.reshape(1, n * c, h, w), (half,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, 2 * half + 1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 2 * half + 1, 1), groups=n * c)
    return flat.view(n, c, h, w)
