"""What training and evaluation share: device and precision choice, datasets in memory,
loaders, and a forward pass over a loader."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

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

from skinlesion.colour import apply as preprocess
from skinlesion.data import SPLITS, ImageDataset, Record, load_images, read_split, split_records, stratified_subset
from skinlesion.transforms import normalize, resizer

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    records: list[Record]
    images: list[np.ndarray]  # RGB uint8, already at the model's input size
    labels: np.ndarray        # class indices in the model's label order


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """bf16 where the hardware has it (no loss scaling needed), else fp16 on CUDA; None = fp32.
    `amp=None` means: on for CUDA, off for CPU (CPU autocast is slower on most CPUs)."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def prepare_splits(records: list[Record], image_size: int, seed: int, max_samples: int | None,
                   codes: Sequence[str], split: Mapping[str, str] | Path | None = None,
                   workers: int = 4, preprocessing: dict | None = None,
                   names: Sequence[str] = SPLITS) -> dict[str, SplitData]:
    """Split (image id → split name, given or read from a split.csv; None: lesion-grouped for
    `seed`), optionally subsample each split to its share of `max_samples`, then decode, apply
    the model's `preprocessing` (skinlesion/colour.py: on the full image, as serving does) and
    resize every image once. `names`: the splits to make (any split name of the file)."""
    if not isinstance(split, Mapping):
        split = read_split(split) if split else split_records(records, seed)
    codes = list(codes)
    resize = resizer(image_size)
    out = {}
    for name in names:
        members = [r for r in records if split.get(r.image_id) == name]
        if max_samples:
            members = stratified_subset(members, round(max_samples * len(members) / len(records)), seed)
        kept, images = load_images(members, lambda rgb: resize(preprocess(rgb, preprocessing)), workers)
        out[name] = SplitData(kept, images, np.array([codes.index(r.label) for r in kept], dtype=np.int64))
    return out


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


def folder_arguments(prog: str, doc: str) -> argparse.ArgumentParser:
    """The arguments of the programs that read a model folder and its task's data."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--split", type=Path, help="split.csv of the training run (default: remake it)")
    return p
