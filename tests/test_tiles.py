"""Long images by tiles (skinlesion/tiles.py): a steel strip built from NEU images, with one
defect among plain steel, must be answered with that defect and where it is."""
import numpy as np
import pytest
from conftest import REAL_NEU, needs_real_neu
from PIL import Image

from skinlesion import predictor as predictor_module
from skinlesion import tiles
from skinlesion.batch import Item, batch_rows
from skinlesion.images import InputError
from skinlesion.tiles import checked_boxes, tile_boxes, worth_tiling


def test_tiles_cover_the_strip_half_overlapping_the_last_flush():
    boxes = tile_boxes(1600, 200)
    assert len(boxes) == 15 and boxes[0] == (0, 0, 200, 200) and boxes[1] == (100, 0, 300, 200)
    assert boxes[-1] == (1400, 0, 1600, 200)
    assert tile_boxes(1650, 200)[-1] == (1450, 0, 1650, 200)  # flush with the far edge
    assert tile_boxes(200, 200) == [(0, 0, 200, 200)]
    assert worth_tiling(1600, 256) and worth_tiling(200, 400) and not worth_tiling(200, 150)


def test_tiling_is_bounded():
    """A small file can describe a 65535×16 image: too thin to tile, it is analysed whole; one
    needing more than MAX_TILES tiles is refused with the numbers."""
    assert not worth_tiling(65535, 16) and worth_tiling(6000, 64)
    assert len(checked_boxes(1600, 100)) == 31
    with pytest.raises(InputError, match="would take 249 tiles, and the limit is 32"):
        checked_boxes(8000, 64)


def test_tiles_in_chunks_give_the_answer_of_one_pass(predictor, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64 * 12), dtype=np.uint8).repeat(3).reshape(64, -1, 3)
    assert len(tile_boxes(rgb.shape[1], rgb.shape[0])) > tiles.TILE_CHUNK
    chunked, plain = predictor.analyse(rgb, tile=True), predictor.analyse(rgb, tile=True, method=None)
    for module in (predictor_module, tiles):  # every tile in the watched pass, as one chunk
        monkeypatch.setattr(module, "TILE_CHUNK", 64)
    whole = predictor.analyse(rgb, tile=True)
    assert chunked.region == whole.region == plain.region and chunked.target == whole.target
    assert chunked.tiles == whole.tiles == len(tile_boxes(rgb.shape[1], rgb.shape[0]))
    assert chunked.probabilities == pytest.approx(whole.probabilities, abs=1e-5)
    assert plain.probabilities == pytest.approx(whole.probabilities, abs=1e-5) and plain.decided == whole.decided
    assert np.abs(chunked.heatmap - whole.heatmap).max() < 1e-4


def strip(defect: str, position: int, tiles: int = 8) -> np.ndarray:
    """Plain steel (grain noise at the defect image's mean) with one NEU defect image at `position`."""
    image = np.asarray(Image.open(REAL_NEU / "images" / f"{defect}.jpg").convert("L")).astype(float)
    rng = np.random.default_rng(position)
    parts = [np.clip(rng.normal(image.mean(), 4, image.shape), 0, 255) for _ in range(tiles)]
    parts[position] = image
    return np.concatenate(parts, axis=1).astype(np.uint8)


@pytest.fixture
def steel(bundled_models):
    return bundled_models["neu"]


@needs_real_neu
@pytest.mark.parametrize("defect, position", [("scratches_5", 5), ("inclusion_7", 2), ("patches_9", 0)])
def test_strip_answer_names_and_locates_the_defect(steel, defect, position):
    answer = steel.analyse(strip(defect, position))  # tiled: the steel task's default
    left, _, right, _ = answer.region
    assert answer.target == answer.decided == defect.rsplit("_", 1)[0] and answer.method == "Grad-CAM"
    assert f"Worst of {answer.tiles} tiles" in answer.verdict.detail
    assert position * 200 <= (left + right) / 2 <= position * 200 + 200, answer.region
    assert answer.heatmap.shape == (200, 1600)
    peak_column = np.unravel_index(answer.heatmap.argmax(), answer.heatmap.shape)[1]
    assert position * 200 - 100 <= peak_column < position * 200 + 300  # the map's peak is at the defect
    assert answer.heatmap[:, position * 200:position * 200 + 200].mean() > 2 * answer.heatmap.mean() / 3


@needs_real_neu
def test_batch_rows_of_a_strip_carry_the_region(steel, tmp_path):
    path = tmp_path / "strip.png"
    Image.fromarray(strip("scratches_5", 5)).save(path)
    tiled, whole = (next(batch_rows(steel, [Item(str(path), path)], tile=t)) for t in (True, False))
    assert tiled["decided"] == "scratches"
    assert tiled["region"] in ("1000 0 1200 200", "900 0 1100 200", "1100 0 1300 200")
    assert whole["region"] == ""
