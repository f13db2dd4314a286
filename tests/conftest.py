"""Shared fixtures: a small synthetic HAM10000-like folder, and the real data when present."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.served import running_app  # noqa: F401 (the tests' server)
from skinlesion.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SKINLESION_SHARED_DATA", ROOT.parent / "shared" / "data"))
REAL_HAM = SHARED_DATA / "ham10000"
needs_real_ham = pytest.mark.skipif(not (REAL_HAM / "HAM10000_metadata.csv").is_file(),
                                    reason=f"real HAM10000 not found at {REAL_HAM}")
REAL_NEU = SHARED_DATA / "neu_det"
needs_real_neu = pytest.mark.skipif(not (REAL_NEU / "images").is_dir(), reason=f"NEU data not found at {REAL_NEU}")


def make_ham_folder(root: Path, per_class: int = 20, images_per_lesion: int = 2,
                    layout: str = "flat", size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A HAM10000-shaped folder: metadata CSV + JPEGs whose colour depends on the class,
    `images_per_lesion` images per lesion. layout: 'flat' (images/) or 'official' (part_1/2)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    classes = get_task("ham10000").classes
    for k, info in enumerate(classes):
        for i in range(per_class):
            image_id = f"ISIC_{9000000 + n:07d}"
            lesion_id = f"HAM_{k:02d}{i // images_per_lesion:05d}"
            rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": info.code,
                         "dx_type": "histo", "age": "50.0", "sex": "male", "localization": "back"})
            if layout == "flat":
                folder = root / "images"
            else:
                folder = root / ("HAM10000_images_part_1" if n % 2 == 0 else "HAM10000_images_part_2")
            folder.mkdir(exist_ok=True)
            base = np.array([40 + 30 * k, 200 - 25 * k, 120 + (k % 3) * 40], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=90)
            n += 1
    with (root / "HAM10000_metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def photo():
    """A skin-coloured image with a darker "lesion" in it, as an upload (80×100 RGB)."""
    rng = np.random.default_rng(1)
    image = np.zeros((80, 100, 3), np.uint8) + np.array([170, 110, 95], np.uint8)
    image[20:50, 30:70] = [80, 45, 40]
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def ham_folder(tmp_path: Path) -> Path:
    return make_ham_folder(tmp_path / "ham")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny CPU training run on synthetic data, shared by the tests that inspect its output."""
    base = tmp_path_factory.mktemp("tiny")
    data = make_ham_folder(base / "ham", per_class=20)
    out = base / "run"
    result = run_train("--data", data, "--out", out, "--epochs", "2", "--image-size", "32",
                       "--batch-size", "16", "--workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def run_train(*args, module: str = "train", env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command line (python -m train...), as a user runs it from the repository root."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=env or {**os.environ, "HF_HUB_OFFLINE": "1"})


def trained_looking(model):
    """A new head starts at zero (every class equal); random head weights make outputs differ."""
    import torch
    torch.manual_seed(0)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.1)
    torch.nn.init.normal_(model.get_classifier().bias, std=0.1)
    return model


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """A small model folder (64 px) with calibration, as training writes it."""
    import torch

    from skinlesion.models.network import create_model, save_model_folder
    folder = tmp_path_factory.mktemp("model") / "m"
    torch.manual_seed(0)  # the same body weights in every run, so the tests see the same maps
    model = trained_looking(create_model(7, image_size=64))
    save_model_folder(model, folder, get_task("ham10000"), extra={
        "temperature": 1.5, "thresholds": {"akiec": 0.3, "bcc": 0.3, "mel": 0.2},
        "prediction_sets": {"quantiles": {c: 0.7 for c in get_task("ham10000").codes}}})  # in the set at p ≥ 0.3
    return folder


@pytest.fixture(scope="session")
def bundled_models() -> dict:
    """Each task's bundled Predictor, loaded once for all the tests that only read it."""
    from skinlesion import Predictor
    from skinlesion.tasks import TASKS
    return {key: Predictor.from_pretrained(task=key) for key in TASKS}


@pytest.fixture(scope="session")
def bundled_torch_models() -> dict:
    """The same models answering in PyTorch (the bundled folders ship ONNX exports, which the
    default engine uses): the tests of `bundled` run both engines through the same assertions."""
    from skinlesion import Predictor
    from skinlesion.tasks import TASKS
    return {key: Predictor.from_pretrained(task=key, engine="torch") for key in TASKS}


@pytest.fixture(scope="session")
def predictor(model_folder):
    from skinlesion import Predictor
    return Predictor.from_pretrained(model_folder)


def analysed_counting_eager_passes(predictor, image, **options):
    """`predictor.analyse(image, **options)` and how many eager passes of its primary model it ran
    (a frozen graph or ONNX Runtime runs none)."""
    calls = []
    handle = predictor.primary.register_forward_hook(lambda *_: calls.append(1))
    try:
        return predictor.analyse(image, **options), len(calls)
    finally:
        handle.remove()


def read_card(folder: Path) -> tuple[dict, str]:
    """A model card's metadata (YAML front matter) and Markdown body, as the Hub reads them."""
    import yaml
    text = (Path(folder) / "README.md").read_text()
    assert text.startswith("---\n") and "\n---\n" in text[4:], "the card has no YAML front matter"
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head) or {}, body
