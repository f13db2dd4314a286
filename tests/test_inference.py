"""Predictor: every kind of input, calibration, triage, loading from a folder or the Hub cache."""
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from skinlesion import Predictor
from skinlesion.images import WORKING_PIXELS, InputError, load_image, working_size
from skinlesion.models.spec import ModelFolderError
from skinlesion.tasks.dermoscopy import RESEARCH_DEMO as DISCLAIMER
from skinlesion.transforms import model_input


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    base = np.zeros((90, 120, 3), np.uint8) + np.array([180, 120, 100], np.uint8)
    base[30:60, 40:80] = [90, 50, 40]  # a darker "lesion"
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels (its data is not needed to be refused)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def test_probabilities_of_every_class_sum_to_one_for_every_input_kind(predictor, photo, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    results = [predictor.predict(x) for x in (photo, Image.fromarray(photo), path, str(path), path.read_bytes())]
    for r in results:
        assert list(r) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
        assert sum(r.values()) == pytest.approx(1, abs=1e-6)
        assert all(0 <= p <= 1 for p in r.values())
        assert r == pytest.approx(results[0], abs=1e-6)


def test_temperature_from_the_config_is_applied(predictor, photo):
    x = model_input([photo], predictor.spec)
    with torch.no_grad():
        logits = predictor.primary(x)[0]
    expected = torch.softmax(logits / 1.5, -1).numpy()
    assert np.allclose(list(predictor.predict(photo).values()), expected, atol=1e-6)
    assert not np.allclose(expected, torch.softmax(logits, -1).numpy(), atol=1e-3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "I", "F", "L", "1", "YCbCr"])
def test_any_pil_mode_gives_a_valid_result(predictor, photo, mode):
    image = Image.fromarray(photo)
    if mode == "I;16":
        image = Image.fromarray(photo[:, :, 0].astype(np.uint16) * 200)
        assert image.mode == "I;16"
    elif mode == "P":
        image = image.convert("P")
        image.info["transparency"] = 0
    else:
        image = image.convert(mode)
    rgb = load_image(image)
    assert rgb.shape == (90, 120, 3) and rgb.dtype == np.uint8
    assert 20 < rgb.mean() < 250  # not flattened to black or white
    assert sum(predictor.predict(image).values()) == pytest.approx(1, abs=1e-6)


def test_transparent_pixels_become_white(photo):
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])
    assert load_image(rgba).min() == 255


def test_exif_orientation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(photo).save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (120, 90, 3)


def test_arrays_of_other_types_and_shapes(photo):
    assert load_image(photo.astype(np.float32) / 255).shape == (90, 120, 3)
    assert load_image(photo[:, :, 0]).shape == (90, 120, 3)
    assert load_image(photo[:, :, :1]).shape == (90, 120, 3)
    with pytest.raises(InputError, match="must be H×W, H×W×3 or H×W×4; got shape"):
        load_image(np.zeros((20, 20, 5), np.uint8))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("hello"), "not an image that can be read"),
    (lambda p: p.write_bytes(png_header(7000, 7000)), "too large: 7000×7000 pixels"),
    (lambda p: p.write_bytes(png_header(30000, 30000)), "too large"),
    (lambda p: Image.new("RGB", (10, 40)).save(p, "PNG"), "too small: 10×40 pixels"),
])
def test_bad_files_give_a_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputError, match=message):
        load_image(path)


def test_truncated_and_missing_files(tmp_path, photo):
    path = tmp_path / "t.jpg"
    Image.fromarray(photo).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="damaged or incomplete"):
        load_image(path)
    with pytest.raises(InputError, match="file not found: nope.jpg"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "array"])
def test_huge_images_are_analysed_at_a_bounded_working_resolution(predictor, fmt):
    """A 24-megapixel image is reduced as it is decoded: the analysis, its heat-map and the
    overlay made of them hold at most WORKING_PIXELS pixels, in the image's proportions, and the
    answer is the one of the same picture at that size."""
    rng = np.random.default_rng(0)
    small = np.clip(rng.normal(140, 30, (40, 60, 3)), 0, 255).astype(np.uint8)
    picture = Image.fromarray(small).resize((6000, 4000), Image.Resampling.NEAREST)
    source = np.asarray(picture) if fmt == "array" else io.BytesIO()
    if fmt != "array":
        picture.save(source, fmt)
        source = source.getvalue()
    analysis = predictor.analyse(source)
    height, width = analysis.image.shape[:2]
    assert height * width <= WORKING_PIXELS and (width, height) == working_size(6000, 4000)
    assert analysis.heatmap.shape == (height, width)
    reference = predictor.analyse(np.asarray(picture.resize((width, height), Image.Resampling.BOX)), method=None)
    assert analysis.probabilities == pytest.approx(reference.probabilities, abs=0.02 if fmt == "JPEG" else 1e-3)


def test_verdict_levels_and_disclaimer(predictor):
    codes = predictor.codes

    def verdict(**values):
        rest = (1 - sum(values.values())) / (len(codes) - len(values))
        probabilities = {c: values.get(c, rest) for c in codes}
        probs = np.array(list(probabilities.values()))
        decided = codes[int(predictor.rule.decide(probs))]
        members = [c for c, inside in zip(codes, predictor.rule.prediction_set(probs)) if inside]
        return predictor.task.verdict(probabilities, decided, members, predictor.rule.thresholds, predictor.task)

    refer = verdict(mel=0.25, nv=0.6)  # mel over its 0.2 threshold, not top
    assert refer.level == "refer" and refer.headline == "Refer to a dermatologist" and "Melanoma (25%)" in refer.detail
    uncertain = verdict(nv=0.4, bkl=0.35)
    assert uncertain.level == "uncertain" and uncertain.headline.startswith("Uncertain")
    clear = verdict(nv=0.9)
    assert clear.level == "clear" and clear.headline == "No high-risk pattern found"
    assert all(DISCLAIMER in v.detail for v in (refer, uncertain, clear))


def test_folder_with_labels_of_another_task_is_refused(model_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["label_names"] = ["a", "b", "c", "d", "e", "f", "g"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="are not the classes of task 'ham10000'"):
        Predictor.from_pretrained(folder)


def hub_cache(root, repo_id, folder):
    """The huggingface_hub cache layout for `repo_id`, holding a copy of `folder`."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return root


@pytest.mark.slow  # a new process: the Hub's settings are read at import
def test_hub_repo_id_loads_from_the_cache_offline(model_folder, tmp_path, photo):
    cache = hub_cache(tmp_path / "hub", "someone/skinlesion-test", model_folder)
    Image.fromarray(photo).save(tmp_path / "p.png")
    code = ("import json, sys; from skinlesion import Predictor\n"
            "print(json.dumps(Predictor.from_pretrained(sys.argv[1]).predict(sys.argv[3])))\n"
            "Predictor.from_pretrained(sys.argv[2])")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code, "someone/skinlesion-test", "someone/not-cached",
                             str(tmp_path / "p.png")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    from_hub = json.loads(result.stdout.splitlines()[0]) if result.stdout else result.stderr[-2000:]
    assert from_hub == pytest.approx(Predictor.from_pretrained(model_folder).predict(tmp_path / "p.png"), abs=1e-6)
    assert result.returncode != 0  # the repository that is not in the cache
    assert ("could not get the model 'someone/not-cached' from the Hugging Face Hub or its local cache"
            in result.stderr)


def test_an_unfamiliar_image_is_answered_with_caution_everywhere(tmp_path):
    """The familiarity check beside a modality check only cautions: the analysis is answered and
    marked unfamiliar, the verdict starts with the caution and the folder's figure and is never
    clear, the label names the set, and the CSV has familiar 0 with the class decided. (Every
    image is made unfamiliar here by a familiarity threshold no image passes.)"""
    from dataclasses import replace

    from skinlesion.app.views import UNFAMILIAR, label_value
    from skinlesion.batch import batch_rows, expand, write_csv
    from skinlesion.tasks.verdicts import caution
    from skinlesion.trust import Trust
    predictor = Predictor.from_pretrained(task="ham10000")
    check = predictor.trust.check
    strict = replace(check, threshold=-1e9, refuses=False)
    predictor.trust = Trust([strict if p is check else p for p in predictor.trust.parts], predictor.trust._tap)
    predictor.caution = caution(predictor.task, "balanced accuracy 0.50 on 9 unfamiliar test images")
    example = sorted((ROOT / "assets/examples/ham10000").glob("*"))[0]
    analysis = predictor.analyse(example, method=None)
    assert analysis.known and not analysis.familiar and analysis.familiarity_score > analysis.familiarity_threshold
    assert analysis.verdict.level in ("refer", "uncertain")
    assert analysis.verdict.detail.startswith("An image unlike the training images (another dermatoscope or clinic?)")
    assert "(balanced accuracy 0.50 on 9 unfamiliar test images)." in analysis.verdict.detail
    decided, probabilities, among = label_value(analysis)
    assert decided == analysis.decided and among == tuple(analysis.prediction_set) and len(probabilities) == 7
    assert UNFAMILIAR.startswith("unfamiliar image")
    rows = list(batch_rows(predictor, expand([str(example)])))
    write_csv(tmp_path / "out.csv", predictor, rows)
    row = next(csv_rows(tmp_path / "out.csv"))
    assert (row["known"], row["familiar"], row["decided"]) == ("1", "0", analysis.decided)
    assert row["level"] == analysis.verdict.level


def csv_rows(path):
    import csv
    with open(path, newline="") as f:
        yield from csv.DictReader(f)
