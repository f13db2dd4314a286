"""Operations as whoever runs the app meets them: /metrics read by Prometheus' own parser and
scraped by a real Prometheus server, /healthz, the decision log in SQLite and in a real
PostgreSQL server (killed mid-run), the command line's log and monitor, the Monitor tab."""
from __future__ import annotations

import collections
import hashlib
import shutil
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_HAM, ROOT, SHARED_DATA, running_app
from PIL import Image

from skinlesion.batch import batch_rows, expand
from skinlesion.ops import Operations, log
from skinlesion.ops.record import ANSWERED, BAD_INPUT, REFUSED, UNFAMILIAR, Decision
from skinlesion.predictor import Predictor

STEEL = SHARED_DATA / "neu_det" / "images" / "scratches_1.jpg"
LESIONS = ["ISIC_0024306.jpg", "ISIC_0024307.jpg", "ISIC_0024308.jpg"]


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_pretrained(task="ham10000")


def lesion_files(tmp_path: Path, n: int = 3) -> list[Path]:
    """Real lesion images when the data is here, else made-up ones."""
    if (REAL_HAM / "images").is_dir():
        return [REAL_HAM / "images" / name for name in LESIONS[:n]]
    rng, files = np.random.default_rng(0), []
    for i in range(n):
        image = np.full((150, 200, 3), (190, 140, 120), np.uint8)
        image[50:100, 70:130] = (90, 50, 40)
        files.append(tmp_path / f"lesion{i}.jpg")
        Image.fromarray(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)).save(files[-1])
    return files


def steel_file(tmp_path: Path) -> Path:
    if STEEL.is_file():
        return STEEL
    path = tmp_path / "steel.jpg"
    Image.fromarray(np.clip(np.random.default_rng(1).normal(120, 20, (200, 200)), 0, 255).astype(np.uint8)).save(path)
    return path


def samples(registry_text: str) -> dict[tuple, float]:
    """/metrics' samples: (name, sorted labels) → value, by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(registry_text) for s in family.samples}


def images_counted(values: dict, endpoint: str, outcome: str, task: str = "ham10000") -> float:
    return values.get(("skinlesion_images_total", (("endpoint", endpoint), ("outcome", outcome), ("task", task))), 0)


# --- fast: the parts in one process -------------------------------------------------------------

def test_a_batch_reports_each_file_once_and_the_log_keeps_no_image(predictor, tmp_path):
    """batch_rows' observer through Operations into an SQLite log: one row per file in order,
    the hash of each file's bytes, the answer's probabilities, a bad file's reason; no bytes
    of any image in the database file."""
    files = lesion_files(tmp_path, 2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    url = f"sqlite:///{tmp_path / 'log.db'}"
    ops = Operations({"ham10000": predictor}, url)
    rows = list(batch_rows(predictor, expand([*map(str, files), str(bad)]), observe=ops.reporter(predictor, "cli")))
    ops.close()
    logged = log.read(url)
    assert [d.endpoint for d in logged] == ["cli"] * 3
    assert [d.sha256 for d in logged] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in [*files, bad]]
    assert [d.outcome for d in logged][:2] == [ANSWERED if r["familiar"] else UNFAMILIAR for r in rows[:2]]
    assert logged[2].outcome == BAD_INPUT and logged[2].error == rows[2]["error"] and not logged[2].probabilities
    assert logged[0].probabilities == pytest.approx({c: rows[0][c] for c in predictor.codes}, abs=1e-6)
    assert logged[0].model == ops.models["ham10000"] == hashlib.sha256(
        (predictor.folder / "model.safetensors").read_bytes()).hexdigest()
    stored = (tmp_path / "log.db").read_bytes()
    assert not any(p.read_bytes()[200:264] in stored for p in files)  # no image bytes anywhere
    window = list(ops.window)
    assert len(window) == 3 and all(d.sha256 is None for d in window)  # the window keeps no hash


def test_metrics_count_each_decision_by_outcome(predictor, tmp_path):
    ops = Operations({"ham10000": predictor})
    [lesion] = lesion_files(tmp_path, 1)
    with ops.request("classify"):
        ops.image("ham10000", 12.0, predictor.analyse(lesion, method=None), source=lesion)
    ops.image("ham10000", 1.0, error="Cannot analyse this image: not an image", endpoint="classify")
    with_record = predictor.analyse(lesion, method=None, patient=predictor.patient(55, "male", "back"))
    with ops.request("analyse"):
        ops.image("ham10000", 12.0, with_record, source=lesion, endpoint="analyse")
    from prometheus_client import generate_latest
    values = samples(generate_latest(ops.metrics.registry).decode())
    assert values[("skinlesion_requests_total", (("endpoint", "classify"), ("status", "ok")))] == 1
    assert images_counted(values, "classify", BAD_INPUT) == 1
    assert images_counted(values, "classify", ANSWERED) + images_counted(values, "classify", UNFAMILIAR) == 1
    assert values[("skinlesion_model_info", (("architecture", "efficientnet_lite0"), ("sha256", ops.models["ham10000"]),
                                             ("task", "ham10000")))] == 1
    assert values[("skinlesion_prediction_set_size_count", (("task", "ham10000"),))] == 2
    record = {dict(labels)["endpoint"]: v for (name, labels), v in values.items()
              if name == "skinlesion_record_answers_total"}
    assert record == {"analyse": 1}  # the answer with a record, not the one without


def test_a_dead_database_never_blocks_an_answer_and_full_queues_drop_counted(tmp_path):
    """A log whose server does not answer: put() returns at once, the failure is counted and
    the rows wait; past the queue's capacity rows are dropped and counted."""
    heard = []
    writer = log.DecisionLog("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1", capacity=3,
                             on_status=lambda status, n: heard.append(status))
    decision = Decision("ham10000", "0" * 64, "classify", ANSWERED, 1.0)
    start = time.perf_counter()
    results = [writer.put(decision) for _ in range(6)]
    assert time.perf_counter() - start < 0.5
    assert results.count(False) >= 2 and "dropped" in heard
    deadline = time.monotonic() + 10
    while "failed" not in heard and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "failed" in heard and "written" not in heard
    writer.stopping.set()


def test_purge_deletes_only_old_rows(tmp_path):
    from datetime import datetime, timedelta, timezone
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = log.DecisionLog(url)
    now = datetime.now(timezone.utc)
    for age in (0, 2, 10):
        writer.put(Decision("ham10000", "0" * 64, "cli", REFUSED, 1.0, time=now - timedelta(days=age)))
    writer.close()
    assert log.purge(url, 5) == 1
    assert sorted(round((now - d.time).total_seconds() / 86400) for d in log.read(url)) == [0, 2]


def older_log(url: str) -> None:
    """The decision log's table as an earlier version made it: without the `record` column, one row in it."""
    from sqlalchemy import Column, MetaData, Table, create_engine, insert
    old = Table("decisions", MetaData(), *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                           for c in log.decisions.columns if c.name != "record"))
    engine = create_engine(url)
    old.metadata.create_all(engine)
    row = log.as_row(Decision("ham10000", "0" * 64, "cli", REFUSED, 1.0))
    with engine.begin() as connection:
        connection.execute(insert(old), [{k: v for k, v in row.items() if k != "record"}])
    engine.dispose()


def check_upgrade(url: str, predictor, image) -> None:
    """An older log gains the column; its rows read as image-alone; an answer with a record says so."""
    older_log(url)
    analysis = predictor.analyse(image, method=None, patient=predictor.patient(55, "male", "back"))
    assert analysis.patient is not None
    writer = log.DecisionLog(url)
    writer.put(Decision.of("ham10000", "0" * 64, "classify", 1.0, analysis))
    writer.put(Decision.of("ham10000", "0" * 64, "classify", 1.0, predictor.analyse(image, method=None)))
    writer.close()
    assert [d.record for d in log.read(url)] == [False, True, False]


def test_an_older_log_gains_the_record_flag(predictor, tmp_path):
    check_upgrade(f"sqlite:///{tmp_path / 'log.db'}", predictor, lesion_files(tmp_path, 1)[0])


# --- slow: the real app, real database and Prometheus servers ------------------------------------

def send(url: str, lesions: list[Path], steel: Path, bad: Path, tmp_path: Path) -> dict[tuple[str, str], int]:
    """Answers, a refusal, a bad file and a batch (a zip of two lesions and the bad file) through
    gradio_client; what was sent: (endpoint, outcome) → images (outcome by the answers)."""
    from gradio_client import Client, handle_file
    client = Client(url, verbose=False)
    sent: dict[tuple[str, str], int] = {}

    def count(endpoint, label):
        text = label["label"]
        outcome = REFUSED if text.startswith("not analysed") else UNFAMILIAR if text.startswith("unfamiliar") \
            else ANSWERED
        sent[endpoint, outcome] = sent.get((endpoint, outcome), 0) + 1

    count("classify", client.predict(handle_file(lesions[0]), "ham10000", "auto", api_name="/classify"))
    count("analyse", client.predict(handle_file(lesions[1]), "top", 0.5, "ham10000", "auto", "Grad-CAM",
                                    api_name="/analyse")[1])
    count("classify", client.predict(handle_file(steel), "ham10000", "auto", api_name="/classify"))
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(bad), "ham10000", "auto", api_name="/classify")
    sent["classify", BAD_INPUT] = 1
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in (*lesions[:2], bad):
            z.write(p, p.name)
    table, _ = client.predict([handle_file(archive)], "ham10000", "auto", api_name="/batch")
    for row in table["data"]:
        outcome = BAD_INPUT if row[4] else REFUSED if row[1].startswith("not analysed") else \
            UNFAMILIAR if "unfamiliar" in row[1] else ANSWERED
        sent["batch", outcome] = sent.get(("batch", outcome), 0) + 1
    return sent


def read_metrics(url: str) -> dict:
    with urllib.request.urlopen(url + "metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(response.read().decode())


def check_counters(url: str, sent: dict) -> None:
    values = read_metrics(url)
    for (endpoint, outcome), n in sent.items():
        assert images_counted(values, endpoint, outcome) == n, (endpoint, outcome, n)
    counted = sum(v for (name, _), v in values.items() if name == "skinlesion_images_total")
    assert counted == sum(sent.values())
    requests = {dict(labels)["endpoint"]: v for (name, labels), v in values.items()
                if name == "skinlesion_requests_total" and dict(labels)["status"] == "bad_input"}
    assert requests == {"classify": sent["classify", BAD_INPUT]}  # the bad file: its request too


@pytest.fixture
def inputs(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not an image")
    return lesion_files(tmp_path), steel_file(tmp_path), bad


@pytest.mark.slow
def test_metrics_move_by_exactly_what_was_sent_and_the_sqlite_log_has_one_row_per_image(tmp_path, inputs):
    lesions, steel, bad = inputs
    db = tmp_path / "decisions.db"
    with running_app(tmp_path / "tmp", tmp_path / "server.log", SKINLESION_LOG_DB=f"sqlite:///{db}") as (url, _):
        with urllib.request.urlopen(url + "healthz", timeout=10) as response:
            import json
            health = json.load(response)
        assert health["status"] == "ok" and set(health["models"]) == {"ham10000", "neu"}
        before = read_metrics(url)
        assert not any(name == "skinlesion_images_total" for name, _ in before)
        sent = send(url, lesions, steel, bad, tmp_path)
        check_counters(url, sent)
        deadline = time.monotonic() + 20
        while len(log.read(f"sqlite:///{db}")) < sum(sent.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
    rows = log.read(f"sqlite:///{db}")
    assert len(rows) == sum(sent.values())
    assert {(d.endpoint, d.outcome) for d in rows} == set(sent)
    assert {d.sha256 for d in rows if d.endpoint == "classify" and d.outcome != BAD_INPUT} == {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (lesions[0], steel)}
    stored = db.read_bytes()
    assert not any(p.read_bytes()[200:264] in stored for p in (*lesions, steel))


@pytest.mark.slow
def test_postgresql_log_survives_the_database_dying_mid_run(tmp_path, inputs):
    """A real PostgreSQL server, stopped while answers are sent and started again: every answer
    comes back, the failure shows in /metrics, and the rows written once it is back."""
    from services import postgres_server
    lesions, steel, bad = inputs
    with postgres_server(tmp_path / "pg") as pg, \
            running_app(tmp_path / "tmp", tmp_path / "server.log", SKINLESION_LOG_DB=pg.url) as (url, _):
        sent = send(url, lesions, steel, bad, tmp_path)
        wait_for_rows(pg.url, sum(sent.values()))
        pg.stop()
        again = send(url, lesions, steel, bad, tmp_path)  # every answer still comes
        check_counters(url, {k: sent.get(k, 0) + again.get(k, 0) for k in {*sent, *again}})
        deadline = time.monotonic() + 30
        while not any(name == "skinlesion_log_rows_total" and dict(labels) == {"status": "failed"}
                      for name, labels in read_metrics(url)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert any(name == "skinlesion_log_rows_total" and dict(labels) == {"status": "failed"}
                   for name, labels in read_metrics(url))
        pg.start()
        rows = wait_for_rows(pg.url, sum(sent.values()) + sum(again.values()), timeout=90)
    assert len(rows) == sum(sent.values()) + sum(again.values())
    assert not any(p.read_bytes()[200:264] in repr(rows).encode() for p in lesions)


@pytest.mark.slow
def test_an_older_postgresql_log_gains_the_record_flag(tmp_path, predictor):
    from services import postgres_server
    with postgres_server(tmp_path / "pg") as pg:
        check_upgrade(pg.url, predictor, lesion_files(tmp_path, 1)[0])


def wait_for_rows(url: str, n: int, timeout: float = 30) -> list[Decision]:
    deadline, rows = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            rows = log.read(url)
        except Exception:
            rows = []
        if len(rows) >= n:
            return rows
        time.sleep(0.5)
    return rows


@pytest.mark.slow
def test_prometheus_scrapes_the_app_with_the_documented_config(tmp_path, inputs):
    from services import prometheus_server
    lesions, steel, bad = inputs
    with running_app(tmp_path / "tmp", tmp_path / "server.log") as (url, _):
        port = url.rstrip("/").rsplit(":", 1)[1]
        with prometheus_server(tmp_path / "prom", [f"127.0.0.1:{port}"], ROOT / "deploy" / "prometheus.yml") as prom:
            sent = send(url, lesions, steel, bad, tmp_path)
            prom.wait_for_scrape(60)
            deadline, total = time.monotonic() + 30, 0
            while time.monotonic() < deadline:
                result = prom.query("sum(skinlesion_images_total)")
                total = float(result[0]["value"][1]) if result else 0
                if total == sum(sent.values()):
                    break
                time.sleep(1)
    assert total == sum(sent.values())


@pytest.mark.slow
def test_the_command_line_logs_and_monitor_reports(tmp_path, inputs, predictor):
    """predict --log-db writes one row per file; monitor prints the report, exit 0 without an
    alarm; purge deletes nothing recent."""
    import subprocess
    import sys
    lesions, _, bad = inputs
    url = f"sqlite:///{tmp_path / 'log.db'}"
    run = [sys.executable, "-m", "skinlesion"]
    subprocess.run([*run, "predict", *map(str, lesions), str(bad), "--out", str(tmp_path / "out.csv"),
                    "--log-db", url], check=True, cwd=ROOT, capture_output=True)
    assert [d.endpoint for d in log.read(url)] == ["cli"] * 4
    shown = subprocess.run([*run, "monitor", "--db", url, "--since", "1h"], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "4" in shown.stdout
    purged = subprocess.run([*run, "purge", "--db", url, "--days", "1"], cwd=ROOT, capture_output=True, text=True)
    assert purged.returncode == 0 and "deleted 0 rows" in purged.stderr



# --- drift on real images, through the reporting path --------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not (REAL_HAM / "HAM10000_metadata.csv").is_file(), reason="real HAM10000 not found")
def test_drift_stays_off_for_test_images_and_alarms_for_photographs_another_source_and_a_class_shift(predictor):
    """benchmarks/drift.py's streams: test images raise no alarm; a class shift alarms on the
    class mix, photographs on the refused rate, PH2 on the unfamiliar rate; the estimated
    accuracy of the test images is within 0.03 of their measured one."""
    from benchmarks.drift import judged, streams
    from skinlesion.ops.drift import ALARM
    found = streams(predictor, SHARED_DATA)
    expected = {"class shift": "class_mix", "photographs": "refused_rate", "another source": "unfamiliar_rate"}
    for name, (images, labels) in found.items():
        report, measured = judged(predictor, images, labels)
        if name == "test images":
            assert not report.alarm and abs(report.accuracy - measured) <= 0.03, report.text()
        else:
            assert {s.key: s.level for s in report.statistics}[expected[name]] == ALARM, report.text()
    assert len(found) == 4 or not (SHARED_DATA / "dermoscopy_external").is_dir()


@pytest.mark.slow
def test_the_monitor_tab_shows_its_plots_in_a_real_browser(tmp_path, inputs):
    from playwright.sync_api import expect, sync_playwright
    from test_app import CHROMIUM, CHROMIUM_FLAGS
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    lesions, steel, bad = inputs
    with running_app(tmp_path / "tmp", tmp_path / "server.log") as (url, _):
        sent = send(url, lesions, steel, bad, tmp_path)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            # One image on the page, analysed with its map: reported once (when it was set), the
            # Analyse button's request counted as a request, not as a second image.
            page.locator("#input-image input[type=file]").set_input_files(str(lesions[2]))
            page.locator("#analyse").click()
            expect(page.locator("#gradcam img")).to_be_visible(timeout=60_000)
            deadline = time.monotonic() + 30  # the upload's own answer runs in the other queue
            while True:
                values = read_metrics(url)
                page_images = {e: sum(v for (name, labels), v in values.items()
                                      if name == "skinlesion_images_total" and dict(labels)["endpoint"] == e)
                               for e in ("page_classify", "page_analyse")}
                if page_images["page_classify"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert page_images == {"page_classify": 1, "page_analyse": 0}
            assert values[("skinlesion_requests_total", (("endpoint", "page_analyse"), ("status", "ok")))] == 1
            # The patient's age entered: the label, the verdict and the map answered again with it (a
            # request, no new image), the verdict naming the record it used.
            expect(page.locator("#patient-record")).to_have_count(0)
            page.get_by_text("The patient (optional)").click()
            page.locator("#patient-age input").fill("70")
            page.locator("#patient-age input").press("Enter")
            deadline, done = time.monotonic() + 60, ("skinlesion_requests_total",
                                                     (("endpoint", "page_record"), ("status", "ok")))
            while read_metrics(url).get(done, 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            values = read_metrics(url)
            assert values.get(done, 0) >= 1
            assert sum(v for (name, _), v in values.items() if name == "skinlesion_images_total") \
                == sum(sent.values()) + 1
            expect(page.locator("#probabilities")).to_contain_text("%")
            if (REAL_HAM / "images").is_dir():  # a real lesion: answered, so the verdict names the record
                expect(page.locator("#patient-record")).to_have_text("With the patient's record: age.",
                                                                      timeout=60_000)
            map_shown = page.locator("#gradcam img")
            expect(map_shown).to_be_visible()
            # Another image set: its label, and (a verdict being shown) its verdict and map too, with
            # no Analyse pressed: a request, adding no image of its own.
            earlier = map_shown.get_attribute("src")
            page.locator("#input-image input[type=file]").set_input_files(str(lesions[0]))
            expect(map_shown).not_to_have_attribute("src", earlier, timeout=60_000)
            values = read_metrics(url)
            assert values.get(("skinlesion_requests_total", (("endpoint", "page_image"), ("status", "ok"))), 0) == 2
            assert values[("skinlesion_requests_total", (("endpoint", "page_analyse"), ("status", "ok")))] == 1
            images = collections.Counter()
            for (name, labels), v in values.items():
                if name == "skinlesion_images_total":
                    images[dict(labels)["endpoint"]] += v
            assert images["page_image"] == 0 and images["page_classify"] == 2  # the replacing image once
            page.get_by_role("tab", name="Monitor").click()
            summary = page.locator("#monitor-summary")
            expect(summary).to_contain_text(f"{sum(images.values()):.0f} images", timeout=60_000)
            expect(summary).to_contain_text("not enough data")
            for name in ("class_mix", "scores", "rates", "accuracy", "latency"):
                expect(page.locator(f"#monitor-{name} img")).to_be_visible(timeout=30_000)
            page.screenshot(path=str(tmp_path / "monitor.png"), full_page=True)
            browser.close()


def test_a_new_image_takes_the_verdict_map_and_similar_cases_with_it(bundled_models, monkeypatch):
    """The page's image changed (page_image): before any verdict nothing is done (an Analyse
    pressed at once is not undone); once one is shown, the new image's whole analysis, as Analyse
    gives it; a removed image takes the verdict, map and similar cases away. The methods side by
    side (the last output) go in every case, and when the patient's record changes."""
    import gradio as gr

    from skinlesion.app import handlers as module
    handlers = module.Handlers({"ham10000": bundled_models["ham10000"]})
    examples = ROOT / "assets" / "examples" / "ham10000"
    first, second = (np.asarray(Image.open(examples / name)) for name in ("bcc.jpg", "nv.jpg"))
    settings = ("top", 0.45, "ham10000", "auto", "Grad-CAM")
    before = handlers.page_image("", second, *settings)
    assert len(before) == 7 and all(isinstance(o, type(gr.skip())) for o in before[:6]) and before[6] is None
    shown = handlers.page_analyse(first, *settings)[0]
    answer = handlers.page_image(shown, second, *settings)
    expected = handlers.page_analyse(second, *settings)
    assert answer[0] == expected[0] != shown and answer[1] == expected[1] and answer[4] == expected[4]
    assert [caption for _, caption in answer[5]] == [caption for _, caption in expected[5]] != []
    assert answer[2].size == expected[2].size and answer[6] is None
    removed = handlers.page_image(shown, None, *settings)
    assert removed[0] == "" and removed[2] is None and removed[3] is None and removed[5] is None
    assert removed[6] is None
    # a record changed: the label (and the verdict once shown) answered again with it, the methods gone
    monkeypatch.setattr(module, "upload_source", lambda payload: Path(payload["path"]) if payload else None)
    upload = {"path": str(examples / "bcc.jpg")}
    for verdict in ("", shown):
        record = handlers.page_record(verdict, upload, *settings, 70, None, None)
        assert len(record) == 7 and record[1] == handlers.classify(upload, "ham10000", "auto", 70)
        assert record[6] is None
        assert isinstance(record[0], type(gr.skip())) if not verdict else "patient-record" in record[0]


def test_a_verdict_that_answered_after_the_event_was_sent_is_followed(bundled_models, monkeypatch):
    """An image or record set while the page's Analyse is still queued reaches the server with the
    page's verdict as it was then (none): the server remembers that it has since answered the page
    with a verdict, so the new image (or record) is analysed whole all the same, and never left
    beside the earlier image's verdict. Another page, a removed image, an image that cannot be
    analysed and a task switch each leave no verdict remembered."""
    from types import SimpleNamespace

    import gradio as gr

    from skinlesion.app import handlers as module
    handlers = module.Handlers({"ham10000": bundled_models["ham10000"]})
    monkeypatch.setattr(module, "upload_source", lambda payload: Path(payload["path"]) if payload else None)
    examples = ROOT / "assets" / "examples" / "ham10000"
    first, second = ({"path": str(examples / name)} for name in ("bcc.jpg", "nv.jpg"))
    settings = ("top", 0.45, "ham10000", "auto", "Grad-CAM")
    page, other = SimpleNamespace(session_hash="page"), SimpleNamespace(session_hash="other")
    skipped = type(gr.skip())
    assert isinstance(handlers.page_image("", second, *settings, request=page)[0], skipped)
    earlier = handlers.page_analyse(first, *settings, request=page)[0]  # Analyse answered after the upload was sent
    answer = handlers.page_image("", second, *settings, request=page)
    assert answer[0] == handlers.page_analyse(second, *settings)[0] != earlier
    assert isinstance(handlers.page_image("", second, *settings, request=other)[0], skipped)
    record = handlers.page_record("", second, *settings, 70, None, None, request=page)
    assert "patient-record" in record[0]
    assert handlers.page_image("", None, *settings, request=page)[0] == ""  # removed: nothing remembered
    assert isinstance(handlers.page_image("", second, *settings, request=page)[0], skipped)
    handlers.page_analyse(first, *settings, request=page)
    unreadable = handlers.page_image("", {"path": str(ROOT / "README.md")}, *settings, request=page)
    assert unreadable[0] == "" and unreadable[2] is None  # cannot be analysed: the earlier verdict goes
    assert isinstance(handlers.page_record("", second, *settings, 70, None, None, request=page)[0], skipped)
    handlers.page_analyse(first, *settings, request=page)
    handlers.page_task(page)
    assert isinstance(handlers.page_image("", second, *settings, request=page)[0], skipped)


def page_demo(predictor, tmp_path):
    """The page over `predictor` with one example: (its Handlers, the demo, its events by api_name)."""
    from skinlesion.app.handlers import Handlers
    from skinlesion.app.layout import build_demo
    from skinlesion.app.views import TaskView
    sample = tmp_path / "nv.jpg"
    shutil.copy(ROOT / "assets" / "examples" / "ham10000" / "nv.jpg", sample)
    handlers = Handlers({"ham10000": predictor})
    demo = build_demo(handlers, {"ham10000": TaskView.of(predictor, [(str(sample), "nv")])})
    return handlers, demo, {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}


def test_an_example_clicked_is_analysed_as_an_image_set(bundled_models, tmp_path):
    """The examples set the page's image without an input event: page_example, chained after the
    example is loaded, runs page_image with its inputs and outputs, in the maps' queue, and counts
    as a request that adds no image."""
    from skinlesion.app.layout import PAGE_REPEATS
    handlers, demo, fns = page_demo(bundled_models["ham10000"], tmp_path)
    example, image = fns["page_example"], fns["page_image"]
    loaded = demo.fns[example.trigger_after]
    assert [t[1] for t in loaded.targets] == ["click"] and loaded.outputs == [i for i in image.inputs
                                                                              if i in loaded.outputs]
    assert example.inputs == image.inputs and example.outputs == image.outputs
    assert (example.concurrency_id, example.concurrency_limit) == ("explain", 1)
    assert example.fn.__wrapped__ == handlers.page_image and "page_example" in PAGE_REPEATS


def test_a_value_set_while_its_event_is_pending_is_answered_in_its_turn(bundled_models, tmp_path):
    """An image, example, record, class, method or opacity set while the event of the one before is
    still pending runs once that one is done (Gradio's default for input, blur, submit, release
    and then events drops it, leaving the page answering for the value before)."""
    _, demo, fns = page_demo(bundled_models["ham10000"], tmp_path)
    follows = [fn for fn in demo.fns.values() if fn.api_name in ("page_image", "page_example", "page_record",
                                                                  "explain", "page_explain")
               or getattr(fn.fn, "__name__", "") == "reblend"]
    assert len(follows) == 6 and {fn.trigger_mode for fn in follows} == {"always_last"}
    assert fns["page_analyse"].trigger_mode == "once"  # Analyse pressed twice runs once


def test_the_pages_image_is_reported_once_when_gradio_sends_it_again(bundled_models, tmp_path, monkeypatch):
    """Gradio fires the image's change twice when an image replaces another (page_classify): the
    upload a page reported last is answered again but counted once; another image, another page,
    or the same image after the page was cleared, are counted."""
    from types import SimpleNamespace

    from skinlesion.app import handlers as module
    handlers = module.Handlers({"ham10000": bundled_models["ham10000"]})
    classify = handlers.observed("page_classify", handlers.page_classify)
    monkeypatch.setattr(module, "upload_source", lambda payload: Path(payload["path"]) if payload else None)
    upload = {}
    for name in ("bcc.jpg", "nv.jpg"):
        shutil.copy(ROOT / "assets" / "examples" / "ham10000" / name, tmp_path / name)
        upload[name] = {"path": str(tmp_path / name)}
    one, two = SimpleNamespace(session_hash="one"), SimpleNamespace(session_hash="two")

    def counted() -> float:
        return sum(s.value for m in handlers.ops.metrics.registry.collect() for s in m.samples
                   if s.name == "skinlesion_images_total" and s.labels["endpoint"] == "page_classify")

    steps = [(upload["bcc.jpg"], one, 1), (upload["bcc.jpg"], one, 1), (upload["nv.jpg"], one, 2),
             (upload["nv.jpg"], two, 3), (None, one, 3), (upload["nv.jpg"], one, 4)]
    for image, page, expected in steps:
        label = classify(image, "ham10000", "auto", request=page)
        assert (label is None) == (image is None) and counted() == expected
    assert len(handlers.ops.window) == 4


def test_the_page_says_whether_its_answers_are_logged(tmp_path, monkeypatch):
    """The privacy note in "Data & ethics" follows the decision log: "nothing is logged" without
    it, what a row keeps (and never keeps) with it, in every task's view (the page shows the first)."""
    import skinlesion.app
    from skinlesion.app.views import LOGGED, NOT_LOGGED
    monkeypatch.delenv("SKINLESION_DATA", raising=False)
    monkeypatch.setattr(skinlesion.app, "private_temp_dir", lambda: None)  # the server's own, not needed
    built = []  # the views each page was built with: the task switch fills "Data & ethics" from them
    build = skinlesion.app.build_demo
    monkeypatch.setattr(skinlesion.app, "build_demo",
                        lambda handlers, views: built.append(views) or build(handlers, views))
    for url, shown, hidden in ((None, NOT_LOGGED, LOGGED), (f"sqlite:///{tmp_path / 'log.db'}", LOGGED, NOT_LOGGED)):
        if url:
            monkeypatch.setenv("SKINLESION_LOG_DB", url)
        else:
            monkeypatch.delenv("SKINLESION_LOG_DB", raising=False)
        app = skinlesion.app.create_app()
        try:
            ethics = [b for b in app.demo.blocks.values() if getattr(b, "elem_id", None) == "ethics"][0]
            notes = {task: view.ethics.strip() for task, view in built[-1].items()}
            assert len(notes) == 2 and ethics.value in notes.values()
            for note in notes.values():
                assert shown in note and hidden not in note
        finally:
            app.ops.close()
