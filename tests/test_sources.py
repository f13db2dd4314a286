"""External training sources (train/sources.py) and the training settings that use them."""
import csv
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from skinlesion.data import DataError
from skinlesion.models.network import create_model, save_model_folder
from skinlesion.tasks import get_task
from train.flags import parse_args
from train.loop import InitError, start_from
from train.sources import HELD_OUT, external_records, from_source, with_sources

HAM = get_task("ham10000")


def make_source(root, name, rows, split=True):
    """A source folder: labels.csv (image, label[, split, dup_group]) and tiny JPEGs."""
    folder = root / name
    (folder / "images").mkdir(parents=True)
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "diagnosis", "source"] + (["split", "dup_group"] if split else []))
        for image, label, *rest in rows:
            writer.writerow([image, label, label, name] + (list(rest) if split else []))
            Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(folder / "images" / image)
    return folder


def test_a_sources_own_split_trains_and_the_rest_is_held_out_with_its_duplicates(tmp_path):
    make_source(tmp_path, "isic", [("a.jpg", "nv", "train", "a"), ("b.jpg", "mel", "val", "b"),
                                   ("c.jpg", "bkl", "test", "c"), ("d.jpg", "nv", "train", "e"),
                                   ("e.jpg", "nv", "test", "e")])  # d and e: one picture twice
    make_source(tmp_path, "ph2", [("p1.jpg", "nv"), ("p2.jpg", "mel")], split=False)
    records, split, source = external_records(tmp_path, HAM)
    assert split == {"a": "train", "b": HELD_OUT, "c": HELD_OUT, "d": HELD_OUT, "e": HELD_OUT,
                     "p1": HELD_OUT, "p2": HELD_OUT}
    assert source["a"] == "isic" and source["p1"] == "ph2"
    assert {r.group for r in records if r.image_id in "de"} == {"isic:e"}
    assert external_records(tmp_path / "ph2", HAM)[1] == {"p1": HELD_OUT, "p2": HELD_OUT}  # one source alone


def test_bad_sources_are_named(tmp_path):
    make_source(tmp_path / "one", "s", [("a.jpg", "scratches", "train", "a")])
    with pytest.raises(DataError, match="label outside task"):
        external_records(tmp_path / "one", HAM)
    make_source(tmp_path / "two", "s", [("a.jpg", "nv", "train", "a")])
    with pytest.raises(DataError, match="used twice"):
        external_records(tmp_path / "two", HAM, known_ids={"a"})
    with pytest.raises(DataError, match="not a folder of sources"):
        external_records(tmp_path / "nothing", HAM)


def test_new_settings_parse_and_device_augmentation_refuses_the_shift(tmp_path):
    config = parse_args(["--data", "d", "--out", "o", "--extra-data", "x", "--colour-constancy", "shades_of_gray",
                         "--aug-shift", "1", "--init", "m"])
    assert str(config.dataset.extra_data) == "x" and config.model.colour_constancy == "shades_of_gray"
    assert config.augment.augmentation().shift == 1.0 and str(config.model.init) == "m"
    defaults = parse_args(["--data", "d", "--out", "o"])
    assert defaults.augment.aug_shift == 0.0 and defaults.model.colour_constancy == "none"
    for bad in (["--colour-constancy", "retinex"], ["--aug-shift", "-1"],
                ["--aug-shift", "1", "--augment-on", "device"]):
        with pytest.raises(SystemExit):
            parse_args(["--data", "d", "--out", "o", *bad])


def test_init_copies_a_folders_weights_and_records_its_lineage(tmp_path):
    torch.manual_seed(0)
    parent = create_model(len(HAM.codes), architecture="efficientnet_lite0", image_size=32)
    torch.nn.init.normal_(parent.get_classifier().weight)
    save_model_folder(parent, tmp_path / "parent", HAM, extra={"training": {
        "epochs": 8, "best_epoch": 7, "lineage": [{"folder": "grandparent", "sha256": "0" * 64}]}})
    child = create_model(len(HAM.codes), architecture="efficientnet_lite0", image_size=64)
    lineage = start_from(child, tmp_path / "parent", HAM, "efficientnet_lite0")
    assert all(torch.equal(a, b) for a, b in zip(parent.state_dict().values(), child.state_dict().values()))
    digest = hashlib.sha256((tmp_path / "parent" / "model.safetensors").read_bytes()).hexdigest()
    assert lineage == [{"folder": "grandparent", "sha256": "0" * 64},
                       {"folder": "parent", "sha256": digest, "epochs": 8, "best_epoch": 7}]
    with pytest.raises(InitError, match="efficientnet_lite0, this run trains a efficientnet_b0"):
        start_from(create_model(len(HAM.codes), image_size=32), tmp_path / "parent", HAM, "efficientnet_b0")
    steel = get_task("neu")
    with pytest.raises(InitError, match="classes"):
        start_from(create_model(len(steel.codes), architecture="efficientnet_lite0", image_size=32),
                   tmp_path / "parent", steel, "efficientnet_lite0")


@pytest.mark.slow  # two tiny training runs and an evaluation, as a user runs them
def test_a_run_with_sources_colour_constancy_and_init(tmp_path):
    import json

    from conftest import make_ham_folder, run_train
    data = make_ham_folder(tmp_path / "ham", per_class=20)
    rows = [(f"x{i}.jpg", ("nv", "mel", "bkl")[i % 3], "train" if i < 24 else "test", f"x{i}") for i in range(30)]
    make_source(tmp_path / "external", "isic", rows)
    make_source(tmp_path / "external", "ph2", [(f"p{i}.jpg", ("nv", "mel")[i % 2]) for i in range(6)], split=False)
    common = ["--data", data, "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0",
              "--no-explanations", "--architecture", "efficientnet_lite0"]
    first, second = tmp_path / "first", tmp_path / "second"
    result = run_train(*common, "--out", first, "--extra-data", tmp_path / "external",
                       "--colour-constancy", "shades_of_gray", "--aug-shift", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((first / "model/config.json").read_text())
    assert config["preprocessing"] == {"colour_constancy": "shades_of_gray", "p": 6}
    assert config["training"]["extra_data"] == "external"
    with (first / "split.csv").open(newline="") as f:
        split = list(csv.DictReader(f))
    assert list(split[0]) == ["image_id", "group", "label", "split", "source"]
    kinds = {(r["source"], r["split"]) for r in split}
    assert {("isic", "train"), ("isic", HELD_OUT), ("ph2", HELD_OUT), ("ham", "val"), ("ham", "test")} <= kinds
    assert ("ph2", "train") not in kinds and ("isic", "val") not in kinds
    unseen = json.loads((first / "metrics.json").read_text())["modality_check"]["unseen_source"]
    assert unseen["n"] == 24 and 0 <= unseen["pass"] <= 1  # isic's training rows, by a fit without them
    result = run_train(*common, "--out", second, "--init", first / "model")
    assert result.returncode == 0, result.stderr[-3000:]
    training = json.loads((second / "model/config.json").read_text())["training"]
    assert training["init"] == "model" and training["lineage"][-1]["epochs"] == 1
    assert "preprocessing" not in json.loads((second / "model/config.json").read_text())
    result = run_train("--model", first / "model", "--data", data, "--extra-data", tmp_path / "external",
                       "--split", first / "split.csv", "--out", tmp_path / "external.json", module="train.external")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "external.json").read_text())["sources"]
    assert set(figures) == {"val", "test", "isic", "ph2"} and figures["ph2"]["n"] == 6
    assert set(figures["ph2"]["classes"]) == {"nv", "mel"} and "mel" in figures["isic"]["operating_point"]


def test_evaluation_adds_the_sources_to_the_tasks_split_as_the_run_did(tmp_path):
    """train.evaluate --extra-data: a split file's rows win (a run's split.csv), the sources' own
    rule fills in the rest; the sources' records are told apart from the task's own."""
    from skinlesion.data import Record
    make_source(tmp_path, "isic", [("a.jpg", "nv", "train", "a"), ("b.jpg", "mel", "val", "b")])
    own = [Record("ham1", "HAM_1", "nv", tmp_path / "x.jpg")]
    records, split, source = with_sources(own, tmp_path, HAM, {"ham1": "test"})
    assert [r.image_id for r in records] == ["ham1", "a", "b"] and source == {"a": "isic", "b": "isic"}
    assert split == {"ham1": "test", "a": "train", "b": HELD_OUT}
    assert [from_source(r) for r in records] == [False, True, True]
    _, split, _ = with_sources(own, tmp_path, HAM, {"ham1": "test", "a": HELD_OUT})  # a run that held a out
    assert split["a"] == HELD_OUT
    assert with_sources(own, None, HAM, {"ham1": "val"}) == (own, {"ham1": "val"}, {})
