"""The one way files of a model folder (and of a run folder) are written: whole or not at all.

Every writer — the weights and config.json (model.py), config.json updates (spec.py), the
metrics, card and plots (train/evaluate.py, train/report.py), the float16 export and the
training checkpoint — goes through `write_atomically`: the file is made beside its target under
a hidden temporary name, then renamed over it. A crash or a full disk mid-write leaves the
previous file intact, and a reader (the app, a resumed run) never sees half a file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` makes the file at `tmp`, a hidden name in the same folder (so the rename
    is atomic; writers that infer a format from the name must be told it); then `tmp`
    replaces `path`. On any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model folder is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Text (the card, reports, config.yaml), replaced whole."""
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, value: Any) -> None:
    """Indented JSON with a final newline: the form every JSON file of the project has."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def copy_file(source: str | Path, path: str | Path) -> None:
    """A copy of `source` (metrics and plots into the model folder, the export), replaced whole."""
    write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))
