"""A model's classifier trained again on its frozen features (decoupled classifier re-training,
cRT: Kang et al. 2020, "Decoupling representation and classifier for long-tailed recognition"):
the network's features stay, the last linear layer learns again under other class weights, so
that the rare classes may get more of the decision at no cost per image.

    python -m train.head --model assets/models/ham10000 --data ../shared/data/ham10000 \\
        --extra-data ../shared/data/dermoscopy_external --class-weights inverse --out runs/head/model
    python -m train.ensemble --primary runs/head/model --views plain hflip vflip ... (then train.evaluate)

The features are the pooled ones the classifier reads (timm's pre-logits) of the folder's own
training split (the task's split from the folder's seed, or the run's `--split` file, with
--extra-data's training part as the run had it): the images as they are, and `--passes` more
times through the run's own augmentation (its strength and acquisition shift from config.json),
so the head sees what the network saw in training, not only the images it has learnt to
separate. The head starts from the folder's (the network's features were learnt for it) and
learns for `--epochs` with AdamW on the cross-entropy under the given class weights and label
smoothing. Nothing is chosen on validation or test here: the folder is measured as any other
(train.ablation; or train.ensemble then train.evaluate fit its rule). Writes a single-model
folder: the weights with the new head, and config.json with the source's training record plus
`head` (the source, its sha256, the settings).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import albumentations as A
import numpy as np
import torch

from skinlesion.data import read_split, split_records
from skinlesion.models.ensemble import VIEWS
from skinlesion.models.network import WEIGHTS_FILE, load_model_folder, save_model_folder
from skinlesion.models.spec import ModelSpec
from skinlesion.ops.record import sha256
from skinlesion.transforms import Augmentation, model_input, train_transform

from .device import pick_device
from .ensemble import run_name
from .loop import class_weights
from .sources import with_sources
from .splits import folder_arguments, prepare_splits

log = logging.getLogger("train.head")
BATCH = 64


@torch.no_grad()
def features(model: torch.nn.Module, spec: ModelSpec, images: Sequence[np.ndarray], device: torch.device,
             view: str = "plain") -> torch.Tensor:
    """The pooled features the classifier reads, for RGB images at the model's input size, seen
    through one of the ensemble's mirror views."""
    model = model.to(device, memory_format=torch.channels_last).eval()
    parts = [model.forward_head(model.forward_features(VIEWS[view](model_input(images[i:i + BATCH], spec, device))),
                                pre_logits=True).float().cpu() for i in range(0, len(images), BATCH)]
    return torch.cat(parts)


def run_transform(spec: ModelSpec) -> A.Compose:
    """The folder's run's training augmentation (its strength and acquisition shift from config.json)."""
    t = spec.training
    return train_transform(spec.input_size, Augmentation(strength=t.get("aug_strength", 1.0),
                                                         shift=t.get("aug_shift", 0.0)))


def augmented(images: Sequence[np.ndarray], spec: ModelSpec, seed: int) -> list[np.ndarray]:
    """Each image once through the run's training augmentation, back to an RGB array."""
    transform = run_transform(spec)
    transform.set_random_seed(seed)
    return [transform(image=rgb)["image"].permute(1, 2, 0).numpy() for rgb in images]


def fit_head(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, epochs: int,
             lr: float, smoothing: float, seed: int, groups: list[dict] | None = None) -> torch.nn.Module:
    """`head` trained in place on (features, labels): AdamW, batches of 256, weighted cross-entropy
    (`groups`: AdamW's parameter groups, where parts of the head learn at other rates).
    Written here rather than with scikit-learn's LogisticRegression because it starts from the
    network's own head and weighs the classes as training does (train/loop.class_weights)."""
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=smoothing)
    optimiser = torch.optim.AdamW(groups or head.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), 256):
                pick = order[start:start + 256]
                loss = loss_fn(head(x[pick]), y[pick])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return head


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments("python -m train.head", __doc__)
    p.add_argument("--extra-data", type=Path, help="the run's --extra-data: their training part trains the head too")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--passes", type=int, default=6,
                   help="augmented passes over the training split, beside the plain one")
    p.add_argument("--class-weights", choices=["inverse", "inverse-sqrt", "none"], default="inverse")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0, help="the augmentation's and the batches' order (not the split's)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.passes < 0 or args.epochs < 1:
        p.error("--passes must be 0 or more and --epochs 1 or more")
    model, spec = load_model_folder(args.model)
    device = pick_device(args.device)
    records = spec.task.load(args.data)
    split = read_split(args.split) if args.split else split_records(records, spec.training.get("seed", 0))
    records, split, _ = with_sources(records, args.extra_data, spec.task, split)
    train = prepare_splits(records, spec.input_size, spec.training.get("seed", 0), None, spec.codes, split,
                           preprocessing=spec.preprocessing, names=("train",))["train"]
    log.info("%d training images; %d augmented passes", len(train.labels), args.passes)
    x = torch.cat([features(model, spec, train.images, device)]
                  + [features(model, spec, augmented(train.images, spec, args.seed + k), device)
                     for k in range(args.passes)])
    y = torch.as_tensor(np.tile(train.labels, args.passes + 1))
    weights = class_weights(train.labels, spec.num_classes, args.class_weights)
    head = model.get_classifier().cpu().float()
    fit_head(head, x, y, weights, args.epochs, args.lr, args.label_smoothing, args.seed)
    record = {"folder": run_name(args.model), "sha256": sha256(args.model / WEIGHTS_FILE),
              "images": len(train.labels), "passes": args.passes, "class_weights": args.class_weights,
              "label_smoothing": args.label_smoothing, "epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    save_model_folder(model, args.out, spec.task, extra={"training": {**spec.training, "head": record},
                                                        "preprocessing": spec.preprocessing})
    log.info("wrote %s: %s's network with its classifier trained again (%s class weights)", args.out,
             record["folder"], args.class_weights)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
