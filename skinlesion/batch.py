"""Many images at once, with one CSV layout for the page's Batch tab, the /batch endpoint and
`python -m skinlesion predict`: `file`, the calibrated probability of every class, the
`decided` class, the `verdict`, the `region` the answer comes from (`left top right bottom`
of the worst tile when the image was tiled, else empty) and `error` (empty when the file was
read), one row per input file in input order.

Inputs are files, folders (walked in name order), globs and zip archives (each member is a
file). Images are decoded one by one — a bad file becomes a row with its error and never
stops the batch — and classified in batches of `BATCH_SIZE` in one forward pass each; with
`tile`, a long image (tiles.py) is classified by its tiles, in one batch of its own. A batch
may carry a budget of decoded pixels (the page and /batch do: `MAX_PIXELS`): the files past
it get a row saying so instead of being decoded.

Text cells that a spreadsheet would run as a formula (starting with = + - @, tab or carriage
return: the OWASP CSV-injection rule) are written with a leading apostrophe.
"""
from __future__ import annotations

import csv
import glob
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .inference import InputError, Predictor, load_image
from .tiles import tiled_answer

BATCH_SIZE = 8                  # on 2 CPU cores B0 ran faster at batches of 4-8 than 16 (README: benchmark)
MAX_FILES = 500                 # the page and /batch: more is refused, with this number
MAX_BYTES = 200 * 1024 ** 2     # ... and so is more than this much (zip members uncompressed)
# ... and files past this many decoded pixels are not decoded: a 6 MB zip of 500 one-bit
# 40-megapixel PNGs would otherwise hold the only model slot for two minutes. 1,000 million
# pixels is 500 images of 2 megapixels, about 6 s of decoding on 2 cores.
MAX_PIXELS = 1_000_000_000
MACOS_METADATA = "__MACOSX/"    # resource forks macOS adds to a zip: not the person's files
HIDDEN = "not analysed: a hidden file (a name starting with '.') or a name leading out of the archive"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class BatchError(ValueError):
    """The batch as a whole cannot be taken (too many files, too large); nothing was analysed."""


@dataclass(frozen=True)
class Item:
    """One input file: a path, or a member of a zip archive."""
    name: str                       # what the CSV's `file` column says
    path: Path | None               # the file, or the zip archive holding it
    member: str | None = None       # the zip member
    size: int = 0                   # bytes (uncompressed for a zip member)
    error: str = ""                 # already known not to be readable

    def read(self) -> np.ndarray:
        """The checked RGB image, or InputError saying why not."""
        if self.error:
            raise InputError(self.error)
        if self.member is None:
            return load_image(self.path)
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as member:
                data = member.read(self.size + 1)  # never more than its header declared
        except Exception:  # bad archive, encrypted member, unsupported compression, CRC error ...
            raise InputError("cannot read it from the zip archive (damaged, encrypted or of an "
                             "unsupported compression)") from None
        return load_image(data)


def _zip_items(path: Path) -> list[Item]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        return [Item(str(path), path, error=f"not a readable zip archive ({error})")]
    return [Item(f"{path.name}/{m.filename}", path, m.filename, m.file_size,
                 error=HIDDEN if any(part.startswith(".") for part in m.filename.split("/")) else "")
            for m in members if not m.filename.startswith(MACOS_METADATA)]


def _file_items(path: Path, name: str) -> list[Item]:
    if path.suffix.lower() == ".zip":
        return _zip_items(path)
    return [Item(name, path, size=path.stat().st_size)]


def expand(inputs: Iterable[str | Path]) -> list[Item]:
    """Files, folders (walked, name order, hidden files left out), globs and zips → items, in
    the order given. A name that matches nothing is an item with its error."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if not any(part.startswith(".") for part in file.relative_to(path).parts):
                    items += _file_items(file, str(file))
        elif path.is_file():
            items += _file_items(path, str(given))
        elif glob.has_magic(str(given)):
            matches = sorted(Path(p) for p in glob.glob(str(given), recursive=True) if Path(p).is_file())
            items += [i for m in matches for i in _file_items(m, str(m))] or [
                Item(str(given), None, error="no file matches this pattern")]
        else:
            items.append(Item(str(given), None, error="file not found"))
    return items


def check_limits(items: Sequence[Item], max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> None:
    total = sum(i.size for i in items)
    if len(items) > max_files:
        raise BatchError(f"{len(items)} files: a batch takes at most {max_files}; split it")
    if total > max_bytes:
        raise BatchError(f"{total / 1024 ** 2:.0f} MB of images: a batch takes at most "
                         f"{max_bytes / 1024 ** 2:.0f} MB; split it")


def columns(predictor: Predictor) -> list[str]:
    return ["file", *predictor.codes, "decided", "verdict", "region", "error"]


def analyse(predictor: Predictor, items: Sequence[Item], batch_size: int = BATCH_SIZE, tile: bool = False,
            progress: Callable[[int, int], None] | None = None, max_pixels: int | None = None) -> Iterator[dict]:
    """One row per item, in order (see the module docstring), yielded as soon as its batch is
    done; `progress(done, total)` after each batch. Once `max_pixels` decoded pixels are spent,
    the remaining items are not decoded: their rows say why."""
    pending: list[tuple[Item, torch.Tensor | dict]] = []  # model inputs wait for a batch; rows are done
    decoded = 0

    def flush() -> Iterator[dict]:
        inputs = [x for _, x in pending if isinstance(x, torch.Tensor)]
        answers = iter(predictor.predict_inputs(torch.cat(inputs)) if inputs else [])
        for item, x in pending:
            yield row(predictor, item.name, next(answers)) if isinstance(x, torch.Tensor) else x
        pending.clear()

    done = 0
    for number, item in enumerate(items, 1):
        if max_pixels is not None and decoded >= max_pixels:
            pending.append((item, row(predictor, item.name, None, error=(
                f"not analysed: this batch reached its limit of {max_pixels / 1e6:,.0f} million decoded "
                f"pixels before file {number}; send the rest in another batch"))))
        else:
            result, pixels = read(predictor, item, tile)
            pending.append((item, result))
            decoded += pixels
        if sum(isinstance(x, torch.Tensor) for _, x in pending) >= batch_size:
            done += len(pending)
            yield from flush()
            if progress:
                progress(done, len(items))
    done += len(pending)
    yield from flush()
    if progress:
        progress(done, len(items))


def read(predictor: Predictor, item: Item, tile: bool) -> tuple[torch.Tensor | dict, int]:
    """The image as the model's input (the decoded image is not kept: 8 decoded 40-megapixel
    images would be 1 GB) to be classified in a batch, or the item's finished row (its error,
    or the answer of its tiles); with the number of pixels decoded."""
    try:
        image = item.read()
    except InputError as error:
        return row(predictor, item.name, None, error=str(error)), 0
    pixels = image.shape[0] * image.shape[1]
    try:
        tiled = tiled_answer(predictor, image) if tile else None
    except InputError as error:  # too long to tile
        return row(predictor, item.name, None, error=str(error)), pixels
    return (row(predictor, item.name, *tiled) if tiled else predictor.to_batch([image])), pixels


def cell(value):
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets an apostrophe."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def row(predictor: Predictor, name: str, probabilities: dict[str, float] | None,
        region: tuple[int, int, int, int] | None = None, error: str = "") -> dict:
    if probabilities is None:
        return {"file": name, **{c: "" for c in predictor.codes}, "decided": "", "verdict": "", "region": "",
                "error": error}
    return {"file": name, **{c: round(p, 6) for c, p in probabilities.items()},
            "decided": predictor.decide(probabilities), "verdict": predictor.triage(probabilities).headline,
            "region": " ".join(map(str, region)) if region else "", "error": ""}


def write_csv(path: str | Path, predictor: Predictor, rows: Iterable[dict]) -> tuple[int, int]:
    """Write rows as they come (flushed, so an interrupted run keeps what it finished);
    returns (rows read fine, rows with an error)."""
    ok = failed = 0
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(predictor))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: cell(v) for k, v in r.items()})
            f.flush()
            ok, failed = (ok, failed + 1) if r["error"] else (ok + 1, failed)
    return ok, failed
