"""The web server around the page: its private temporary folder, what it lets in, how long it
keeps what it was sent, and its launch.

What a client can make the server read or hold is bounded here, below the handlers:
- request bodies: at most `UPLOAD_LIMIT` (25 MB), or the batch limit for /upload, refused
  with 413 before or while they arrive (Gradio caps only each file sent to /upload);
- file inputs: only files uploaded to this server (`only_uploads`, and the handlers through
  uploads.py);
- files served: exactly those the page shows (`App.allowed_paths`);
- time: uploads and outputs are deleted `KEEP_SECONDS` after they were written (Gradio's
  delete_cache), the folders that held them too, and everything when the app stops.
"""
from __future__ import annotations

import asyncio
import atexit
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
from .uploads import UPLOAD_LIMIT, UploadRefused, uploaded_file

KEEP_SECONDS = int(os.environ.get("SKINLESION_KEEP_SECONDS", 120))  # uploads and outputs; tests shorten it
SWEEP_SECONDS = max(1, KEEP_SECONDS // 2)
UPLOAD_ROUTE_LIMIT = MAX_BYTES + 1024 ** 2  # a whole batch in one /upload request, with its multipart headers


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
        limit = self.upload_limit if scope["path"].rstrip("/").endswith("/upload") else self.limit
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


async def refuse(error: BodyTooLarge, scope, receive, send) -> None:
    await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)


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


@asynccontextmanager
async def sweeping(app):
    """The app's lifespan: empty folders of the temporary folder removed every SWEEP_SECONDS."""
    async def sweep():
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            remove_empty_folders(Path(os.environ["GRADIO_TEMP_DIR"]), SWEEP_SECONDS)

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
                         app_kwargs={"middleware": [Middleware(BodyLimit)], "lifespan": sweeping})
