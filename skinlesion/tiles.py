"""Images much larger than the model's view — steel strips (1600×256), long scans — analysed in
overlapping tiles.

Tiles are squares as tall as the image's short side (a strip's height), half-overlapping
along the long side: the model then sees each part at about the scale it was trained on (a
whole inspection image squashed to its input), not a magnified corner. The image-level
answer is the worst tile's — the tile whose top probability is highest, with where it is —
and one Grad-CAM map of that answer's class is stitched over the whole image from every
tile, on one common scale, so a tile with weak evidence stays faint.

Tiling is bounded, since a small file can describe a very long image: an image thinner than
`MIN_TILE_SIDE` is analysed whole (its tiles would be magnified slivers), one that would need
more than `MAX_TILES` tiles is refused with the numbers, and tiles go through the model
`TILE_CHUNK` at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import LayerAttribution
from PIL import Image

from .explain import OVERLAY_OPACITY, grad_cam, overlay
from .inference import ImageInput, InputError, Predictor, load_image

OVERLAP = 0.5
MIN_ASPECT = 1.5     # an image this much longer than it is tall (or wide) is worth tiling
MIN_TILE_SIDE = 64   # thinner images are analysed whole: a 16-pixel tile magnified to 192 shows nothing
MAX_TILES = 32       # half-overlapping squares: images up to about 16 times longer than tall
TILE_CHUNK = 16      # tiles per forward pass: a NEU strip (1600×200: 15 tiles) is one pass


@dataclass
class TiledAnswer:
    image: np.ndarray                        # the checked RGB input
    boxes: list[tuple[int, int, int, int]]   # (left, top, right, bottom) of every tile
    tile_probabilities: list[dict[str, float]]
    worst: int                               # index of the tile behind the answer
    probabilities: dict[str, float]          # the image-level answer: the worst tile's
    target: str                              # the class the heat-map explains
    heatmap: np.ndarray                      # H×W in 0..1, stitched from every tile
    overlay: Image.Image

    @property
    def region(self) -> tuple[int, int, int, int]:
        return self.boxes[self.worst]


def worth_tiling(width: int, height: int) -> bool:
    """Long enough to need tiles, and thick enough for tiles to show something."""
    return min(width, height) >= MIN_TILE_SIDE and max(width, height) >= MIN_ASPECT * min(width, height)


def checked_boxes(width: int, height: int, side: int | None = None) -> list[tuple[int, int, int, int]]:
    """`tile_boxes`, or InputError when there would be more than MAX_TILES of them."""
    boxes = tile_boxes(width, height, side)
    if len(boxes) > MAX_TILES:
        raise InputError(f"the image is {width}×{height} pixels: analysing it by tiles would take {len(boxes)} "
                         f"tiles, and the limit is {MAX_TILES} (an image about {MAX_TILES // 2} times longer than "
                         f"tall); crop it into parts, or turn tiling off to analyse it whole")
    return boxes


def chunks(images: list[np.ndarray]) -> list[list[np.ndarray]]:
    return [images[i:i + TILE_CHUNK] for i in range(0, len(images), TILE_CHUNK)]


def tile_boxes(width: int, height: int, side: int | None = None,
               overlap: float = OVERLAP) -> list[tuple[int, int, int, int]]:
    """Square tiles of `side` (default: the short side) covering the image, `overlap` apart,
    the last one flush with the far edge."""
    side = min(side or min(width, height), width, height)
    step = max(1, round(side * (1 - overlap)))

    def starts(length: int) -> list[int]:
        positions = list(range(0, length - side + 1, step))
        return positions if positions[-1] == length - side else positions + [length - side]

    return [(x, y, x + side, y + side) for y in starts(height) for x in starts(width)]


def crops(rgb: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    return [rgb[top:bottom, left:right] for left, top, right, bottom in boxes]


def worst_tile(per_tile: list[dict[str, float]]) -> int:
    return int(np.argmax([max(p.values()) for p in per_tile]))


def tiled_answer(predictor: Predictor, rgb: np.ndarray
                 ) -> tuple[dict[str, float], tuple[int, int, int, int]] | None:
    """The worst tile's probabilities and its box, or None when the image is not worth tiling
    (the caller then classifies it whole); InputError when it is too long to tile."""
    if not worth_tiling(rgb.shape[1], rgb.shape[0]):
        return None
    boxes = checked_boxes(rgb.shape[1], rgb.shape[0])
    per_tile = [p for chunk in chunks(crops(rgb, boxes)) for p in predictor.predict_batch(chunk)]
    worst = worst_tile(per_tile)
    return per_tile[worst], boxes[worst]


def analyse_tiles(predictor: Predictor, image: ImageInput, target: str | None = None,
                  opacity: float = OVERLAY_OPACITY, side: int | None = None) -> TiledAnswer:
    """Classify every tile, answer with the worst tile, explain `target` (default: the
    answer's decided class) on every tile and stitch the maps. When the tiles fit in one chunk,
    one forward pass gives both the answer and the Grad-CAM maps; else the answer comes first
    (chunk by chunk), then the maps of its class."""
    rgb = load_image(image)
    boxes = checked_boxes(rgb.shape[1], rgb.shape[0], side)
    tiles = crops(rgb, boxes)
    found: dict = {}

    def explained(logits) -> int:  # the answer is known once the forward pass has run
        found["per_tile"] = predictor.per_image(logits)
        found["worst"] = worst_tile(found["per_tile"])
        return predictor.codes.index(target or predictor.decide(found["per_tile"][found["worst"]]))

    if len(tiles) <= TILE_CHUNK:
        cams, _, index = grad_cam(predictor.model, predictor.layer, predictor.to_batch(tiles), explained)
    else:
        with torch.inference_mode():
            index = explained(torch.cat([predictor.model(predictor.to_batch(chunk)) for chunk in chunks(tiles)]))
        cams = torch.cat([grad_cam(predictor.model, predictor.layer, predictor.to_batch(chunk), index)[0]
                          for chunk in chunks(tiles)])
    heatmap = stitched(cams, boxes, rgb.shape[:2])
    per_tile, worst = found["per_tile"], found["worst"]
    return TiledAnswer(rgb, boxes, per_tile, worst, per_tile[worst], predictor.codes[index], heatmap,
                       overlay(rgb, heatmap, opacity))


def where(region: tuple[int, int, int, int], tiles: int) -> str:
    left, top, right, bottom = region
    return f"Worst of {tiles} tiles: pixels {left}–{right} from the left, {top}–{bottom} from the top."


def stitched(cams, boxes: list[tuple[int, int, int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Every tile's Grad-CAM (n, 1, h, w) upsampled into place; overlaps keep the maximum;
    scaled by the largest value over the whole image."""
    full = np.zeros(shape, np.float32)
    for cam, (left, top, right, bottom) in zip(cams, boxes):
        up = LayerAttribution.interpolate(cam[None].float(), (bottom - top, right - left), interpolate_mode="bilinear")
        np.maximum(full[top:bottom, left:right], up[0, 0].clamp(min=0).cpu().numpy(), out=full[top:bottom, left:right])
    peak = float(full.max())
    return full / peak if peak > 0 else full
