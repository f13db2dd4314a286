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
`TILE_CHUNK` at a time. This module is the geometry; the stitched map is explain.heatmap's.
"""
from __future__ import annotations

import numpy as np

from .images import InputError

Box = tuple[int, int, int, int]  # left, top, right, bottom

OVERLAP = 0.5
MIN_ASPECT = 1.5     # an image this much longer than it is tall (or wide) is worth tiling
MIN_TILE_SIDE = 64   # thinner images are analysed whole: a 16-pixel tile magnified to 192 shows nothing
MAX_TILES = 32       # half-overlapping squares: images up to about 16 times longer than tall
TILE_CHUNK = 16      # tiles per forward pass: a NEU strip (1600×200: 15 tiles) is one pass


def worth_tiling(width: int, height: int) -> bool:
    """Long enough to need tiles, and thick enough for tiles to show something."""
    return min(width, height) >= MIN_TILE_SIDE and max(width, height) >= MIN_ASPECT * min(width, height)


def checked_boxes(width: int, height: int, side: int | None = None) -> list[Box]:
    """`tile_boxes`, or InputError when there would be more than MAX_TILES of them."""
    boxes = tile_boxes(width, height, side)
    if len(boxes) > MAX_TILES:
        raise InputError(f"the image is {width}×{height} pixels: analysing it by tiles would take {len(boxes)} "
                         f"tiles, and the limit is {MAX_TILES} (an image about {MAX_TILES // 2} times longer than "
                         f"tall); crop it into parts, or turn tiling off to analyse it whole")
    return boxes


def tile_boxes(width: int, height: int, side: int | None = None,
               overlap: float = OVERLAP) -> list[Box]:
    """Square tiles of `side` (default: the short side) covering the image, `overlap` apart,
    the last one flush with the far edge."""
    side = min(side or min(width, height), width, height)
    step = max(1, round(side * (1 - overlap)))

    def starts(length: int) -> list[int]:
        positions = list(range(0, length - side + 1, step))
        return positions if positions[-1] == length - side else positions + [length - side]

    return [(x, y, x + side, y + side) for y in starts(height) for x in starts(width)]


def split(rgb: np.ndarray, tiled: bool) -> tuple[list[np.ndarray], list[Box] | None]:
    """The views the model sees of an image: its tiles and their boxes when `tiled` and the
    image is worth tiling (InputError when it would need more than MAX_TILES), else the whole
    image and None."""
    height, width = rgb.shape[:2]
    if not (tiled and worth_tiling(width, height)):
        return [rgb], None
    boxes = checked_boxes(width, height)
    return [rgb[top:bottom, left:right] for left, top, right, bottom in boxes], boxes


def worst_tile(probs: np.ndarray) -> int:
    """The tile behind the answer: the highest top probability (rows: tiles)."""
    return int(np.argmax(np.asarray(probs).max(axis=-1)))


def where(region: Box, tiles: int) -> str:
    left, top, right, bottom = region
    return f"Worst of {tiles} tiles: pixels {left}–{right} from the left, {top}–{bottom} from the top."
