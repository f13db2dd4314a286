"""What a client cannot make the app do, below the server: read files that were not uploaded,
decode without bound, tile without bound, or plant a formula in the CSV (the server-level
checks are in test_server_security.py)."""
from __future__ import annotations

import csv
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image, PngImagePlugin

from skinlesion.app.uploads import REFUSED, UPLOAD_LIMIT, UploadRefused, data_url_bytes, upload_source, uploaded_file
from skinlesion.batch import HIDDEN, Item, batch_rows, expand, write_csv
from skinlesion.images import InputError, load_image


def jpeg_bytes(seed: int = 0, size=(150, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_text_bomb() -> bytes:
    """A small PNG whose compressed text chunk inflates past PIL's limit (ValueError at open)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 3_000_000, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def bad_qoi() -> bytes:
    """A QOI header with garbage after it (IndexError inside PIL's decoder)."""
    return b"qoif" + struct.pack(">II", 64, 64) + bytes([3, 0]) + bytes(range(50))


def test_a_jpeg_cut_anywhere_is_an_input_error():
    data = jpeg_bytes()
    for cut in range(1, 800):
        with pytest.raises(InputError):
            load_image(data[:cut])


@pytest.mark.parametrize("make", [png_text_bomb, bad_qoi], ids=["png text bomb", "qoi"])
def test_other_decoder_failures_are_input_errors_in_the_projects_words(make):
    with pytest.raises(InputError, match="damaged or incomplete|not an image that can be read") as error:
        load_image(make())
    assert "MAX_TEXT_CHUNK" not in str(error.value) and "index" not in str(error.value)


def test_one_bad_file_never_stops_a_batch(predictor, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"good{i}.jpg").write_bytes(jpeg_bytes(i))
    (folder / "cut.jpg").write_bytes(jpeg_bytes()[:10])  # "Truncated File Read" at open
    (folder / "bomb.png").write_bytes(png_text_bomb())
    (folder / "bad.qoi").write_bytes(bad_qoi())
    rows = list(batch_rows(predictor, expand([folder])))
    errors = {Path(r["file"]).name: r["error"] for r in rows}
    assert len(rows) == 6 and [n for n, e in errors.items() if not e] == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert all("damaged" in e or "not an image" in e for n, e in errors.items() if not n.startswith("good"))


def test_the_pixel_budget_stops_decoding_and_says_so(predictor, tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(jpeg_bytes(i))  # 200×150 = 30,000 pixels each
    rows = list(batch_rows(predictor, expand(paths), max_pixels=60_000))
    assert [bool(r["error"]) for r in rows] == [False, False, True, True, True]
    assert "limit of 0 million decoded pixels before file 3" in rows[2]["error"]


def test_hidden_zip_members_and_names_leading_out_get_a_row(predictor, tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.jpg", jpeg_bytes())
        z.writestr(".hidden.jpg", jpeg_bytes())
        z.writestr("../x.jpg", jpeg_bytes())
        z.writestr("__MACOSX/._ok.jpg", b"resource fork")
    rows = list(batch_rows(predictor, expand([archive])))
    assert [(r["file"], r["error"]) for r in rows] == [("a.zip/ok.jpg", ""), ("a.zip/.hidden.jpg", HIDDEN),
                                                       ("a.zip/../x.jpg", HIDDEN)]


def test_csv_cells_that_look_like_formulas_are_neutralised(predictor, tmp_path):
    rows = list(batch_rows(predictor, [Item("=SUM(1+1).jpg", None, error="@cmd"), Item("-2+3.jpg", None, error="x")]))
    write_csv(tmp_path / "out.csv", predictor, rows)
    with open(tmp_path / "out.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    assert [r["file"] for r in saved] == ["'=SUM(1+1).jpg", "'-2+3.jpg"] and saved[0]["error"] == "'@cmd"


@pytest.fixture
def upload_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "uploads"
    (folder / "abc123").mkdir(parents=True)
    (folder / "abc123" / "photo.jpg").write_bytes(jpeg_bytes())
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def test_only_regular_files_inside_the_upload_folder_are_uploads(upload_folder, tmp_path):
    inside = upload_folder / "abc123" / "photo.jpg"
    assert uploaded_file(str(inside)) == inside.resolve()
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes())
    (upload_folder / "link.jpg").symlink_to(outside)
    for named in (outside, tmp_path / "missing.jpg", upload_folder, upload_folder / "abc123",
                  upload_folder / "link.jpg", f"{upload_folder}/*", f"{upload_folder}/abc123/../../secret.jpg",
                  "abc123/photo.jpg", "", None, 7, f"{upload_folder}/\0"):
        with pytest.raises(UploadRefused) as refused:
            uploaded_file(named)
        assert str(refused.value) == REFUSED  # the same words whether the file exists or not


def test_payloads_other_than_an_upload_or_a_data_url_are_refused(upload_folder):
    assert upload_source(None) is None
    assert load_image(upload_source({"path": str(upload_folder / "abc123" / "photo.jpg")})).shape == (150, 200, 3)
    with pytest.raises(UploadRefused):
        upload_source({"url": "http://example.com/x.jpg"})
    with pytest.raises(UploadRefused):
        upload_source("/etc/hostname")


def test_data_urls_are_decoded_within_the_upload_limit():
    import base64
    data = jpeg_bytes()
    assert data_url_bytes("data:image/jpeg;base64," + base64.b64encode(data).decode()) == data
    with pytest.raises(UploadRefused, match="25 MB upload limit"):
        data_url_bytes("data:image/png;base64," + "A" * (UPLOAD_LIMIT * 4 // 3 + 8))
    with pytest.raises(UploadRefused, match="not valid base64"):
        data_url_bytes("data:image/png;base64,***")


def test_the_body_limit_refuses_by_length_and_while_reading():
    """A body over its route's limit gets 413; only a multipart upload to /upload has the
    larger limit (a JSON body there is held to the small one)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from skinlesion.app.gate import BodyLimit

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    routes = [Route("/call", echo, methods=["POST"]), Route("/upload", echo, methods=["POST"])]
    app = BodyLimit(Starlette(routes=routes), limit=100, upload_limit=1000)
    with TestClient(app) as client:
        assert client.post("/call", content=b"x" * 100).text == "100"
        assert client.post("/call", content=b"x" * 101).status_code == 413
        multipart = {"Content-Type": "multipart/form-data; boundary=x"}
        assert client.post("/upload", content=b"x" * 900, headers=multipart).text == "900"
        assert client.post("/upload", content=b"x" * 900, headers={"Content-Type": "application/json"}
                           ).status_code == 413
        streamed = client.post("/call", content=(b"x" * 60 for _ in range(3)))  # chunked: no Content-Length
        assert streamed.status_code == 413 and "larger than" in streamed.text


def test_the_page_keeps_a_small_state_of_a_huge_image(predictor):
    """A 40-megapixel image: the page's state (the image and heat-map the opacity slider
    reblends) stays within 20 MB, the heat-map kept as its 256 levels."""
    from skinlesion.app.handlers import Handlers
    huge = np.zeros((5000, 8000, 3), np.uint8) + np.array([170, 120, 100], np.uint8)
    outputs = Handlers({"ham10000": predictor}).page_analyse(huge, "top", 0.5, "ham10000", "auto", "Grad-CAM")
    image, levels = outputs[3]
    assert levels.dtype == np.uint8 and levels.shape == image.shape[:2]
    assert image.nbytes + levels.nbytes <= 20 * 1024 ** 2


def test_answers_and_maps_wait_in_separate_queues(predictor):
    """/classify and /similar (one forward pass) never wait behind /analyse, /explain, /compare
    or /batch (seconds each): two concurrency groups, one model call at a time in each."""
    from skinlesion.app.handlers import Handlers
    from skinlesion.app.layout import build_demo
    from skinlesion.app.views import TaskView
    example = ROOT / "assets" / "examples" / "ham10000" / "nv.jpg"
    demo = build_demo(Handlers({"ham10000": predictor}), {"ham10000": TaskView.of(predictor, [(str(example), "nv")])})
    groups = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values() if fn.api_name}
    assert {groups[name] for name in ("classify", "similar", "page_classify")} == {("answer", 1)}
    maps = ("analyse", "explain", "compare", "batch", "page_analyse", "page_record", "page_image", "page_example")
    assert {groups[name] for name in maps} == {("explain", 1)}


def test_a_patients_record_is_checked_first_and_never_repeated(bundled_models):
    """A bad record is refused before the image is read, its message without the value, counted
    as a bad input with no decision logged; a good one reaches the answer only as field names."""
    import gradio as gr

    from skinlesion.app.handlers import Handlers
    from skinlesion.ops.record import BAD_INPUT
    handlers = Handlers({"ham10000": bundled_models["ham10000"]})
    analyse = handlers.observed("analyse", handlers.analyse)
    for record in ((130, None, None), ("secret 61", None, None), (None, "secret", None), (None, None, "secret")):
        with pytest.raises(gr.Error, match="Cannot use the patient's record: ") as error:
            analyse("not even an upload", "top", 0.45, "ham10000", "auto", None, *record)
        assert "secret" not in error.value.message and "130" not in error.value.message
    assert handlers.ops.metrics.registry.get_sample_value(
        "skinlesion_requests_total", {"endpoint": "analyse", "status": BAD_INPUT}) == 4
    assert not handlers.ops.window  # no image was read, so no decision
    image = np.asarray(Image.open(ROOT / "assets" / "examples" / "ham10000" / "bcc.jpg"))
    verdict = analyse(image, "top", 0.45, "ham10000", "auto", None, 61.5, "female", "back")[0]
    assert "<div id='patient-record'>With the patient's record: age, sex, site.</div>" in verdict
    assert len(handlers.ops.window) == 1 and not hasattr(handlers.ops.window[0], "patient")  # decisions hold none
