"""The app as people meet it: a real server on localhost, called through gradio_client and
driven in a real headless Chromium (Debian's package) through Playwright."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_HAM, ROOT, SHARED_DATA, running_app
from PIL import Image

from skinlesion.tasks import get_task
from skinlesion.tasks.dermoscopy import RESEARCH_DEMO as DISCLAIMER

pytestmark = pytest.mark.slow  # real servers, a real browser, the benchmark
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]
CODES = get_task("ham10000").codes
NEU_CODES = get_task("neu").codes
EXAMPLES = ROOT / "assets" / "examples"
RECORD = {"age": 75, "sex": "male", "site": "face"}  # moves the shipped bcc example's answer from df to akiec


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` with the bundled model, on a free port; yields (url, temp dir)."""
    temp = tmp_path_factory.mktemp("gradio-tmp")
    with running_app(temp, temp.parent / "server.log") as (url, _):
        yield url, temp


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client
    return Client(server[0], verbose=False)


@pytest.fixture
def lesion(tmp_path) -> Path:
    if REAL_HAM.is_dir():
        return REAL_HAM / "images" / "ISIC_0024306.jpg"
    rng = np.random.default_rng(0)
    image = np.full((150, 200, 3), (190, 140, 120), np.uint8)
    image[50:100, 70:130] = (90, 50, 40)
    path = tmp_path / "lesion.jpg"
    Image.fromarray(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def steel(tmp_path) -> Path:
    real = SHARED_DATA / "neu_det" / "images" / "scratches_1.jpg"
    if real.is_file():
        return real
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 20, (200, 200)), 0, 255).astype(np.uint8)
    image[:, 90:95] = 40  # a long dark groove
    path = tmp_path / "steel.jpg"
    Image.fromarray(image).convert("RGB").save(path)
    return path


def probabilities(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_classify_endpoint_gives_every_class_and_the_decided_class(client, lesion, bundled_models):
    from gradio_client import handle_file

    label = client.predict(handle_file(lesion), api_name="/classify")
    result = probabilities(label)
    assert sorted(result) == sorted(CODES)
    assert sum(result.values()) == pytest.approx(1, abs=1e-5)
    bundled = bundled_models["ham10000"]  # what the server loaded
    assert result == pytest.approx(bundled.predict(lesion), abs=1e-5)
    assert label["label"] == bundled.analyse(lesion, method=None).decided


def test_classify_takes_the_task(client, steel):
    from gradio_client import handle_file
    result = probabilities(client.predict(handle_file(steel), task="neu", api_name="/classify"))
    assert sorted(result) == sorted(NEU_CODES)
    assert sum(result.values()) == pytest.approx(1, abs=1e-5)
    verdict, label, overlay = client.predict(handle_file(steel), "top", 0.45, "neu", api_name="/analyse")
    assert ("Manual review" in verdict) != ("Defect: " in verdict)
    with pytest.raises(Exception, match="Unknown task 'x'"):
        client.predict(handle_file(steel), task="x", api_name="/classify")


def test_explain_endpoint_gives_an_overlay_of_the_input_size(client, lesion):
    from gradio_client import handle_file
    for target in ("top", "mel"):
        path = client.predict(handle_file(lesion), target, 0.5, api_name="/explain")
        with Image.open(path) as overlay, Image.open(lesion) as original:
            assert overlay.size == original.size


def test_analyse_endpoint_gives_verdict_probabilities_and_overlay(client, lesion):
    from gradio_client import handle_file
    verdict, label, overlay = client.predict(handle_file(lesion), "top", 0.45, api_name="/analyse")
    assert DISCLAIMER in verdict and "data-level=" in verdict
    assert sorted(probabilities(label)) == sorted(CODES)
    assert Path(overlay).is_file()
    if REAL_HAM.is_dir():  # a real lesion passes the input check and gets its 90% set, and its skin tone
        assert "90% prediction set: " in verdict and "data-known='1'" in verdict
        assert "Estimated skin tone: light (ITA 4" in verdict and "skin-tone-warning" not in verdict


def test_analyse_endpoint_refuses_an_image_of_the_other_task(client, lesion, steel):
    """/analyse says when an image is not of the model's kind, with the level, no set, and a
    label without a decided class or bars (the refusal); /classify says the same."""
    from gradio_client import handle_file
    for image, task in ((steel, "ham10000"), (lesion, "neu")):
        verdict, label, _ = client.predict(handle_file(image), "top", 0.45, task, api_name="/analyse")
        assert "data-level='unknown'" in verdict and get_task(task).refusal in verdict, verdict
        assert "mean nothing" in verdict and "data-known='0'" in verdict
        assert label == {"label": f"not analysed: {get_task(task).refusal}", "confidences": None}, label
        assert client.predict(handle_file(image), task=task, api_name="/classify") == label


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_the_patients_record_changes_the_answer_and_the_map_follows_it(client, bundled_models):
    """/analyse with a record (the last three arguments): the answer of `Predictor.analyse` with
    it, a line naming the fields used (never their values), and the heat-map of the class decided
    with it, as /explain draws it with the same record; without the record, the image's own answer."""
    from gradio_client import handle_file
    image, bundled = EXAMPLES / "ham10000" / "bcc.jpg", bundled_models["ham10000"]
    expected = bundled.analyse(image, method=None, patient=bundled.patient(**RECORD))
    alone = bundled.analyse(image, method=None)
    verdict, label, overlay = client.predict(handle_file(image), api_name="/analyse", **RECORD)
    assert "<div id='patient-record'>With the patient's record: age, sex, site.</div>" in verdict
    assert label["label"] == expected.decided and probabilities(label) == pytest.approx(expected.probabilities,
                                                                                        abs=1e-5)
    plain_verdict, plain_label, plain_overlay = client.predict(handle_file(image), "top", 0.45, "ham10000", "auto",
                                                               "Grad-CAM", api_name="/analyse")  # as before
    assert "patient-record" not in plain_verdict and plain_label["label"] == alone.decided
    assert probabilities(plain_label) == pytest.approx(alone.probabilities, abs=1e-5)
    assert max(abs(probabilities(label)[c] - probabilities(plain_label)[c]) for c in CODES) > 0.05
    partial, _, _ = client.predict(handle_file(image), api_name="/analyse", age="75", site="face")
    assert "With the patient's record: age, site.</div>" in partial
    classified = client.predict(handle_file(image), api_name="/classify", **RECORD)
    assert probabilities(classified) == pytest.approx(expected.probabilities, abs=1e-5)

    explained = client.predict(handle_file(image), "top", 0.45, "ham10000", "auto", "Grad-CAM", *RECORD.values(),
                               api_name="/explain")
    assert np.array_equal(pixels(explained), pixels(overlay))  # /analyse's map is /explain's
    decided_map = client.predict(handle_file(image), expected.decided, api_name="/explain")
    assert np.array_equal(pixels(explained), pixels(decided_map))  # the class decided with the record
    if expected.decided != alone.decided:
        assert not np.array_equal(pixels(explained), pixels(plain_overlay))
    compared = client.predict(handle_file(image), "top", 0.45, "ham10000", *RECORD.values(), api_name="/compare")
    assert [c["caption"].split(" ⚠")[0] for c in compared] == ["Grad-CAM", "Integrated Gradients", "Occlusion"]


def test_a_bad_patients_record_is_a_clear_error_that_repeats_no_value(client):
    from gradio_client import handle_file
    image = EXAMPLES / "ham10000" / "bcc.jpg"
    for field, value, message in (("age", 121, "age must be between 0 and 120 years"),
                                  ("age", "secret-61", "age must be a number of years"),
                                  ("sex", "secret-x", "sex must be one of male, female or left blank"),
                                  ("site", "secret-moon", "unknown body site; choose one of abdomen, acral")):
        with pytest.raises(Exception, match=f"Cannot use the patient's record: {message}") as error:
            client.predict(handle_file(image), api_name="/analyse", **{field: value})
        assert "secret" not in str(error.value) and "121" not in str(error.value)
    with pytest.raises(Exception, match="Cannot use the patient's record: unknown body site"):
        client.predict(handle_file(image), "top", 0.45, "ham10000", None, None, "secret-moon", api_name="/compare")
    assert client.predict(handle_file(image), api_name="/classify", age="", sex="unknown", site=None)["label"]


def test_the_steel_model_answers_from_the_image_alone(client, steel):
    """A model without a record model (steel) ignores a record: the same answer, no record line."""
    from gradio_client import handle_file
    verdict, label, _ = client.predict(handle_file(steel), "top", 0.45, "neu", api_name="/analyse", **RECORD)
    plain_verdict, plain_label, _ = client.predict(handle_file(steel), "top", 0.45, "neu", api_name="/analyse")
    assert verdict == plain_verdict and "patient-record" not in verdict
    assert probabilities(label) == pytest.approx(probabilities(plain_label), abs=1e-6)


PH2_IMAGE = SHARED_DATA / "dermoscopy_external" / "ph2" / "images" / "IMD003.jpg"  # another dermatoscope


@pytest.mark.skipif(not PH2_IMAGE.is_file(), reason="PH2 not found")
def test_another_dermatoscopes_image_is_answered_with_caution(client):
    """A PH2 image (a device the model never saw): answered, not refused; marked unfamiliar; the
    verdict starts with the caution and the folder's figure and is not clear; the label names
    the 90% set instead of one class; /classify says the same."""
    from gradio_client import handle_file
    verdict, label, _ = client.predict(handle_file(PH2_IMAGE), "top", 0.45, api_name="/analyse")
    assert "data-known='1'" in verdict and "data-familiar='0'" in verdict
    assert "An image unlike the training images (another dermatoscope or clinic?): on such images the model's " \
           "accuracy was measured lower (balanced accuracy " in verdict
    assert "data-level='clear'" not in verdict and "90% prediction set: " in verdict
    assert label["label"].startswith("unfamiliar image, one of ") and len(label["confidences"]) == 7
    classified = client.predict(handle_file(PH2_IMAGE), api_name="/classify")  # ONNX Runtime; the map's pass: PyTorch
    assert classified["label"] == label["label"]
    assert probabilities(classified) == pytest.approx(probabilities(label), abs=1e-4)


@pytest.mark.parametrize("content, message", [
    (b"definitely not an image", "this file is not an image that can be read"),
    ("truncated", "damaged or incomplete"),
])
def test_bad_files_get_an_error_and_the_next_request_succeeds(client, lesion, tmp_path, content, message):
    from gradio_client import handle_file
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(lesion.read_bytes()[:3000] if content == "truncated" else content)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(bad), api_name="/classify")
    result = probabilities(client.predict(handle_file(lesion), api_name="/classify"))
    assert sum(result.values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("method", ["Grad-CAM", "Integrated Gradients", "Occlusion"])
def test_explain_takes_the_method(client, lesion, method):
    from gradio_client import handle_file
    default = client.predict(handle_file(lesion), "mel", 0.5, api_name="/explain")
    chosen = client.predict(handle_file(lesion), "mel", 0.5, "ham10000", "auto", method, api_name="/explain")
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (default, chosen))
    assert a.shape == b.shape == np.asarray(Image.open(lesion)).shape
    assert (np.abs(a - b).max() == 0) == (method == "Grad-CAM")  # Grad-CAM is the default


def test_compare_gives_every_method_side_by_side(client, lesion):
    from gradio_client import handle_file
    gallery = client.predict(handle_file(lesion), "top", 0.45, api_name="/compare")
    assert [item["caption"].split(" ⚠")[0] for item in gallery] == ["Grad-CAM", "Integrated Gradients", "Occlusion"]
    assert all(Image.open(item["image"]).size == Image.open(lesion).size for item in gallery)


def test_batch_endpoint_gives_a_table_and_the_csv(client, lesion, steel, tmp_path):
    """/batch: files and zips in; a row per file in order (a bad one with its reason), and a CSV
    with every class's probability that agrees with /classify."""
    import csv
    import zipfile

    from gradio_client import handle_file
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    archive = tmp_path / "strips.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(steel, "a/steel.jpg")
        z.write(bad, "a/notes.jpg")
    table, csv_path = client.predict([handle_file(steel), handle_file(archive), handle_file(bad), handle_file(lesion)],
                                     "neu", api_name="/batch")
    rows = table["data"]
    assert table["headers"] == ["file", "decided class", "probability", "verdict", "error"]
    assert [r[0] for r in rows] == [steel.name, "strips.zip/a/steel.jpg", "strips.zip/a/notes.jpg", "notes.jpg",
                                    lesion.name]
    assert rows[0][1:4] == rows[1][1:4] and rows[0][3].startswith(("Defect:", "Manual review"))
    assert "not an image" in rows[2][4] and "not an image" in rows[3][4]
    with open(csv_path, newline="") as f:
        saved = list(csv.DictReader(f))
    assert list(saved[0]) == ["file", *NEU_CODES, "decided", "verdict", "region", "error", "known", "familiar",
                              "check_score", "prediction_set", "level", "skin_ita", "skin_tone", "patient_record"]
    assert saved[0]["skin_tone"] == saved[0]["skin_ita"] == saved[0]["patient_record"] == ""  # steel, no record
    single = probabilities(client.predict(handle_file(steel), task="neu", api_name="/classify"))
    assert all(abs(float(saved[0][c]) - single[c]) < 1e-5 for c in NEU_CODES)
    assert saved[0]["known"] == "1" and set(saved[0]["prediction_set"].split()) <= set(NEU_CODES)
    assert saved[4]["known"] == "0" and rows[4][3] == get_task("neu").refusal  # a lesion is not steel
    assert saved[0]["familiar"] == "1" and saved[4]["familiar"] == ""  # a refused image is neither
    assert rows[4][1:3] == ["not analysed", ""] and saved[4]["decided"] == "" and saved[4]["level"] == "unknown"
    assert saved[2]["known"] == saved[2]["check_score"] == saved[2]["prediction_set"] == ""  # unreadable


@pytest.mark.skipif(not (SHARED_DATA / "neu_det" / "images").is_dir(), reason="NEU data not found")
def test_a_steel_strip_is_analysed_by_tiles_through_the_api(client, tmp_path):
    from gradio_client import handle_file
    from test_tiles import strip
    path = tmp_path / "strip.png"
    Image.fromarray(strip("scratches_5", 5)).save(path)
    verdict, label, overlay = client.predict(handle_file(path), "top", 0.45, "neu", api_name="/analyse")
    left, right = map(int, re.search(r"Worst of 15 tiles: pixels (\d+)–(\d+) from the left", verdict).groups())
    assert label["label"] == "scratches" and 1000 <= (left + right) / 2 <= 1200
    assert Image.open(overlay).size == (1600, 200)
    assert client.predict(handle_file(path), task="neu", tile="off", api_name="/classify")["label"] in NEU_CODES
    assert "Worst of" not in client.predict(handle_file(path), "top", 0.45, "neu", "off", api_name="/analyse")[0]


def test_page_in_a_real_browser(server, lesion, steel, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright
    url, _ = server
    screenshot = Path(os.environ.get("SKINLESION_SCREENSHOT", tmp_path / "page.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.locator("#input-image input[type=file]").set_input_files(str(steel))  # a steel image, to the lesion model
        page.locator("#analyse").click()
        expect(page.locator("#verdict")).to_contain_text("does not look like a dermoscopic image", timeout=60_000)
        expect(page.locator("#prediction-set")).to_contain_text("mean nothing")
        expect(page.locator("#probabilities")).to_contain_text("not analysed: This does not look like")
        expect(page.locator("#probabilities")).not_to_contain_text("%")  # no decided class, no bars
        page.reload()
        page.locator("#input-image input[type=file]").set_input_files(str(lesion))
        page.get_by_text("The patient (optional)").click()  # the record, closed at first: open it, give the age
        page.locator("#patient-age input").fill("70")
        page.locator("#analyse").click()
        expect(page.locator("#verdict")).to_be_visible(timeout=60_000)
        if REAL_HAM.is_dir():  # a real lesion: answered, with the record's fields named
            expect(page.locator("#patient-record")).to_have_text("With the patient's record: age.")
        expect(page.locator("#gradcam img")).to_be_visible(timeout=60_000)
        if REAL_HAM.is_dir():  # the set beside the probabilities, in full names
            expect(page.locator("#prediction-set")).to_contain_text("90% prediction set: ")
        labels = page.locator("#probabilities").inner_text()
        assert all(f"{c.name} ({c.code})" in labels for c in get_task("ham10000").classes), labels  # full names
        assert "research demo, not a diagnosis" in page.locator("#verdict").inner_text()
        if REAL_HAM.is_dir():  # the examples say their true class
            expect(page.get_by_text("Melanoma (mel), true class")).to_be_visible()
        page.locator("#compare").click()  # the methods side by side
        expect(page.locator("#compare-gallery img")).to_have_count(3, timeout=60_000)
        expect(page.locator("#compare-gallery")).to_contain_text("Integrated Gradients")
        page.get_by_text("Data & ethics").click()
        expect(page.get_by_text("skewed to light skin types")).to_be_visible()
        page.screenshot(path=str(screenshot), full_page=True)
        if REAL_HAM.is_dir():  # the same lesion on darker skin (made here): its skin tone, and a warning
            darker = tmp_path / "darker.png"
            Image.fromarray((np.asarray(Image.open(lesion).convert("RGB")) * (0.8, 0.65, 0.55)).astype(np.uint8)
                            ).save(darker)
            page.locator("#input-image input[type=file]").set_input_files(str(darker))  # analysed at once
            expect(page.locator("#skin-tone")).to_contain_text("Estimated skin tone: brown", timeout=60_000)
            expect(page.locator("#compare-gallery img")).to_have_count(0)  # drawn for the earlier image
            expect(page.locator("#skin-tone-warning")).to_contain_text("accuracy on such skin is unknown")
            # another page: an image set while its first Analyse is still answering is analysed in its turn
            fresh = browser.new_page(viewport={"width": 1280, "height": 1000})
            fresh.goto(url)
            fresh.locator("#input-image input[type=file]").set_input_files(str(lesion))
            fresh.locator("#analyse").click()
            fresh.locator("#input-image input[type=file]").set_input_files(str(darker))
            expect(fresh.locator("#skin-tone")).to_contain_text("Estimated skin tone: brown", timeout=60_000)
            fresh.close()

        page.get_by_label("Steel surface", exact=True).check()  # the task switch: everything follows
        expect(page.get_by_text("no defect-free class")).to_be_visible()
        expect(page.locator("#verdict")).to_have_count(0)
        expect(page.locator("#patient")).to_be_hidden()  # the steel model takes no record
        page.get_by_text("About the classes").click()
        expect(page.locator("#about-classes")).to_contain_text("Rolled-in scale")
        page.locator("#input-image input[type=file]").set_input_files(str(steel))
        page.locator("#analyse").click()
        expect(page.locator("#verdict")).to_contain_text("Decision support only", timeout=60_000)
        labels = page.locator("#probabilities").inner_text()
        assert all(code in labels for code in NEU_CODES) and "akiec" not in labels, labels
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-steel.png")), full_page=True)

        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-files input[type=file]").set_input_files([str(steel), str(lesion)])
        page.locator("#batch-run").click()
        expect(page.locator("#batch-table")).to_contain_text(steel.name, timeout=60_000)
        expect(page.locator("#batch-table")).to_contain_text(lesion.name)
        expect(page.locator("#batch-csv")).to_contain_text("skinlesion-results")
        browser.close()
    assert screenshot.stat().st_size > 10_000


def test_model_tab_and_placeholder_notice_render_from_metrics_json(server):
    from playwright.sync_api import expect, sync_playwright

    from skinlesion.models.card import is_placeholder, read_metrics
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    metrics = read_metrics(get_task("ham10000").model_folder)
    test = metrics["splits"]["test"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(server[0])
        notice = page.locator("#model-notice")
        if is_placeholder(metrics):
            expect(notice).to_contain_text("low-accuracy placeholder")
        else:
            expect(notice).to_be_hidden()
        expect(page.locator("#reliability")).to_be_hidden()  # the Model tab's, shown there only
        page.get_by_role("tab", name="Model").click()
        card = page.locator("#model-card")
        expect(card).to_contain_text("Recall-first operating point")
        expect(card).to_contain_text("Limitations of the data")
        expect(card).to_contain_text("Input check")
        expect(card).to_contain_text("90% prediction sets")
        page.locator("#reliability img").scroll_into_view_if_needed()  # loaded lazily, below the card
        expect(page.locator("#reliability img")).to_be_visible()
        if "subgroups" in metrics:  # the results by subgroup: a table per attribute and the plot
            expect(card).to_contain_text("By subgroup")
            expect(card).to_contain_text("skin tone")
            page.locator("#subgroups img").scroll_into_view_if_needed()
            expect(page.locator("#subgroups img")).to_be_visible()
        # the headline row of the test split, with metrics.json's figures
        for value in (test["balanced_accuracy"], test["macro_auc"], metrics["temperature"]):
            expect(card).to_contain_text(f"{value:.3f}")
        browser.close()


def test_benchmark_script_prints_its_table(capsys):
    from benchmarks.inference import main
    assert main(["--runs", "2", "--clients", "2"]) == 0
    table = capsys.readouterr().out
    for row in ("plain forward pass", "analyse with Grad-CAM", "input check's share", "similar cases",
                "app cold start", "app peak RSS", "2/2 ok"):
        assert row in table, table


def test_a_clean_copy_without_data_shows_shipped_examples_and_leaves_nothing_behind(tmp_path):
    """A copy of the repository with no data folder anywhere (as on the Space): the page offers
    the shipped examples with their true class, an analysis shows the similar training cases,
    and /similar answers for both tasks. Uploads and outputs live in the app's own temporary
    folder (a GRADIO_TEMP_DIR that does not exist yet is created), removed when it stops."""
    from gradio_client import Client, handle_file
    copy = tmp_path / "copy"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*_cache", "*.pyi"))
    examples = copy / "assets" / "examples"
    temp = tmp_path / "tmp" / "not-made-yet"
    with running_app(temp, tmp_path / "server.log", root=copy, SKINLESION_DATA="") as (url, _):
        client = Client(url, verbose=False)
        for task, image, confirmed in (("ham10000", examples / "ham10000" / "mel.jpg", ("histopathology", "follow-up",
                                                                                         "expert consensus",
                                                                                         "confocal microscopy")),
                                       ("neu", examples / "neu" / "scratches.jpg", ("label of the NEU",))):
            cases = client.predict(handle_file(image), task, api_name="/similar")
            assert len(cases) == 6, cases
            similarity = [float(c["caption"].rsplit("similarity ", 1)[1]) for c in cases]
            assert similarity == sorted(similarity, reverse=True)
            assert all(any(word in c["caption"] for word in confirmed) for c in cases), cases
        assert any(p.is_file() for p in temp.rglob("*")), "the uploads should be in the app's temp folder"
        if Path(CHROMIUM).exists():
            show_similar_cases_in_the_page(url)
    left = [p for p in temp.rglob("*") if p.is_file()]
    assert not left, left
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium): the page's part was not run")


def show_similar_cases_in_the_page(url: str) -> None:
    from playwright.sync_api import expect, sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        expect(page.get_by_text("Melanoma (mel), true class")).to_be_visible()
        page.get_by_text("Melanoma (mel), true class").click()
        page.locator("#analyse").click()
        expect(page.locator("#similar img")).to_have_count(6, timeout=60_000)
        expect(page.locator("#similar-summary")).to_contain_text("most similar training images")
        expect(page.locator("#prediction-set")).to_contain_text("90% prediction set")
        # another example clicked, a verdict being shown: its verdict, map and similar cases, no Analyse pressed
        shown = {name: page.locator(name).inner_html() for name in ("#verdict", "#gradcam", "#similar")}
        page.get_by_text("Vascular lesion (vasc), true class").click()
        for name, before in shown.items():
            expect(page.locator(name)).not_to_have_js_property("innerHTML", before, timeout=60_000)
        expect(page.locator("#similar img")).to_have_count(6, timeout=60_000)
        browser.close()
