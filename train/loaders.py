"""Batches of a split for training and evaluation: which images make each batch (one process
or a rank's shard under torchrun), the loader with its seeded augmentations, and a forward pass
over a loader."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    get_worker_info,
)

from skinlesion.data import ImageDataset
from skinlesion.transforms import normalize

from .splits import SplitData


def seed_worker(_: int) -> None:
    """Each loader worker draws its augmentations from its own seed (set by the loader)."""
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def batch_order(n: int, batch_size: int, shuffle: bool, seed: int, shard: tuple[int, int] | None,
                generator: torch.Generator) -> BatchSampler:
    """Which of `n` images make each batch; shuffled batches are all full. One process: every
    image, shuffled by `generator` or in order. Under torchrun, `shard` = (rank, world size):
    this rank's share through a DistributedSampler that every rank seeds alike. Shuffled, the
    shards are disjoint (the last world-size-1 images of an epoch's order may be left out) and
    reshuffled by `set_epoch`; unshuffled, every image is kept (padded with repeats, which
    train.distributed.Ranks.gather_rows removes)."""
    if shard is not None:
        rank, world_size = shard
        sampler = DistributedSampler(range(n), world_size, rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
    elif shuffle:
        sampler = RandomSampler(range(n), generator=generator)
    else:
        sampler = SequentialSampler(range(n))
    return BatchSampler(sampler, batch_size, drop_last=shuffle and len(sampler) > batch_size)


def rank_seed(seed: int, shard: tuple[int, int] | None) -> int:
    """The seed of this rank's augmentations: the shuffle is shared, the augmentations are not."""
    return seed + (shard[0] if shard else 0)


def make_loader(data: SplitData, transform, batch_size: int, workers: int, shuffle: bool,
                seed: int = 0, pin_memory: bool = False, shard: tuple[int, int] | None = None) -> DataLoader:
    """Batches through `workers` loader processes, in `batch_order`."""
    dataset = ImageDataset(data.images, data.labels, transform)
    own = rank_seed(seed, shard)
    transform.set_random_seed(own)  # used as is when workers == 0
    generator = torch.Generator().manual_seed(own)  # the shuffle of one process, the workers' seeds
    return DataLoader(dataset, batch_sampler=batch_order(len(dataset), batch_size, shuffle, seed, shard, generator),
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                      worker_init_fn=seed_worker, prefetch_factor=4 if workers > 0 else None, generator=generator)


def to_input(batch: torch.Tensor, device: torch.device, mean, std, channels_last: bool) -> torch.Tensor:
    x = normalize(batch.to(device, non_blocking=True), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> np.ndarray:
    """Float32 logits for every image in `loader`, in order."""
    cfg = model.pretrained_cfg
    model.eval()
    outputs = []
    for batch, _ in loader:
        x = to_input(batch, device, cfg["mean"], cfg["std"], channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, model.num_classes), np.float32)
