"""Similar confirmed cases (skinlesion/trust/gallery.py, train/gallery.py) and the shipped examples."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_HAM, REAL_NEU, needs_real_ham, needs_real_neu
from PIL import Image

from skinlesion.data import Record
from skinlesion.tasks import get_task
from skinlesion.tasks.dermoscopy import DX_TYPES
from skinlesion.trust.check import REFERENCE_FILE, InputCheck
from skinlesion.trust.features import POOLED
from skinlesion.trust.gallery import GALLERY_FILE, NEIGHBOURS, Gallery, summary
from train.gallery import THUMBNAIL, write_examples, write_gallery
from train.splits import SplitData
from train.trust import save_reference


def test_gallery_round_trips_and_finds_the_nearest(tmp_path):
    """A gallery written from images and features gives back, for a copy of one case's
    features, that case first, with its class, confirmation and a thumbnail of ≤ THUMBNAIL px."""
    rng = np.random.default_rng(0)
    n, codes = 30, get_task("neu").codes
    records = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(path)
        records.append(Record(f"img{i}", f"img{i}", codes[i % 6], path))
    pooled = torch.from_numpy(rng.normal(size=(n, 16))).float()
    features = {"s": torch.from_numpy(rng.normal(size=(n, 4))).float(), POOLED: pooled}
    train = SplitData(records, [], np.array([i % 6 for i in range(n)]))
    save_reference(tmp_path, InputCheck.fit(features, pooled, features, ("s",)), train, np.arange(n))
    spec = type("Spec", (), {"task": get_task("neu")})()
    write_gallery(tmp_path, spec, train, None)
    gallery = Gallery.load(tmp_path, codes)
    nearest = gallery.nearest(pooled[7])
    assert len(nearest) == NEIGHBOURS and nearest[0].index == 7 and nearest[0].similarity == pytest.approx(1, abs=1e-3)
    assert [x.similarity for x in nearest] == sorted((x.similarity for x in nearest), reverse=True)
    case = gallery.case(nearest[0])
    assert case.image_id == "img7" and case.code == codes[1] and case.confirmation.startswith("label of the NEU")
    assert max(case.thumbnail.shape[:2]) == THUMBNAIL and case.thumbnail.shape[2] == 3
    assert sum(summary(nearest).values()) == NEIGHBOURS
    assert Gallery.load(tmp_path / "nothing", codes) is None


@pytest.fixture
def bundled(bundled_models):
    return bundled_models


def test_bundled_galleries_ship_within_15_mb_with_their_figures(bundled):
    for predictor in bundled.values():
        files = [predictor.folder / name for name in (GALLERY_FILE, REFERENCE_FILE)]
        assert sum(f.stat().st_size for f in files) <= 15e6
        metrics = json.loads((predictor.folder / "metrics.json").read_text())
        similar = metrics["similar_cases"]
        assert similar["gallery_size"] == len(predictor.trust.gallery) and 0 < similar["precision_at_10"] <= 1
        assert f"{similar['precision_at_10']:.3f}" in (predictor.folder / "README.md").read_text()


def test_shipped_examples_are_one_test_image_per_class(bundled):
    from skinlesion.app.views import EXAMPLES, example_images
    for key, predictor in bundled.items():
        shipped = example_images(predictor, None)
        assert [code for _, code in shipped] == predictor.codes
        assert all(Path(path).parent == EXAMPLES / key for path, _ in shipped)


@needs_real_ham
def test_similar_lesions_carry_diagnosis_confirmation_and_thumbnail(bundled):
    predictor = bundled["ham10000"]
    cases = predictor.similar(REAL_HAM / "images" / "ISIC_0024306.jpg", k=6)
    assert len(cases) == 6 and all(c.code in predictor.codes for c in cases)
    assert [c.similarity for c in cases] == sorted((c.similarity for c in cases), reverse=True)
    assert all(c.confirmation in DX_TYPES.values() for c in cases)
    assert all(max(c.thumbnail.shape[:2]) <= THUMBNAIL for c in cases)
    analysis = predictor.analyse(REAL_HAM / "images" / "ISIC_0024306.jpg", method=None)
    assert [n.index for n in analysis.similar[:6]] == [predictor.trust.gallery.ids.index(c.image_id) for c in cases]


@needs_real_ham
@needs_real_neu
def test_no_similar_cases_for_an_image_the_model_does_not_know(bundled):
    assert bundled["ham10000"].similar(REAL_NEU / "images" / "scratches_1.jpg") == []
    assert len(bundled["neu"].similar(REAL_NEU / "images" / "scratches_1.jpg")) == 6


def test_examples_are_the_first_known_test_image_of_each_class(tmp_path):
    codes = get_task("neu").codes
    records = []
    for i, code in enumerate(codes * 2):  # two images per class, told apart by their width
        path = tmp_path / f"{code}_{i}.png"
        Image.new("RGB", (50 + i, 40), (i, i, i)).save(path)
        records.append(Record(f"{code}_{i}", str(i), code, path))
    spec = type("Spec", (), {"task": get_task("neu"), "codes": codes})()
    known = np.array([i >= len(codes) for i in range(len(records))])  # the first of each class is refused
    written = write_examples(spec, SplitData(records, [], np.zeros(len(records))), known, tmp_path / "examples")
    assert [p.name for p in written] == [f"{c}.jpg" for c in codes]
    assert [Image.open(p).size[0] for p in written] == [50 + len(codes) + i for i in range(len(codes))]
    assert all(Image.open(p).format == "JPEG" for p in written)
