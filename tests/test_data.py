import csv
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import REAL_HAM, make_ham_folder, needs_real_ham, needs_real_neu
from conftest import REAL_NEU as NEU
from PIL import Image

from skinlesion.data import (
    SPLITS,
    DataError,
    ImageDataset,
    load_images,
    read_split,
    split_records,
    stratified_subset,
    write_split,
)
from skinlesion.tasks import get_task
from skinlesion.tasks.dermoscopy import ham_lesion_mask, load_ham10000
from skinlesion.tasks.steel import load_neu, neu_box_mask
from skinlesion.transforms import eval_transform, resizer


def rewrite_metadata(folder, change):
    path = folder / "HAM10000_metadata.csv"
    rows = list(csv.DictReader(path.open()))
    rows, fields = change(rows)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.mark.parametrize("layout", ["flat", "official"])
def test_both_layouts_load_every_image(tmp_path, layout):
    folder = make_ham_folder(tmp_path / layout, per_class=4, layout=layout)
    records = load_ham10000(folder)
    assert len(records) == 28
    assert all(r.path.is_file() and r.path.stem == r.image_id for r in records)
    if layout == "official":
        assert {r.path.parent.name for r in records} == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_missing_metadata_column_is_named(ham_folder):
    rewrite_metadata(ham_folder, lambda rows: ([{k: v for k, v in r.items() if k != "dx"} for r in rows],
                                               [k for k in rows[0] if k != "dx"]))
    with pytest.raises(DataError, match=r"lacks column\(s\) dx; found: lesion_id, image_id"):
        load_ham10000(ham_folder)


def test_missing_metadata_file(tmp_path):
    with pytest.raises(DataError, match="metadata file not found: .*HAM10000_metadata.csv"):
        load_ham10000(tmp_path)


def test_unknown_label_names_the_offender(ham_folder):
    def change(rows):
        rows[3]["dx"] = "melanoma"
        return rows, list(rows[0])
    rows = rewrite_metadata(ham_folder, change)
    with pytest.raises(DataError, match=rf"1 row\(s\) with an unknown label: {rows[3]['image_id']} \('melanoma'\); "
                                        r"known labels: akiec, bcc"):
        load_ham10000(ham_folder)


def test_missing_images_are_listed(ham_folder):
    gone = sorted((ham_folder / "images").iterdir())[:7]
    for path in gone:
        path.unlink()
    with pytest.raises(DataError) as error:
        load_ham10000(ham_folder)
    message = str(error.value)
    assert "7 metadata row(s) without an image file" in message
    assert gone[0].stem in message and "and 2 more" in message


def test_unreadable_images_are_reported_and_skipped(ham_folder, caplog):
    records = load_ham10000(ham_folder)
    truncated, not_an_image = records[2], records[5]
    data = truncated.path.read_bytes()
    truncated.path.write_bytes(data[: len(data) // 2])
    not_an_image.path.write_text("this is not a JPEG")
    with caplog.at_level(logging.WARNING):
        kept, images = load_images(records, resizer(24))
    assert len(kept) == len(images) == len(records) - 2
    assert truncated not in kept and not_an_image not in kept
    assert "Skipped 2 unreadable image(s)" in caplog.text
    assert f"{truncated.image_id} (image file is truncated" in caplog.text
    assert f"{not_an_image.image_id} (cannot identify image file" in caplog.text
    assert all(img.shape == (24, 24, 3) and img.dtype == np.uint8 for img in images)


def test_split_is_grouped_stratified_and_deterministic(tmp_path):
    records = load_ham10000(make_ham_folder(tmp_path / "h", per_class=60, images_per_lesion=3))
    split = split_records(records, seed=1)
    assert split == split_records(records, seed=1)
    assert split != split_records(records, seed=2)
    lesion_splits = {}
    for r in records:
        lesion_splits.setdefault(r.group, set()).add(split[r.image_id])
    assert all(len(s) == 1 for s in lesion_splits.values())
    shares = Counter(split.values())
    assert abs(shares["train"] / len(records) - 0.70) < 0.05
    assert abs(shares["test"] / len(records) - 0.15) < 0.05
    for name in SPLITS:  # every class in every split
        assert {r.label for r in records if split[r.image_id] == name} == {r.label for r in records}


def test_stratified_subset_keeps_every_class(ham_folder):
    records = load_ham10000(ham_folder)
    subset = stratified_subset(records, 30, seed=0)
    assert len(subset) == 30
    assert set(Counter(r.label for r in subset)) == {r.label for r in records}
    assert subset == stratified_subset(records, 30, seed=0)
    assert stratified_subset(records, 10_000) == records


def test_split_file_round_trip(tmp_path, ham_folder):
    records = load_ham10000(ham_folder)
    split = split_records(records)
    write_split(tmp_path / "split.csv", records, split)
    assert read_split(tmp_path / "split.csv") == split
    header = (tmp_path / "split.csv").read_text().splitlines()[0]
    assert header == "image_id,group,label,split"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a split file"):
        read_split(tmp_path / "bad.csv")


def test_dataset_yields_uint8_tensors(ham_folder):
    records = load_ham10000(ham_folder)[:3]
    _, images = load_images(records, resizer(32))
    item, label = ImageDataset(images, [0, 1, 2], eval_transform(32))[1]
    assert item.dtype == torch.uint8 and item.shape == (3, 32, 32) and label == 1


@pytest.fixture(scope="module")
def real_records():
    return load_ham10000(REAL_HAM)


@needs_real_ham
def test_real_loader_sees_the_published_dataset(real_records):
    assert len(real_records) == 10_015
    assert len({r.group for r in real_records}) == 7_470
    assert Counter(r.label for r in real_records) == {
        "akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}


@needs_real_ham
def test_real_split_is_grouped_and_stratified(real_records):
    split = split_records(real_records, seed=0)
    by_lesion = {}
    for r in real_records:
        by_lesion.setdefault(r.group, set()).add(split[r.image_id])
    assert all(len(s) == 1 for s in by_lesion.values()), "a lesion appears in two splits"
    n = len(real_records)
    overall = Counter(r.label for r in real_records)
    for name, target in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        members = [r for r in real_records if split[r.image_id] == name]
        assert abs(len(members) / n - target) < 0.01
        counts = Counter(r.label for r in members)
        for label, total in overall.items():  # each class's share within 2 points of the whole
            assert abs(counts[label] / len(members) - total / n) < 0.02, (name, label)
    # the byte-identical pairs are the same lesion, so they must share a split
    assert split["ISIC_0024777"] == split["ISIC_0029938"]
    assert split["ISIC_0024366"] == split["ISIC_0029861"]


def test_too_small_dataset_gets_a_clear_split_error(tmp_path):
    records = load_ham10000(make_ham_folder(tmp_path / "h", per_class=4))
    with pytest.raises(DataError, match="too few images to split 70/15/15 by lesion: 28 images of 14 lesions"):
        split_records(records)


@needs_real_neu
def test_neu_reader_counts_balance_and_duplicate_pair():
    records = load_neu(NEU)
    assert len(records) == 1800
    assert Counter(r.label for r in records) == {c: 300 for c in get_task("neu").codes}
    duplicate = {r.image_id: r.group for r in records if r.image_id in ("patches_101", "patches_105")}
    assert duplicate["patches_101"] == duplicate["patches_105"]
    assert len({r.group for r in records}) == 1799
    split = split_records(records, seed=0)
    assert split["patches_101"] == split["patches_105"]
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        counts = Counter(r.label for r in records if split[r.image_id] == name)
        assert all(abs(n / 300 - share) < 0.02 for n in counts.values()), (name, counts)


@needs_real_neu
def test_neu_boxes_and_ham_masks_become_masks():
    mask = neu_box_mask(NEU, "crazing_1", (100, 100))  # box 2..193 of 200 px, at half size
    assert mask.shape == (100, 100) and mask[1:96, 1:96].all() and not mask[98:, :].any()
    if REAL_HAM.is_dir():
        lesion = ham_lesion_mask(REAL_HAM, "ISIC_0024306", (150, 200))
        assert lesion.dtype == bool and 0.05 < lesion.mean() < 0.95


def test_neu_reader_rejects_unknown_file_names(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "crazing_1.jpg")
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "dents_1.jpg")
    with pytest.raises(DataError, match=r"1 file\(s\) whose name starts with no known class: dents_1.jpg"):
        load_neu(tmp_path)
    with pytest.raises(DataError, match="NEU image folder not found"):
        load_neu(tmp_path / "nothing")


@pytest.mark.parametrize("layout", ["flat", "official"])
def test_a_downscaled_copy_keeps_the_records_and_layout_at_a_fraction_of_the_pixels(tmp_path, layout):
    from skinlesion.tasks.dermoscopy import METADATA_FILE
    from train.downscale import downscale
    data = make_ham_folder(tmp_path / "ham", per_class=2, layout=layout, size=(40, 30))
    (data / "masks").mkdir()
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 12:28] = 255
    Image.fromarray(mask).save(data / "masks" / "ISIC_9000000_segmentation.png")
    out = tmp_path / "half"
    assert downscale(data, 2, out) == 14
    assert (out / METADATA_FILE).read_bytes() == (data / METADATA_FILE).read_bytes()
    def read(root):
        return [(r.image_id, r.group, r.label, r.path.relative_to(root)) for r in load_ham10000(root)]
    assert read(out) == read(data)
    images = sorted(p.relative_to(data) for p in data.rglob("*.jpg"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.jpg")) == images
    assert all(Image.open(out / p).size == (20, 15) for p in images)
    small = np.asarray(Image.open(out / "masks" / "ISIC_9000000_segmentation.png"))
    assert small.shape == (15, 20) and set(np.unique(small)) == {0, 255} and (small == 255).sum() == 5 * 8
    with pytest.raises(SystemExit, match="no HAM10000_metadata.csv"):
        downscale(tmp_path / "nothing", 2, tmp_path / "x")
