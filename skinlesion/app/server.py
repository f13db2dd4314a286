"""The web server around the page: its private temporary folder, what it lets in, how long it
keeps what it was sent, and its launch.

What a client can make the server read or hold is bounded here, below the handlers:
- request bodies: at most `UPLOAD_LIMIT` (25 MB), or the batch limit for /upload, refused
  with 413 before or while they arrive (Gradio caps only each file sent to /upload);
- file inputs: only files uploaded to this server (`only_uploads`, and the handlers through
  uploads.py);
- files served: exactly those the page shows (`App.allowed_paths`);
- time: uploads and outputs are deleted `KEEP_SECONDS` after they were written, partial
  uploads too, and the folders that held them (`delete_expired`, every `SWEEP_SECONDS`), and
  everything when the app stops;
- routes the app does not use are not served (`Disabled`: deep links, the monitoring dashboard).
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from ..batch import MAX_BYTES
from .uploads import HELD, UPLOAD_LIMIT, UploadRefused, uploaded_file

KEEP_SECONDS = int(os.environ.get("SKINLESION_KEEP_SECONDS", 120))  # uploads and outputs; tests shorten it
SWEEP_SECONDS = max(1, KEEP_SECONDS // 2)
UPLOAD_ROUTE_LIMIT = MAX_BYTES + 1024 ** 2  # a whole batch in one /upload request, with its multipart headers
UPLOAD_ROUTES = ("/gradio_api/upload", "/upload")  # the file upload itself; every other route gets UPLOAD_LIMIT
DISABLED_ROUTES = ("/gradio_api/deep_link", "/monitoring")  # and what lies under them: unused by the app
log = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request is larger than {limit // 1024 ** 2} MB: send a smaller image.")


class BodyLimit:
    """ASGI middleware: a request body over its route's limit is refused with 413, from its
    Content-Length before anything is read, or as soon as the bytes read pass the limit."""

    def __init__(self, app, limit: int = UPLOAD_LIMIT, upload_limit: int = UPLOAD_ROUTE_LIMIT):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"].rstrip("/") in UPLOAD_ROUTES else self.limit
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            return await refuse(BodyTooLarge(limit), scope, receive, send)
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as error:
            if not started:
                await refuse(error, scope, receive, send)


async def refuse(error: HTTPException, scope, receive, send) -> None:
    await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)


class Disabled:
    """ASGI middleware: the routes the app does not use answer 404 before Gradio sees them — deep
    links (each call writes the session's state to a file nothing cleans) and the monitoring
    dashboard (open to anyone; its key is written to the log)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope["type"] == "http" and any(path == r or path.startswith(r + "/") for r in DISABLED_ROUTES):
            return await refuse(HTTPException(404, "Not Found"), scope, receive, send)
        return await self.app(scope, receive, send)


def only_uploads(url_or_file_path) -> None:
    """The check of UploadImage and UploadFiles: Gradio checks that a file named in a request
    lies in its upload folder, but the folder itself passes (and, recorded as a temporary file,
    later stops Gradio's cleanup for good), and a URL is fetched by the server; both are
    refused here, before Gradio records or fetches anything."""
    if url_or_file_path is not None:
        try:
            uploaded_file(str(url_or_file_path))
        except UploadRefused as error:
            raise gr.Error(f"Cannot analyse this: {error}.") from None


class Page(gr.Blocks):
    """gr.Blocks whose requests with too few values get a short error. Gradio's own message
    repeats every value sent — a whole image's base64 — in the reply and in the server's log."""

    def validate_inputs(self, block_fn, inputs: list) -> None:
        if len(inputs) < len(block_fn.inputs):
            raise gr.Error(f"This endpoint takes {len(block_fn.inputs)} values; the request sent {len(inputs)}.")


class UploadImage(gr.Image):
    """gr.Image whose requests may name only uploaded files."""
    is_template = True  # drawn by gr.Image's own front-end component

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        only_uploads(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class UploadFiles(gr.File):
    """gr.File whose requests may name only uploaded files."""
    is_template = True

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        only_uploads(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


def private_temp_dir() -> str:
    """Gradio keeps uploads and outputs as files to serve them: put them in a folder of this
    process (inside GRADIO_TEMP_DIR when set, created if missing) and remove it at exit,
    SIGTERM included."""
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix="skinlesion-", dir=parent)
    os.environ["GRADIO_TEMP_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return path


def remove_empty_folders(root: Path, older_than: float) -> None:
    """Folders under `root` left empty by the cleanup (Gradio's deletes files, not the hash
    folders holding them), once untouched for `older_than` seconds (a folder Gradio has just
    made is about to receive its file)."""
    now = time.time()
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):  # deepest first
        path = Path(folder)
        try:
            if path != root and not any(path.iterdir()) and now - path.stat().st_mtime > older_than:
                path.rmdir()
        except OSError:  # written to or removed meanwhile
            continue


def delete_expired(blocks: gr.Blocks, root: Path, age: float) -> None:
    """Every file under `root` untouched for `age` seconds — uploads, partial uploads, outputs —
    except the files the page itself keeps (its examples and plots: Gradio's keep_in_cache) and
    a running batch's (uploads.held), then the folders left empty.

    Written here, not Gradio's delete_cache: that one walks the live set of created files while
    uploads add to it, and the first "Set changed size during iteration" ends it for good
    (gradio 6.31, route_utils.delete_files_created_by_app); nor does it see a partial upload."""
    keep = {os.path.realpath(p) for block in list(blocks.blocks.values())
            for p in list(getattr(block, "keep_in_cache", ()))}
    now, gone = time.time(), set()
    for folder, folders, names in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(HELD)]  # a running batch's uploads (uploads.held)
        for name in names:
            path = os.path.join(folder, name)
            try:
                status = os.lstat(path)
                if now - max(status.st_mtime, status.st_ctime) > age and os.path.realpath(path) not in keep:
                    os.remove(path)
                    gone.add(path)
            except OSError:  # removed or replaced meanwhile
                continue
    for created in list(blocks.temp_file_sets):
        created.difference_update(gone)  # one C call: safe beside a thread adding to the set
    remove_empty_folders(root, age)


@asynccontextmanager
async def sweeping(app):
    """The app's lifespan: `delete_expired` every SWEEP_SECONDS, in a worker thread. A sweep
    that fails is logged once and the next one runs: the cleanup cannot die."""
    async def sweep():
        root, logged = Path(os.environ["GRADIO_TEMP_DIR"]), False
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await asyncio.to_thread(delete_expired, app.get_blocks(), root, KEEP_SECONDS)
            except Exception:
                if not logged:
                    log.exception("The temporary-file cleanup failed; it runs again every %d s", SWEEP_SECONDS)
                logged = True

    task = asyncio.create_task(sweep())
    try:
        yield
    finally:
        task.cancel()


@dataclass
class App:
    demo: gr.Blocks
    allowed_paths: list[str]  # exactly the files the page shows: the Model tab's plots, example images

    def launch(self) -> None:
        self.demo.launch(show_error=True, max_file_size=UPLOAD_LIMIT, footer_links=["api"],
                         allowed_paths=self.allowed_paths,
                         app_kwargs={"middleware": [Middleware(Disabled), Middleware(BodyLimit)],
                                     "lifespan": sweeping})
