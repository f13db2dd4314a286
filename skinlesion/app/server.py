"""The web server around the page: its private temporary folder, what it lets in, how long it
keeps what it was sent, and its launch.

What a client can make the server read or hold is bounded here and in gate.py, below the
handlers:
- requests: bodies, routes, session hashes, Range headers and each client's share of the
  queue (gate.py);
- file inputs: only files uploaded to this server (`only_uploads`, and the handlers through
  uploads.py);
- files served: exactly those the page shows (`App.allowed_paths`);
- time: uploads and outputs are deleted `KEEP_SECONDS` after they were written, partial
  uploads too, and the folders that held them (`delete_expired`, every `SWEEP_SECONDS`), and
  everything when the app stops; a session is forgotten, its page state with it, soon after
  its page closed or its API call ended (`forget_sessions`).
"""
from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from ..ops import Operations
from ..ops.metrics import Endpoints
from .gate import Admission, BodyLimit, Gate, Heartbeats
from .uploads import HELD, UPLOAD_LIMIT, UploadRefused, uploaded_file

KEEP_SECONDS = int(os.environ.get("SKINLESION_KEEP_SECONDS", 120))  # uploads and outputs; tests shorten it
SWEEP_SECONDS = max(1, KEEP_SECONDS // 4)  # so a file goes 1 to 1.25 keep times after it was written
SESSION_SWEEP_SECONDS = 2    # how often sessions are looked at (forget_sessions)
SESSION_GRACE_SECONDS = min(30, KEEP_SECONDS)  # a session without an open page: kept this long after its last request
log = logging.getLogger(__name__)


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
    """gr.Blocks whose requests with too few values get a short error (Gradio's own message
    repeats every value sent — a whole image's base64 — in the reply and in the server's log),
    and whose queue admits requests through gate.Admission. A request may leave out the values
    of the `optional` components that end an endpoint's inputs (the patient's record, which came
    after the endpoints' first clients): they arrive as None, so a client of the shorter
    endpoint goes on getting its answer."""
    optional: frozenset[int] = frozenset()  # the ids of the components a request may leave out at the end

    def queue(self, *args, **kwargs):
        super().queue(*args, **kwargs)  # a new queue each call (Blocks' own exit calls it too)
        Admission.install(self)
        return self

    def validate_inputs(self, block_fn, inputs: list) -> None:
        required = len(block_fn.inputs)
        while required and block_fn.inputs[required - 1]._id in self.optional:
            required -= 1
        if len(inputs) < required:
            raise gr.Error(f"This endpoint takes {required} values; the request sent {len(inputs)}.")
        inputs.extend(None for _ in block_fn.inputs[len(inputs):])  # Blocks reads the same list next


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


def forget_sessions(holder, live: set[str], grace: float = SESSION_GRACE_SECONDS) -> None:
    """Forget every session (its page state and its copy of the page's settings, about 100 kB)
    unused for `grace` seconds and without a page open on it (`live`: its heartbeat stream).

    Gradio keeps up to 10,000 sessions, one for each API call, and the state of a closed page
    for an hour: written here so that a session ends with its page, or soon after its call."""
    now = datetime.datetime.now()
    for session, used in list(holder.time_last_used.items()):
        if session not in live and (now - used).total_seconds() > grace:
            holder.delete_state(session)  # each State's delete_callback
            with holder.lock:
                holder.session_data.pop(session, None)
                holder.time_last_used.pop(session, None)


async def every(seconds: float, what: str, work) -> None:
    """`work()` every `seconds`, for ever: one that fails is logged once and the next one runs."""
    logged = False
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            if not logged:
                log.exception("The %s failed; it runs again every %g s", what, seconds)
            logged = True


def sweeping(heartbeats: Heartbeats):
    """The app's lifespan: `delete_expired` every SWEEP_SECONDS in a worker thread, and
    `forget_sessions` every SESSION_SWEEP_SECONDS on the event loop (where Gradio changes
    its sessions). Neither can die."""
    @asynccontextmanager
    async def lifespan(app):
        root = Path(os.environ["GRADIO_TEMP_DIR"])

        async def files():
            await asyncio.to_thread(delete_expired, app.get_blocks(), root, KEEP_SECONDS)

        async def sessions():
            forget_sessions(app.state_holder, heartbeats.live())

        tasks = [asyncio.create_task(every(SWEEP_SECONDS, "temporary-file cleanup", files)),
                 asyncio.create_task(every(SESSION_SWEEP_SECONDS, "session cleanup", sessions))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
    return lifespan


@dataclass
class App:
    demo: gr.Blocks
    allowed_paths: list[str]  # exactly the files the page shows: the Model tab's plots, example images
    ops: Operations           # /metrics, /healthz, the decision log
    heartbeats: Heartbeats = field(default_factory=Heartbeats)  # the pages open now

    def launch(self) -> None:
        try:
            self.demo.launch(show_error=True, max_file_size=UPLOAD_LIMIT, footer_links=["api"],
                             allowed_paths=self.allowed_paths,
                             app_kwargs={"middleware": [Middleware(Endpoints, metrics=self.ops.metrics,
                                                                   models=self.ops.models),
                                                        Middleware(Gate, heartbeats=self.heartbeats),
                                                        Middleware(BodyLimit)],
                                         "lifespan": sweeping(self.heartbeats)})
        finally:
            self.ops.close()  # the log's queued rows written
