"""What the server takes as an image a person sent: a regular file inside the server's upload
folder (where Gradio writes what is uploaded to it), or the bytes of a data URL within the
upload limit.

Anything else a client names — another file on the server, the upload folder itself or a
folder in it, a link out of it, a URL for the server to fetch — is refused with one message
that says nothing about the server's files: the same for a file that exists and one that
does not. The command line is not behind this check: there the files are the local user's own.
"""
from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
import urllib.parse
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from gradio.utils import get_upload_folder

from ..batch import Item, expand

UPLOAD_LIMIT = 25 * 1024 ** 2   # bytes: one uploaded file, one data URL, one request body
REFUSED = "only files uploaded to this app are accepted"


class UploadRefused(ValueError):
    """A client named something that is not an upload; the message is safe to show."""


def uploaded_file(path: object) -> Path:
    """The upload at `path`, resolved; UploadRefused unless it is a regular file (not a link)
    inside the upload folder."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise UploadRefused(REFUSED)
    given = Path(path)
    folder = Path(get_upload_folder()).resolve()
    try:
        resolved = given.resolve()
        ok = given.is_absolute() and not given.is_symlink() and folder in resolved.parents and resolved.is_file()
    except (OSError, ValueError):  # a name the file system cannot take (NUL, too long)
        ok = False
    if not ok:
        raise UploadRefused(REFUSED)
    return resolved


def data_url_bytes(url: str) -> bytes:
    """The bytes of a `data:` URL (base64 or percent-encoded); UploadRefused when it is over
    the upload limit or not a valid data URL."""
    header, comma, body = url.partition(",")
    if not header.startswith("data:") or not comma:
        raise UploadRefused("the image's data URL is malformed")
    if len(body) > UPLOAD_LIMIT * 4 // 3 + 4:  # base64 is 4 characters per 3 bytes
        raise UploadRefused(f"the image is larger than the {UPLOAD_LIMIT // 1024 ** 2} MB upload limit")
    try:
        data = (base64.b64decode(body, validate=True) if header.endswith(";base64")
                else urllib.parse.unquote_to_bytes(body))
    except (binascii.Error, ValueError):
        raise UploadRefused("the image's data URL is not valid base64") from None
    if len(data) > UPLOAD_LIMIT:
        raise UploadRefused(f"the image is larger than the {UPLOAD_LIMIT // 1024 ** 2} MB upload limit")
    return data


def upload_source(payload: object) -> Path | bytes | None:
    """An image input as a client sends it to an endpoint (Gradio's FileData: a `path` from
    /upload, or a data `url`) → the uploaded file or the data URL's bytes; None when empty."""
    if not payload:
        return None
    if not isinstance(payload, dict):
        raise UploadRefused(REFUSED)
    if payload.get("path"):
        return uploaded_file(payload["path"])
    url = payload.get("url")
    if isinstance(url, str) and url.startswith("data:"):
        return data_url_bytes(url)
    raise UploadRefused(REFUSED)


def uploaded_files(files: object) -> list[tuple[str, Path]]:
    """The uploads of the Batch tab (or /batch): (the person's file name, the uploaded file),
    regular files only — never a folder or a pattern to expand, as the command line does on the
    local user's own disk."""
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
        raise UploadRefused("add images or a .zip archive of images first")
    uploads = []
    for payload in files:
        path = uploaded_file(payload.get("path"))
        uploads.append((str(payload.get("orig_name") or path.name), path))
    return uploads


HELD = "held-"  # the prefix of a running batch's folder of links (server.delete_expired skips them)


@contextmanager
def held(uploads: list[tuple[str, Path]]) -> Iterator[list[Item]]:
    """The uploads as batch items (a zip's members each an item), read through hard links that
    last as long as the batch: the cleanup deletes an upload KEEP_SECONDS after it arrived, and
    a long batch may still be reading it then, so it leaves HELD folders alone. The links go
    when the batch ends (and with the whole temporary folder when the app stops)."""
    folder = Path(tempfile.mkdtemp(prefix=HELD, dir=get_upload_folder()))
    try:
        items = []
        for number, (name, path) in enumerate(uploads):
            link = folder / f"{number}{path.suffix}"
            os.link(path, link)
            items += [replace(i, name=name if i.member is None else f"{name}/{i.member}") for i in expand([link])]
        yield items
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def batch_csv_path() -> Path:
    """A fresh results.csv in the upload folder, where Gradio's cleanup deletes it with the uploads."""
    return Path(tempfile.mkdtemp(prefix="batch-", dir=get_upload_folder())) / "skinlesion-results.csv"
