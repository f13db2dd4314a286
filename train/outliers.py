"""Images a model should refuse, made at run time: the development families of the input check.

    families(task, data_root) -> {family: [RGB uint8 arrays]}

Nothing here is committed as an image. The families are built from what this machine already
has: the other tasks' data folders, the photographs shipped inside installed Python packages
(scikit-learn's `datasets/images`, matplotlib's `sample_data`, Gradio's `media_assets`), random
crops and resizes of those, and synthetic images (noise, flat colours, gradients, rendered text,
charts, the app's own screenshots in assets/). `python -m train.evaluate` measures the check on
them (train/evaluate.py); the check is fitted on the task's own images only, so these families
measure it and never shape it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from skinlesion.data import read_rgb
from skinlesion.tasks import TASKS, Task
from skinlesion.tasks.base import ASSETS

OTHER_TASK, PHOTOGRAPHS, PHOTO_CROPS, SYNTHETIC = "other task", "photographs", "photo crops", "synthetic"
FAMILIES = (OTHER_TASK, PHOTOGRAPHS, PHOTO_CROPS, SYNTHETIC)
# Where installed packages keep their sample photographs (package, folder inside it).
PACKAGE_PHOTOS = (("sklearn", "datasets/images"), ("matplotlib", "mpl-data/sample_data"),
                  ("gradio", "media_assets/images"))
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def package_photos() -> list[Path]:
    """The sample photographs of the installed packages (scikit-learn, matplotlib, Gradio)."""
    found = []
    for package, folder in PACKAGE_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            where = Path(spec.origin).parent / folder
            found += sorted(p for p in where.glob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    return found + sorted(ASSETS.glob("screenshot*.png"))  # the app's own page


def other_task_images(task: Task, data_root: Path | None, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to `n` images of every other task whose data folder is under `data_root`."""
    images = []
    for other in TASKS.values() if data_root is not None else ():
        folder = Path(data_root) / other.data_folder
        if other.key == task.key or not folder.is_dir():
            continue
        records = other.load(folder)
        for i in rng.choice(len(records), min(n, len(records)), replace=False):
            images.append(read_rgb(records[i].path))
    return images


def photographs(paths: list[Path]) -> list[np.ndarray]:
    """Each photograph whole, as it is, in grey, and mirrored."""
    images = []
    for path in paths:
        rgb = read_rgb(path)
        grey = np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=2)
        images += [rgb, grey, rgb[:, ::-1].copy()]
    return images


def crops(photos: list[np.ndarray], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random crops (a tenth to all of each side) of the photographs, resized to 64–400 px."""
    out = []
    for _ in range(n):
        rgb = photos[rng.integers(len(photos))]
        h, w = rgb.shape[:2]
        ch, cw = (max(16, int(s * rng.uniform(0.1, 1.0))) for s in (h, w))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = tuple(int(s) for s in rng.integers(64, 401, size=2))
        out.append(np.asarray(Image.fromarray(rgb[top:top + ch, left:left + cw]).resize(size)))
    return out


def synthetic(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Noise, flat colours, gradients, rendered text, charts and checkerboards, in turn."""
    makers = (_noise, _flat, _gradient, _text, _chart, _checkerboard)
    return [makers[i % len(makers)](rng) for i in range(n)]


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(96, 400)), int(rng.integers(96, 400))


def _noise(rng):
    h, w = _size(rng)
    if rng.random() < 0.5:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (h, w, 3)), 0, 255).astype(np.uint8)


def _flat(rng):
    h, w = _size(rng)
    return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()


def _gradient(rng):
    h, w = _size(rng)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    start, end = rng.integers(0, 256, (2, 3))
    ramp = (start + (end - start) * t[:, None]).astype(np.uint8)
    return np.broadcast_to(ramp[None] if len(t) == w else ramp[:, None], (h, w, 3)).copy()


def _text(rng):
    h, w = _size(rng)
    image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(180, 256, 3)))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=int(rng.integers(10, 28)))
    words = ("lorem", "ipsum", "melanoma", "steel", "invoice", "total", "2026", "report", "page", "skin")
    for y in range(4, h, int(font.size * 1.5)):
        draw.text((4, y), " ".join(rng.choice(words, 6)), fill=tuple(int(v) for v in rng.integers(0, 90, 3)),
                  font=font)
    return np.asarray(image)


def _chart(rng):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(rng.uniform(2, 5), rng.uniform(2, 5)), dpi=72)
    x = np.arange(12)
    (axes.bar if rng.random() < 0.5 else axes.plot)(x, rng.random(12).cumsum())
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return rgb


def _checkerboard(rng):
    h, w = _size(rng)
    cell = int(rng.integers(4, 40))
    board = ((np.arange(h)[:, None] // cell + np.arange(w)[None] // cell) % 2).astype(bool)
    a, b = rng.integers(0, 256, (2, 3), dtype=np.uint8)
    return np.where(board[..., None], a, b).astype(np.uint8)


def families(task: Task, data_root: Path | None, seed: int = 0, n: int = 300) -> dict[str, list[np.ndarray]]:
    """The development families for `task`: up to `n` images of the other tasks, every package
    photograph (whole, grey, mirrored), `n` crops of them and `n` synthetic images; a family with
    no image (no other task's data under `data_root`) is left out."""
    rng = np.random.default_rng(seed)
    photos = [read_rgb(p) for p in package_photos()]
    found = {OTHER_TASK: other_task_images(task, data_root, n, rng), PHOTOGRAPHS: photographs(package_photos()),
             PHOTO_CROPS: crops(photos, n, rng), SYNTHETIC: synthetic(n, rng)}
    return {name: images for name, images in found.items() if images}


def acquisition_shifted(images: list[np.ndarray], size: int, strength: float, seed: int = 0) -> list[np.ndarray]:
    """Each image under strong acquisition shifts at once, at the model's input size: the
    training augmentation at --aug-shift `strength` (skinlesion/transforms.py: zoom until the
    lesion fills the frame, downscale or sharpen, a tone curve, a circular vignette, JPEG, wider
    colour changes and casts), then hair or a ruler drawn on a third of them each. What changes
    from one dermatoscope and clinic to the next: the modality check learns to let it through."""
    import albumentations as A

    from skinlesion.transforms import Augmentation, train_transform
    steps = train_transform(size, Augmentation(shift=strength)).transforms[:-1]  # not ToTensorV2
    pipeline, rng = A.Compose(steps, seed=seed), np.random.default_rng(seed)
    out = []
    for image in images:
        shifted_image = pipeline(image=image)["image"]
        draw = (_hair, _ruler, None)[int(rng.integers(3))]
        out.append(draw(shifted_image, rng) if draw else shifted_image)
    return out


def _hair(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark hairs: a few thin random-walk curves across the image."""
    picture = Image.fromarray(image)
    draw, (w, h) = ImageDraw.Draw(picture), picture.size
    for _ in range(int(rng.integers(2, 12))):
        point, angle = rng.uniform(0, 1, 2) * (w, h), rng.uniform(0, 2 * np.pi)
        points = [tuple(point)]
        for _ in range(int(rng.integers(5, 20))):
            angle += rng.normal(0, 0.25)
            point = point + 0.06 * max(w, h) * np.array([np.cos(angle), np.sin(angle)])
            points.append(tuple(point))
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 60, 3)), width=int(rng.integers(1, 3)))
    return np.asarray(picture)


def _ruler(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A millimetre scale along one edge: a light band with dark ticks."""
    picture = image.copy()
    h, w = picture.shape[:2]
    band = max(4, int(min(h, w) * rng.uniform(0.05, 0.12)))
    picture[:band] = rng.integers(170, 256)
    step = max(2, int(w * rng.uniform(0.02, 0.05)))
    for i, x in enumerate(range(0, w, step)):
        picture[: band * (2 if i % 5 == 0 else 1) // 2, x:x + 1] = 0
    return np.rot90(picture, int(rng.integers(4))).copy() if h == w else picture


def shifted(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each image under one acquisition shift, in turn: a colour cast, a rescale, another aspect
    ratio (a crop), JPEG recompression, a rotation with black corners, a dark circular vignette.
    Images of the task taken elsewhere look like this; the check must let them through, so its
    reference statistics include them (skinlesion/trust/check.py) and its pass rate is measured on them."""
    return [_SHIFTS[i % len(_SHIFTS)](Image.fromarray(image), rng) for i, image in enumerate(images)]


def _cast(image: Image.Image, rng) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32) * rng.uniform(0.75, 1.25, 3) + rng.uniform(-20, 20, 3)
    return np.clip(a, 0, 255).astype(np.uint8)


def _rescale(image: Image.Image, rng) -> np.ndarray:
    return np.asarray(image.resize((int(image.width * rng.uniform(0.5, 3)), int(image.height * rng.uniform(0.5, 3)))))


def _aspect(image: Image.Image, rng) -> np.ndarray:
    keep = rng.uniform(0.55, 0.9)
    box = (0, 0, image.width, int(image.height * keep)) if rng.random() < 0.5 else (0, 0, int(image.width * keep),
                                                                                      image.height)
    return np.asarray(image.crop(box))


def _recompress(image: Image.Image, rng) -> np.ndarray:
    import io
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(20, 60)))
    return np.asarray(Image.open(buffer).convert("RGB"))


def _rotate(image: Image.Image, rng) -> np.ndarray:
    return np.asarray(image.rotate(float(rng.uniform(10, 80))))


def _vignette(image: Image.Image, rng) -> np.ndarray:
    h, w = image.height, image.width
    y, x = np.ogrid[:h, :w]
    radius = rng.uniform(0.45, 0.6) * np.hypot(h, w)
    inside = (y - h / 2) ** 2 + (x - w / 2) ** 2 <= radius ** 2
    return np.where(inside[..., None], np.asarray(image), 0).astype(np.uint8)


_SHIFTS = (_cast, _rescale, _aspect, _recompress, _rotate, _vignette)
