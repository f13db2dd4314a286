"""The reference gallery's thumbnails, its retrieval figures, and the examples that ship.

    python -m train.gallery --model DIR --data DIR [--split split.csv] [--examples]

`python -m train.evaluate` chooses the gallery (a class-balanced subset of the training split,
train/trust.py) and stores its features and image ids in reference.safetensors; it then calls
`make_gallery`, which writes gallery.safetensors beside it — one JPEG thumbnail per case (the
long side THUMBNAIL px), the ids, and how each diagnosis was confirmed (the task's
`confirmations`) — and measures retrieval on the test split into metrics.json
("similar_cases"): precision@10 (the share of the 10 nearest gallery images with the image's
true class) and the balanced accuracy of the 10 neighbours' vote, plain and divided by the
gallery's class shares, beside the classifier's. Run alone, this program does the same for a
model folder evaluated before the gallery existed (one forward pass over the test split).

With --examples it also copies one test-split image per class into assets/examples/TASK/
(CODE.jpg), the clickable examples of a page with no data folder: for each class, the first
test image by id that the input check lets through.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from skinlesion.data import read_rgb
from skinlesion.models.card import CARD_FILE, METRICS_FILE, read_metrics, render_card
from skinlesion.models.ensemble import load_ensemble
from skinlesion.models.folder import write_atomically, write_json, write_text
from skinlesion.models.spec import ModelSpec, read_spec
from skinlesion.tasks.base import ASSETS
from skinlesion.trust.check import REFERENCE_FILE, InputCheck, normalised
from skinlesion.trust.gallery import GALLERY_FILE

from .device import pick_device
from .splits import SplitData, folder_arguments, prepare_splits
from .trust import forward_all

log = logging.getLogger("train.gallery")
THUMBNAIL = 112        # pixels on the long side: enough to compare, small enough to ship ~1,500
JPEG_QUALITY = 85
AT = 10                # precision@10, a 10-neighbour vote
EXAMPLES = ASSETS / "examples"


def gallery_ids(model_dir: Path) -> list[str]:
    with safe_open(str(model_dir / REFERENCE_FILE), "pt") as f:
        return json.loads(f.metadata()["gallery_ids"])


def thumbnail_bytes(path: Path) -> bytes:
    image = Image.fromarray(read_rgb(path))
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_gallery(model_dir: Path, spec: ModelSpec, train: SplitData, data_root: Path | None) -> int:
    """gallery.safetensors for the ids in reference.safetensors; returns its size in bytes."""
    ids = gallery_ids(model_dir)
    records = {r.image_id: r for r in train.records}
    confirmed = spec.task.confirmations(data_root) if data_root is not None else {}
    jpegs = [thumbnail_bytes(records[i].path) for i in ids]
    offsets = torch.tensor(np.cumsum([0, *map(len, jpegs)]), dtype=torch.int64)
    tensors = {"thumbnails": torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8), "offsets": offsets}
    metadata = {"ids": json.dumps(ids),
                "confirmations": json.dumps([spec.task.confirmation(confirmed, i) for i in ids])}
    write_atomically(model_dir / GALLERY_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return (model_dir / GALLERY_FILE).stat().st_size


def retrieval_report(model_dir: Path, codes: list[str], test_pooled: torch.Tensor, test_labels: np.ndarray,
                     decided: np.ndarray | None = None) -> dict:
    """Precision@10 and the 10-neighbour vote on the test split against the stored gallery."""
    from sklearn.metrics import balanced_accuracy_score
    with safe_open(str(model_dir / REFERENCE_FILE), "pt") as f:
        features, labels = normalised(f.get_tensor("gallery.features").float()), f.get_tensor("gallery.labels").numpy()
    nearest = (normalised(test_pooled) @ features.T).topk(min(AT, len(labels)), dim=1).indices.numpy()
    neighbour_labels = labels[nearest]
    votes = np.stack([(neighbour_labels == k).sum(1) for k in range(len(codes))], axis=1).astype(float)
    shares = np.maximum(np.bincount(labels, minlength=len(codes)) / len(labels), 1e-9)
    report = {"gallery_size": int(len(labels)), "k": AT,
              "precision_at_10": float((neighbour_labels == test_labels[:, None]).mean()),
              "vote_balanced_accuracy": float(balanced_accuracy_score(test_labels, votes.argmax(1))),
              "vote_balanced_accuracy_share_corrected": float(balanced_accuracy_score(
                  test_labels, (votes / shares).argmax(1))),
              "gallery_per_class": {c: int((labels == k).sum()) for k, c in enumerate(codes)}}
    if decided is not None:
        report["classifier_balanced_accuracy"] = float(balanced_accuracy_score(test_labels, decided))
        report["vote_agrees_with_classifier"] = float((votes.argmax(1) == decided).mean())
    return report


def make_gallery(model_dir: Path, spec: ModelSpec, splits: dict[str, SplitData], test_pooled: torch.Tensor,
                 decided: np.ndarray, data_root: Path | None) -> dict:
    """Thumbnails and retrieval figures of a model folder whose reference.safetensors exists."""
    size = write_gallery(model_dir, spec, splits["train"], data_root)
    report = retrieval_report(model_dir, list(spec.codes), test_pooled, splits["test"].labels, decided)
    report["files_mb"] = round((size + (model_dir / REFERENCE_FILE).stat().st_size) / 1e6, 2)
    return report


def write_examples(spec: ModelSpec, test: SplitData, known: np.ndarray, folder: Path = EXAMPLES) -> list[Path]:
    """One test-split image per class as folder/TASK/CODE.jpg: the first by image id of those
    the input check lets through (`known`), so that an example shows an answer, not a refusal."""
    target = folder / spec.task.key
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for code in spec.codes:
        records = sorted((r for r, ok in zip(test.records, known) if r.label == code and ok),
                         key=lambda r: r.image_id)
        if records:
            path = target / f"{code}.jpg"
            if records[0].path.suffix.lower() in (".jpg", ".jpeg"):
                shutil.copyfile(records[0].path, path)
            else:
                Image.fromarray(read_rgb(records[0].path)).save(path, quality=95)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = folder_arguments("python -m train.gallery", __doc__)
    p.add_argument("--examples", action="store_true", help=f"also write one test image per class to {EXAMPLES}")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if not (args.model / REFERENCE_FILE).is_file():
        log.error("%s has no %s: run python -m train.evaluate first", args.model, REFERENCE_FILE)
        return 2
    model, spec = load_ensemble(args.model)
    splits = prepare_splits(spec.task.load(args.data), spec.input_size, spec.training.get("seed", 0), None,
                            spec.codes, split=args.split,
                            preprocessing=spec.preprocessing)
    device = pick_device(args.device)
    test = forward_all(model.to(device), spec, splits["test"].images, device)
    decided = spec.rule.decide(spec.rule.probabilities(test.logits))
    report = make_gallery(args.model, spec, splits, test.features["pooled"], decided, args.data)
    metrics = read_metrics(args.model)
    write_json(args.model / METRICS_FILE, {**metrics, "similar_cases": report})
    write_text(args.model / CARD_FILE, render_card(read_spec(args.model), read_metrics(args.model)))
    if args.examples:
        check = InputCheck.load(args.model, spec.config)
        known = check.scores(test.features) <= check.threshold
        log.info("examples: %s", ", ".join(str(p) for p in write_examples(spec, splits["test"], known)))
    log.info("gallery of %d images, %.1f MB with the reference; precision@10 %.3f, vote balanced accuracy %.3f",
             report["gallery_size"], report["files_mb"], report["precision_at_10"], report["vote_balanced_accuracy"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
