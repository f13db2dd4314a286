"""The running server, probed as an attacker would, through raw HTTP and gradio_client: it reads
only what was uploaded to it, bounds what a request can make it hold or compute, serves only
the files the page shows, and deletes what it was sent."""
from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REAL_HAM, ROOT, SHARED_DATA, running_app
from PIL import Image
from test_hardening import jpeg_bytes

from benchmarks.served import call, upload
from skinlesion.app.views import example_images
from skinlesion.images import WORKING_PIXELS, working_size
from skinlesion.tasks import get_task

pytestmark = pytest.mark.slow
KEEP = 4  # seconds the server keeps uploads and outputs here (SKINLESION_KEEP_SECONDS)
FILE_DATA = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app with a short keep time: its url, temp folder, process and log, and the files the
    page itself keeps in that folder (its confusion matrices and examples, cached at start)."""
    base = tmp_path_factory.mktemp("secure")
    log = base / "server.log"
    with running_app(base / "tmp", log, SKINLESION_KEEP_SECONDS=str(KEEP)) as (url, process):
        temp = next((base / "tmp").glob("skinlesion-*"))
        yield SimpleNamespace(url=url, temp=temp, process=process, log=log, own=set(temp.rglob("*")))


def left_by_requests(app) -> list[Path]:
    return sorted(set(app.temp.rglob("*")) - app.own)


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client
    return Client(app.url, verbose=False)


def error_of(url: str, api: str, data: list) -> str:
    kind, answer = call(url, api, data)
    assert kind == "error", answer
    return answer["error"]


def test_a_file_the_client_names_is_not_read_and_its_existence_not_told(app, tmp_path):
    url = app.url
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(secret)
    for payload in ({"path": str(secret)}, {"path": str(secret), "meta": FILE_DATA}):
        message = error_of(url, "explain", [payload, "top", 0, "ham10000", "off", "Grad-CAM"])
        assert "only files uploaded" in message or "not uploaded by a user" in message  # Gradio's own check
    exists = error_of(url, "classify", [{"path": str(secret)}, "ham10000", "auto"])
    missing = error_of(url, "classify", [{"path": str(tmp_path / "nothing.png")}, "ham10000", "auto"])
    text = error_of(url, "classify", [{"path": "/etc/hostname"}, "ham10000", "auto"])
    assert exists == missing == text == "Cannot analyse this image: only files uploaded to this app are accepted."
    assert error_of(url, "classify", [{"path": "https://example.com/a.jpg", "meta": FILE_DATA}, "ham10000", "auto"])


def test_batch_takes_no_folder_and_the_cleanup_goes_on(app, client, tmp_path):
    from gradio_client import handle_file
    url, temp = app.url, app.temp
    client.predict(handle_file(write(tmp_path / "mine.jpg", jpeg_bytes())), api_name="/classify")
    uploads = [p for p in temp.rglob("*") if p.is_file()]
    assert uploads, "the upload should be in the server's folder"
    for named in (str(temp), str(uploads[0].parent), f"{temp}/*", f"{temp}/**/*.jpg"):
        for payload in ({"path": named, "meta": FILE_DATA}, {"path": named}):
            assert error_of(url, "batch", [[payload], "ham10000", "off"])
    time.sleep(4 * KEEP)  # Gradio's cleanup still runs: the upload, and its folder, are gone
    assert not left_by_requests(app)


def test_long_images_are_bounded(app, client, tmp_path):
    from gradio_client import handle_file
    thin = tmp_path / "thin.png"
    Image.new("L", (65535, 16)).save(thin)  # a few hundred bytes
    assert thin.stat().st_size < 2000
    assert client.predict(handle_file(thin), task="neu", api_name="/classify")["label"]  # analysed whole
    long = tmp_path / "long.png"
    Image.new("L", (8000, 64)).save(long)
    with pytest.raises(Exception, match="would take 249 tiles, and the limit is 32"):
        client.predict(handle_file(long), "top", 0.45, "neu", api_name="/analyse")
    table, _ = client.predict([handle_file(long), handle_file(thin)], "neu", api_name="/batch")
    assert "limit is 32" in table["data"][0][4] and table["data"][1][1]


def test_request_bodies_and_echoed_values_are_bounded(app, client):
    url, log = app.url, app.log
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/gradio_api/call/classify")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(30 * 1024 ** 2))
    connection.endheaders()  # refused from the header, before the body is sent
    response = connection.getresponse()
    assert response.status == 413 and b"larger than 25 MB" in response.read()
    with pytest.raises((urllib.error.URLError, ConnectionError)) as refused:  # a data URL inside the JSON:
        call(url, "classify", [{"url": "data:image/png;base64," + "A" * (26 * 1024 ** 2)}, "ham10000", "auto"])
    assert getattr(refused.value, "code", 413) == 413  # 413, or the connection closed while still sending
    small = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()
    assert call(url, "classify", [{"url": small}, "ham10000", "auto"])[0] == "complete"
    message = error_of(url, "classify", [{"url": small}, "t" * 1_000_000, "auto"])
    assert message.startswith("Unknown task 'tttt") and len(message) < 200
    for bad in ([{"url": small}, "top", "0.5; rm", "ham10000", "auto", "Grad-CAM"],
                [{"url": small}, "top", 0.5, "ham10000", "sideways", "Grad-CAM"],
                [{"url": small}, "top", 0.5, "ham10000", "auto", "x" * 100_000],
                [{"url": small}, {"a": 1}, 0.5, "ham10000", "auto", "Grad-CAM"]):
        assert len(error_of(url, "explain", bad)) < 300
    assert max(map(len, log.read_text().splitlines())) <= 1024


def abandon_an_upload(url: str, sent: int = 2 * 1024 ** 2) -> None:
    """A multipart upload that declares 20 MB, sends `sent` bytes of its file, and hangs up."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    boundary = "skinlesion-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="half.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/gradio_api/upload")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(20 * 1024 ** 2))
    connection.endheaders()
    connection.send(head + b"\xff" * sent)
    time.sleep(1)
    connection.close()


def test_the_cleanup_survives_concurrent_uploads_and_removes_partial_ones(app):
    """16 clients uploading at once (Gradio's own cleanup died of this: "Set changed size during
    iteration"), and an upload abandoned half-way: a file uploaded afterwards, and everything the
    requests left, is gone a keep time and two sweeps later."""
    from concurrent.futures import ThreadPoolExecutor
    data, until = jpeg_bytes(), time.monotonic() + 6

    def uploader(i: int) -> int:
        count = 0
        while time.monotonic() < until:
            upload(app.url, f"u{i}-{count}.jpg", data)
            count += 1
        return count

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(uploader, range(16))) > 16
    abandon_an_upload(app.url)
    last = Path(upload(app.url, "last.jpg", data))
    assert last.is_file()
    time.sleep(KEEP + 2 * max(1, KEEP // 2) + 3)
    assert not last.exists()
    assert not [p for p in left_by_requests(app) if p.is_file()]


def test_a_40_megapixel_image_is_analysed_at_the_working_resolution(client, tmp_path):
    """The overlay of a 40-megapixel upload comes back at most WORKING_PIXELS large, in its
    proportions: the server never holds a full-size heat-map, overlay or page state of it."""
    from gradio_client import handle_file
    rng = np.random.default_rng(0)
    path = tmp_path / "huge.jpg"
    Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)).resize((8000, 5000)).save(path, quality=80)
    _, label, overlay = client.predict(handle_file(path), "top", 0.45, "ham10000", "auto", "Grad-CAM",
                                       api_name="/analyse")
    with Image.open(overlay) as shown:
        assert shown.size == working_size(8000, 5000) and shown.size[0] * shown.size[1] <= WORKING_PIXELS
    assert label["label"]


def test_a_request_with_a_value_missing_is_not_echoed(app):
    """One value too few, with a 4 MB data URL among the others: a short error, and nothing of
    the image in the reply or in the server's log."""
    big = "data:image/png;base64," + base64.b64encode(np.random.default_rng(0).bytes(3 * 1024 ** 2)).decode()
    before = app.log.stat().st_size
    message = error_of(app.url, "classify", [{"url": big}, "ham10000"])
    assert message == "This endpoint takes 3 values; the request sent 2.", message[:300]
    time.sleep(1)
    with app.log.open("rb") as f:
        f.seek(before)
        written = f.read()
    assert big[40:100].encode() not in written and len(written) < 10_000


@pytest.mark.parametrize("value", [1, 0.0, 1.0])
def test_a_number_is_not_a_tile_setting(app, value):
    small = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()
    assert error_of(app.url, "classify", [{"url": small}, "ham10000", value]).startswith("Unknown tile setting")


def test_only_the_upload_route_takes_a_batch_sized_body(app):
    """/upload takes a whole batch (201 MB) as a multipart upload; every other route, however
    named, and a JSON body to /upload, 25 MB, refused from the length before the body is read."""
    host, port = urllib.parse.urlsplit(app.url).netloc.split(":")
    for route in ("/gradio_api/call/upload", "/gradio_api/api/upload", "/gradio_api/upload/../call/classify",
                  "/gradio_api/upload"):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", route)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(60 * 1024 ** 2))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413, (route, response.status)
        connection.close()


def raw(url: str, method: str, path: str, body: object = None, headers: dict | None = None) -> tuple[int, bytes]:
    """One raw HTTP request: (status, body), whatever the status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path.lstrip("/"), data, {"Content-Type": "application/json",
                                                                   **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def endpoint_ids(url: str) -> dict[str, int]:
    config = json.loads(raw(url, "GET", "config")[1])
    return {d["api_name"]: d["id"] for d in config["dependencies"]}


def test_what_gradio_answered_with_a_500_or_let_through_is_refused(app):
    """Unknown fn_index → 400 (Gradio: 500); a malformed or multi-part Range → the whole file
    (Starlette: 500); the REST routes that skip the queue → closed; a 5 MB session hash → 400,
    before anything is kept (Gradio kept each, 7.7 MB a request)."""
    url, small = app.url, {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()}
    for index in (999, -1):
        status, body = raw(url, "POST", "gradio_api/queue/join", {"data": [], "fn_index": index, "session_hash": "s"})
        assert (status, json.loads(body)["detail"]) == (400, "There is no such endpoint."), index
    shown = ROOT / "assets" / "models" / "ham10000" / "confusion_matrix.png"
    whole = raw(url, "GET", f"gradio_api/file={shown}")[1]
    for header in ("bytes=0-0,5-1", "bytes=0-1,2-3", "bytes=1-2-3", "bytes=abc", "items=0-5"):
        assert raw(url, "GET", f"gradio_api/file={shown}", headers={"Range": header}) == (200, whole), header
    assert raw(url, "GET", f"gradio_api/file={shown}", headers={"Range": "bytes=0-9"}) == (206, whole[:10])
    for route in ("gradio_api/run/classify", "gradio_api/api/classify"):
        assert raw(url, "POST", route, {"data": [small, "ham10000", "auto"]})[0] == 404, route
    ids, long = endpoint_ids(url), "h" * (5 * 1024 ** 2)
    status, body = raw(url, "POST", "gradio_api/queue/join",
                       {"data": [small, "ham10000", "auto"], "fn_index": ids["classify"], "session_hash": long})
    assert (status, json.loads(body)["detail"]) == (400, "The session hash is too long.")
    for path in (f"gradio_api/queue/data?session_hash={'h' * 10_000}", f"gradio_api/heartbeat/{'h' * 10_000}"):
        assert raw(url, "GET", path)[0] == 400


def test_one_client_gets_a_share_of_the_queue_and_others_still_get_in(app, tmp_path):
    """Behind a comparison (seconds), one client's maps wait in the queue: it gets CLIENT_SHARE
    places, its next requests a 503 at once, and another client (another address forwarded by
    the proxy in front) still gets in."""
    from concurrent.futures import ThreadPoolExecutor

    from skinlesion.app.gate import CLIENT_SHARE
    url, small = app.url, {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()}
    one, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.9, 203.0.113.8"}
    pool = ThreadPoolExecutor(2)  # two comparisons of a third client: seconds of work ahead in the queue
    blockers = [pool.submit(call, url, "compare", [small, "top", 0.5, "ham10000"], {"X-Forwarded-For": "192.0.2.1"})
                for _ in range(2)]
    time.sleep(0.5)
    statuses = [raw(url, "POST", "gradio_api/call/explain", {"data": [small, "top", 0.5, "ham10000", "auto",
                                                                      "Grad-CAM"]}, one)
                for _ in range(CLIENT_SHARE + 4)]
    assert [s for s, _ in statuses] == [200] * CLIENT_SHARE + [503] * 4, [s for s, _ in statuses]
    assert b"This client already has" in statuses[-1][1]
    assert raw(url, "POST", "gradio_api/call/classify", {"data": [small, "ham10000", "auto"]}, other)[0] == 200
    assert [b.result()[0] for b in blockers] == ["complete"] * 2


def test_a_page_session_and_its_state_end_with_the_page(app):
    """A page's session (its heartbeat stream open) keeps its state: the opacity slider
    reblends the last map. When the page closes, the session is forgotten within the grace
    time, its state with it: the same session's reblend then has nothing to draw."""
    import threading
    url, ids, session = app.url, endpoint_ids(app.url), "page-session-1"
    small = {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()}
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    heartbeat = http.client.HTTPConnection(host, int(port), timeout=30)
    heartbeat.request("GET", f"/gradio_api/heartbeat/{session}")
    reading = threading.Thread(target=lambda: heartbeat.getresponse().read(1), daemon=True)
    reading.start()

    def run(name: str, data: list) -> dict:
        status, _ = raw(url, "POST", "gradio_api/queue/join",
                        {"data": data, "fn_index": ids[name], "session_hash": session, "trigger_id": None})
        assert status == 200
        with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
            for line in stream:
                message = json.loads(line[6:]) if line.startswith(b"data: ") else {}
                if message.get("msg") == "process_completed":
                    return message["output"]  # {"data": [...]} or {"error": ...}
        raise AssertionError("no answer")

    def drawn(output: object) -> bool:
        return isinstance(output, dict) and bool(output.get("url"))

    assert drawn(run("page_analyse", [small, "top", 0.5, "ham10000", "auto", "Grad-CAM"])["data"][2])
    assert drawn(run("reblend", [None, 0.3])["data"][0])  # the page's state: the last image and map
    time.sleep(KEEP + 3)  # a page still open keeps its session past the grace time
    assert drawn(run("reblend", [None, 0.4])["data"][0])
    assert run("reblend", [None, float("nan")])["error"].startswith("The opacity must be a number from 0 to 1")
    heartbeat.close()
    time.sleep(KEEP + 3)
    assert not drawn(run("reblend", [None, 0.5])["data"][0])


def test_deep_links_and_the_monitoring_dashboard_are_not_served(app):
    for route in ("gradio_api/deep_link?session_hash=x", "monitoring", "monitoring/summary", "monitoring/abc"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(app.url + route, timeout=30)
        assert refused.value.code == 404, route
    assert not list(app.temp.rglob("deep_links")) and "monitoring" not in app.log.read_text().lower()


def test_a_bad_file_in_a_batch_gets_its_row_and_the_rest_go_on(client, tmp_path):
    from gradio_client import handle_file
    files = [write(tmp_path / f"good{i}.jpg", jpeg_bytes(i)) for i in range(3)]
    files.insert(1, write(tmp_path / "cut.jpg", jpeg_bytes()[:10]))
    table, _ = client.predict([handle_file(f) for f in files], "ham10000", api_name="/batch")
    rows = table["data"]
    assert [r[0] for r in rows] == [f.name for f in files]
    assert "damaged" in rows[1][4] and all(r[1] and not r[4] for i, r in enumerate(rows) if i != 1)


def test_the_batch_pixel_budget(client, tmp_path):
    """A small zip of large one-bit PNGs: decoding stops at the budget, and the rows say so."""
    from gradio_client import handle_file
    buffer = io.BytesIO()
    Image.new("1", (6000, 6500)).save(buffer, "PNG")  # 39 million pixels in a few kB
    archive = tmp_path / "bombs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(28):
            z.writestr(f"{i:02d}.png", buffer.getvalue())
    assert archive.stat().st_size < 1_000_000
    table, _ = client.predict([handle_file(archive)], "ham10000", "off", api_name="/batch")
    errors = [r[4] for r in table["data"]]
    assert len(errors) == 28 and not any(errors[:26]), [e[:80] for e in errors if e]
    assert all("limit of 1,000 million decoded pixels" in e for e in errors[26:])


@pytest.mark.skipif(not REAL_HAM.is_dir(), reason="no local HAM10000: the page shows no examples")
def test_only_the_files_the_page_shows_are_served(app):
    url = app.url

    def status(path: Path) -> int:
        try:
            return urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=30).status
        except urllib.error.HTTPError as error:
            return error.code

    shown = {Path(path).resolve() for path, _ in example_images(SimpleNamespace(task=get_task("ham10000")),
                                                                 str(SHARED_DATA))}
    not_shown = next(p.resolve() for p in sorted((REAL_HAM / "images").glob("*.jpg")) if p.resolve() not in shown)
    assert status(REAL_HAM / "HAM10000_metadata.csv") == 403 and status(not_shown) == 403
    assert status(min(shown)) == 200 and status(ROOT / "assets" / "models" / "ham10000" / "confusion_matrix.png") == 200
    assert status(ROOT / "assets" / "models" / "ham10000" / "config.json") == 403


def test_the_batch_csv_is_deleted_with_the_uploads_and_formulas_are_text(app, client, tmp_path):
    from gradio_client import handle_file
    named = write(tmp_path / "=SUM(1+1).jpg", jpeg_bytes())
    archive = tmp_path / "dots.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(".hidden.jpg", jpeg_bytes())
        z.writestr("../up.jpg", jpeg_bytes())
    table, csv_path = client.predict([handle_file(named), handle_file(archive)], "ham10000", api_name="/batch")
    with open(csv_path, newline="") as f:
        saved = list(csv.DictReader(f))
    assert saved[0]["file"] == "'=SUM(1+1).jpg"
    assert [r["file"] for r in saved[1:]] == ["dots.zip/.hidden.jpg", "dots.zip/../up.jpg"]
    assert all("not analysed" in r["error"] for r in saved[1:])
    assert list(app.temp.rglob("*.csv"))
    time.sleep(4 * KEEP)
    assert not left_by_requests(app)


def test_peak_memory_of_the_server_under_these_tests(app):
    """Last in this module: the server's peak resident memory after everything above (a
    40-megapixel image, comparisons and maps running at once; Integrated Gradients takes two
    steps per backward pass, about 0.2 GB; all eight at once took 0.7 GB), within the goal of 2.5 GB."""
    status = Path(f"/proc/{app.process.pid}/status").read_text()
    peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_kb < 2.5 * 1024 ** 2, f"peak RSS {peak_kb / 1024:.0f} MB"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
