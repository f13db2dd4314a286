"""Batch analysis (skinlesion/batch.py) and its command line, python -m skinlesion predict."""
import csv
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REAL_HAM, REAL_NEU, ROOT, needs_real_ham, needs_real_neu
from PIL import Image

from skinlesion.batch import BatchError, batch_rows, check_limits, columns, expand, read_patients, write_csv

EXAMPLES = ROOT / "assets" / "examples" / "ham10000"  # shipped test-split images, one per class


@pytest.fixture
def images(tmp_path):
    """Four small images in a folder (one in a subfolder, one hidden), a zip, and a bad file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.png", "sub/c.jpg", ".hidden.jpg"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.write(folder / "a.jpg", "x/a.jpg")
        archive.write(folder / "broken.jpg", "x/broken.jpg")
        archive.writestr("__MACOSX/._a.jpg", b"junk")
    return tmp_path


def test_expand_walks_folders_globs_and_zips_in_order(images):
    items = expand([images / "in", str(images / "in" / "*.png"), images / "more.zip", images / "missing.jpg",
                    str(images / "nothing*.tif")])
    names = [i.name for i in items]
    assert names == [str(images / "in" / n) for n in ("a.jpg", "b.png", "broken.jpg", "sub/c.jpg")] + [
        str(images / "in" / "b.png"), "more.zip/x/a.jpg", "more.zip/x/broken.jpg",
        str(images / "missing.jpg"), str(images / "nothing*.tif")]
    assert [i.error for i in items[-2:]] == ["file not found", "no file matches this pattern"]


def test_limits_refuse_too_many_files_or_bytes(images):
    items = expand([images / "in"])
    check_limits(items, max_files=4)
    with pytest.raises(BatchError, match="5 files: a batch takes at most 4"):
        check_limits(items + items[:1], max_files=4)
    with pytest.raises(BatchError, match="MB of images"):
        check_limits(items, max_bytes=100)


def test_rows_keep_input_order_errors_included_and_match_single_predictions(predictor, images):
    items = expand([images / "in", images / "more.zip", images / "missing.jpg"])
    seen = []
    rows = list(batch_rows(predictor, items, batch_size=2, progress=lambda done, total: seen.append((done, total))))
    assert [r["file"] for r in rows] == [i.name for i in items]
    assert seen[-1] == (len(items), len(items)) and len(seen) > 2
    errors = {r["file"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"broken.jpg", "missing.jpg"} and "not an image" in errors["broken.jpg"]
    for row in rows:
        if not row["error"]:
            single = predictor.analyse(row["file"] if "more.zip" not in row["file"] else images / "in" / "a.jpg",
                                       method=None)
            assert np.allclose([row[c] for c in predictor.codes], [single.probabilities[c] for c in predictor.codes],
                               atol=1e-5)
            assert row["decided"] == (single.decided if single.known else "")  # none for a refused image
            assert row["verdict"] == single.verdict.headline and row["level"] == single.verdict.level


def test_csv_keeps_the_rows_written_before_an_interruption(predictor, tmp_path, images):
    items = expand([images / "in"])

    def interrupted():
        for i, row in enumerate(batch_rows(predictor, items, batch_size=1)):
            if i == 2:
                raise KeyboardInterrupt
            yield row

    with pytest.raises(KeyboardInterrupt):
        write_csv(tmp_path / "out.csv", predictor, interrupted())
    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [i.name for i in items[:2]]
    assert list(rows[0]) == columns(predictor)


def write_patients(path, *rows, header="file,age,sex,site"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_patients_records_are_read_by_file_name_and_a_bad_csv_says_where(bundled_models, predictor, tmp_path):
    ham = bundled_models["ham10000"]
    good = write_patients(tmp_path / "p.csv", "a.jpg,63,Male,back", " b.jpg ,,,unknown", "c.jpg,40,,")
    assert read_patients(good, ham) == {"a.jpg": ham.patient(63, "male", "back"), "b.jpg": None,
                                        "c.jpg": ham.patient(age=40)}
    for rows, header, message in (
            (["a.jpg,1,male,back"], "file,age,sex", r"p\.csv: no column site \(the columns: file, age, sex, site\)"),
            (["a.jpg,1,male,back", "b.jpg,130,male,back"], None, r"p\.csv line 3: age must be between 0 and 120"),
            (["a.jpg,1,secret,back"], None, "line 2: sex must be one of male, female"),
            (["a.jpg,1,male,moon"], None, "line 2: unknown body site"),
            (["a.jpg,1,male,", "a.jpg,2,male,"], None, "line 3: a second record of the same file"),
            ([",1,male,"], None, "line 2: no file name")):
        bad = write_patients(tmp_path / "p.csv", *rows, **({"header": header} if header else {}))
        with pytest.raises(BatchError, match=message) as error:
            read_patients(bad, ham)
        assert "secret" not in str(error.value) and "130" not in str(error.value)
    with pytest.raises(BatchError, match="cannot read .*missing.csv: No such file"):
        read_patients(tmp_path / "missing.csv", ham)
    with pytest.raises(BatchError, match="answers from the image alone"):  # a model without a record model
        read_patients(good, predictor)


def test_rows_with_a_record_are_answered_with_it_and_say_so(bundled_models):
    ham = bundled_models["ham10000"]
    items = expand([EXAMPLES / "bcc.jpg", EXAMPLES / "nv.jpg"])
    record = ham.patient(75, "male", "face")
    with_record, alone = batch_rows(ham, items, patients={items[0].name: record, "other.jpg": record})
    expected = ham.analyse(EXAMPLES / "bcc.jpg", method=None, patient=record)
    assert with_record["patient_record"] == "age sex site" and with_record["decided"] == expected.decided
    assert [with_record[c] for c in ham.codes] == pytest.approx([expected.probabilities[c] for c in ham.codes],
                                                                abs=1e-5)
    assert alone["patient_record"] == "" and alone[ham.codes[0]] == pytest.approx(
        ham.predict(EXAMPLES / "nv.jpg")[ham.codes[0]], abs=1e-5)


def run_predict(*args):
    return subprocess.run([sys.executable, "-m", "skinlesion", "predict", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # runs the command line in a new process
def test_command_line_writes_one_row_per_file_and_exits_by_what_it_read(images, tmp_path):
    result = run_predict(images / "in", images / "more.zip", "--task", "steel", "--out", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    with (tmp_path / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0])[1:7] == ["crazing", "inclusion", "patches", "pitted_surface",
                                                     "rolled-in_scale", "scratches"]
    assert sum(bool(r["error"]) for r in rows) == 2 and "4 of 6 files classified" in result.stderr
    nothing = run_predict(images / "in" / "broken.jpg", images / "missing.png", "--out", tmp_path / "n.csv")
    assert nothing.returncode == 1 and "0 of 2 files classified" in nothing.stderr


@pytest.mark.slow  # runs the command line in a new process
@needs_real_ham
@needs_real_neu
def test_command_line_marks_images_of_the_other_task_unknown(tmp_path, bundled_models):
    """A steel image given to the dermoscopy model gets known 0, a score over the threshold and
    the refusal as its verdict; the dermoscopic image beside it is known, with its 90% set; and
    the other way round with the steel model."""
    from skinlesion.tasks import get_task
    steel, lesion = REAL_NEU / "images" / "scratches_1.jpg", REAL_HAM / "images" / "ISIC_0024306.jpg"
    result = run_predict(steel, lesion, "--out", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    with (tmp_path / "r.csv").open(newline="") as f:
        refused, known = list(csv.DictReader(f))
    threshold = bundled_models["ham10000"].trust.check.threshold
    assert refused["known"] == "0" and float(refused["check_score"]) > threshold
    assert refused["verdict"] == get_task("ham10000").refusal and refused["level"] == "unknown"
    assert refused["decided"] == "" and all(refused[c] for c in get_task("ham10000").codes)  # kept beside known 0
    assert known["decided"] and known["level"] in ("refer", "uncertain", "clear")
    assert known["skin_tone"] == "light" and 41 < float(known["skin_ita"]) <= 55  # estimated around the lesion
    assert known["known"] == "1" and float(known["check_score"]) <= threshold
    assert known["prediction_set"] and set(known["prediction_set"].split(" ")) <= set(get_task("ham10000").codes)
    steel_run = run_predict(lesion, steel, "--task", "steel", "--out", tmp_path / "s.csv")
    assert steel_run.returncode == 0, steel_run.stderr[-2000:]
    with (tmp_path / "s.csv").open(newline="") as f:
        not_steel, steel_row = list(csv.DictReader(f))
    assert not_steel["known"] == "0" and not_steel["verdict"] == get_task("neu").refusal
    assert steel_row["known"] == "1" and steel_row["prediction_set"] == steel_row["decided"] == "scratches"


@pytest.mark.slow  # runs the command line in a new process
def test_command_line_answers_with_the_patients_records_and_refuses_a_bad_csv(tmp_path, bundled_models):
    ham = bundled_models["ham10000"]
    bcc, nv, mel = (EXAMPLES / f"{code}.jpg" for code in ("bcc", "nv", "mel"))
    records = write_patients(tmp_path / "p.csv", f"{bcc},75,male,face", f"{nv},,,", "elsewhere.jpg,40,female,")
    result = run_predict(bcc, nv, mel, "--patients", records, "--out", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    with (tmp_path / "r.csv").open(newline="") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    expected = ham.analyse(bcc, method=None, patient=ham.patient(75, "male", "face"))
    assert rows[str(bcc)]["patient_record"] == "age sex site" and rows[str(bcc)]["decided"] == expected.decided
    assert rows[str(nv)]["patient_record"] == rows[str(mel)]["patient_record"] == ""  # blank record, no record
    assert "1 with the patient's record" in result.stderr
    assert "warning: 1 of the 3 records of --patients name no file given here" in result.stderr
    missing_column = write_patients(tmp_path / "bad.csv", f"{bcc},75,male", header="file,age,sex")
    bad_value = write_patients(tmp_path / "age.csv", f"{bcc},175,male,face")
    for csv_file, message in ((missing_column, r"error: --patients: \S*bad\.csv: no column site"),
                              (tmp_path / "missing.csv", r"error: --patients: cannot read \S*missing\.csv"),
                              (bad_value, r"error: --patients: \S*age\.csv line 2: age must be between 0 and 120")):
        refused = run_predict(bcc, "--patients", csv_file, "--out", tmp_path / "x.csv")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert re.search(message, refused.stderr), refused.stderr
