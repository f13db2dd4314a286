"""Many images at once, with one CSV layout for the page's Batch tab, the /batch endpoint and
`python -m skinlesion predict`: `file`, the calibrated probability of every class, the
`decided` class (empty for an image the modality check refuses), the `verdict`, the `region` the
answer comes from (`left top right bottom` of the worst tile when the image was tiled, else
empty), `error` (empty when the file was read), `known` (1 when the image passed the modality
check, 0 when it is not of the task's kind: its probabilities then mean nothing), `familiar`
(1 when it is also like the training images, 0 when it is not — another device or clinic? — and
its verdict leans to caution; empty for a refused image), `check_score` (the refusing check's
score; known when at most the model's threshold),
`prediction_set` (the 90% prediction set's class codes, joined by single spaces) and `level`
(the verdict's level: refer, uncertain, clear, review, named, or unknown when the modality
check refused the image), `skin_ita` and `skin_tone` (the estimated skin tone's ITA° and group, for
a task of skin: skintone.py), `patient_record` (the fields of the patient's record the answer
used, joined by single spaces — `age sex site`, never their values; empty: the image alone), one
row per input file in input order.

With `python -m skinlesion predict --patients CSV` the answers add the patients' records
(`read_patients`: a row of file, age, sex and site per image, the file named as the results'
`file` column names it); a file without a record, and every file of the page's Batch tab and
/batch, is answered from the image alone.

Inputs are files, folders (walked in name order), globs and zip archives (each member is a
file). Images are decoded one by one into the model's input (`Predictor.prepare`: a long image
into its tiles when tiling is on) — a bad file becomes a row with its error and never stops
the batch — and analysed in batches (`Predictor.analyse_many`; the engine's size, `batch_size_for`). A batch
may carry a budget of decoded pixels (the page and /batch do: `MAX_PIXELS`): the files past
it get a row saying so instead of being decoded.

Text cells that a spreadsheet would run as a formula (starting with = + - @, tab or carriage
return: the OWASP CSV-injection rule) are written with a leading apostrophe.
"""
from __future__ import annotations

import csv
import glob
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from .analysis import Analysis, Prepared
from .images import InputError
from .patient import FIELDS, Patient
from .predictor import Predictor

# Batch sizes per engine, on 2 CPU cores (python -m benchmarks.engines: docs/results.md): PyTorch
# answers about as fast at 8 as at 32 (61 and 64 images/s) with a quarter of the activations in
# memory; ONNX Runtime is faster at 32 (132 against 92 images/s at 8).
BATCH_SIZE, ONNX_BATCH_SIZE = 8, 32
MAX_FILES = 500                 # the page and /batch: more is refused, with this number
MAX_BYTES = 200 * 1024 ** 2     # ... and so is more than this much (zip members uncompressed)
# ... and files past this many decoded pixels are not decoded: a 6 MB zip of 500 one-bit
# 40-megapixel PNGs would otherwise hold the only model slot for two minutes. 1,000 million
# pixels is 500 images of 2 megapixels, about 6 s of decoding on 2 cores.
MAX_PIXELS = 1_000_000_000
MACOS_METADATA = "__MACOSX/"    # resource forks macOS adds to a zip: not the person's files
HIDDEN = "not analysed: a hidden file (a name starting with '.') or a name leading out of the archive"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PATIENT_COLUMNS = ("file", *FIELDS)  # read_patients' CSV


Observer = Callable[["Item", Analysis | None, str, float], None]  # batch_rows' observe


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

    def source(self) -> Path | bytes:
        """The file, or the zip member's bytes; InputError saying why not."""
        if self.error:
            raise InputError(self.error)
        if self.member is None:
            return self.path
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as member:
                data = member.read(self.size + 1)  # never more than its header declared
        except Exception:  # bad archive, encrypted member, unsupported compression, CRC error ...
            raise InputError("cannot read it from the zip archive (damaged, encrypted or of an "
                             "unsupported compression)") from None
        return data


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
    return ["file", *predictor.codes, "decided", "verdict", "region", "error", "known", "familiar", "check_score",
            "prediction_set", "level", "skin_ita", "skin_tone", "patient_record"]


def read_patients(path: str | Path, predictor: Predictor) -> dict[str, Patient | None]:
    """The patients' records of a CSV with the columns file, age, sex and site (a blank cell, or
    "unknown": not given; other columns are left alone): file → its record as `predictor` takes
    it (None: nothing given). BatchError for a file that cannot be read, a missing column, a
    bad value (its line, never the value), a file named twice, or a model without a record model."""
    if predictor.patient_model is None:
        raise BatchError(f"the {predictor.task.title.lower()} model answers from the image alone: it takes no "
                         "patients' records")
    records: dict[str, Patient | None] = {}
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            missing = [c for c in PATIENT_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise BatchError(f"{path}: no column {', '.join(missing)} (the columns: {', '.join(PATIENT_COLUMNS)})")
            for r in reader:
                name = (r["file"] or "").strip()
                if not name:
                    raise BatchError(f"{path} line {reader.line_num}: no file name")
                if name in records:
                    raise BatchError(f"{path} line {reader.line_num}: a second record of the same file")
                try:
                    records[name] = predictor.patient(*(r[field] for field in FIELDS))
                except InputError as error:
                    raise BatchError(f"{path} line {reader.line_num}: {error}") from None
    except OSError as error:
        raise BatchError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error):
        raise BatchError(f"{path} is not a CSV file of UTF-8 text") from None
    return records


def batch_size_for(predictor: Predictor) -> int:
    """The batch size the predictor's engine answers fastest at."""
    return ONNX_BATCH_SIZE if predictor.engine == "onnx" else BATCH_SIZE


def batch_rows(predictor: Predictor, items: Sequence[Item], batch_size: int | None = None, tile: bool | None = None,
               progress: Callable[[int, int], None] | None = None, max_pixels: int | None = None,
               observe: Observer | None = None, patients: Mapping[str, Patient | None] | None = None) -> Iterator[dict]:
    """One row per item, in order (see the module docstring), yielded as soon as its batch is
    done; `progress(done, total)` after each batch. `tile`: None for the task's default.
    `patients`: item name → its patient's record (`read_patients`; an item not there: the image
    alone). Once `max_pixels` decoded pixels are spent, the remaining items are not decoded:
    their rows say why.
    `batch_size`: None for the engine's (`batch_size_for`).
    `observe(item, analysis or None, error, milliseconds)` hears of each item (operations: ops/);
    an analysed image's time is its decoding and its share of the batch's pass."""
    pending: list[tuple[Item, Prepared | dict, float]] = []  # model inputs wait for a batch; rows are done
    decoded = done = 0
    batch_size = batch_size or batch_size_for(predictor)

    def flush() -> Iterator[dict]:
        start = time.perf_counter()
        ready = [(item, p) for item, p, _ in pending if isinstance(p, Prepared)]
        answers = predictor.analyse_many([p for _, p in ready], [(patients or {}).get(item.name) for item, _ in ready])
        share = (time.perf_counter() - start) / max(len(answers), 1)
        answers = iter(answers)
        for item, p, seconds in pending:
            analysis = next(answers) if isinstance(p, Prepared) else None
            if observe:
                observe(item, analysis, "" if analysis else p["error"], 1000 * (seconds + (share if analysis else 0)))
            yield row(predictor, item.name, analysis) if analysis else p
        pending.clear()

    for number, item in enumerate(items, 1):
        start = time.perf_counter()
        if max_pixels is not None and decoded >= max_pixels:
            pending.append((item, row(predictor, item.name, error=(
                f"not analysed: this batch reached its limit of {max_pixels / 1e6:,.0f} million decoded "
                f"pixels before file {number}; send the rest in another batch")), 0.0))
        else:
            try:
                prepared = predictor.prepare(item.source(), tile)
                decoded += prepared.pixels
                pending.append((item, prepared, time.perf_counter() - start))
            except InputError as error:
                pending.append((item, row(predictor, item.name, error=str(error)), time.perf_counter() - start))
        if sum(isinstance(p, Prepared) for _, p, _ in pending) >= batch_size:
            done += len(pending)
            yield from flush()
            if progress:
                progress(done, len(items))
    done += len(pending)
    yield from flush()
    if progress:
        progress(done, len(items))


def cell(value):
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets an apostrophe."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def row(predictor: Predictor, name: str, analysis: Analysis | None = None, error: str = "") -> dict:
    if analysis is None:
        return {"file": name, **{c: "" for c in predictor.codes}, "decided": "", "verdict": "", "region": "",
                "error": error, "known": "", "familiar": "", "check_score": "", "prediction_set": "", "level": "",
                "skin_ita": "", "skin_tone": "", "patient_record": ""}
    return {"file": name, **{c: round(p, 6) for c, p in analysis.probabilities.items()},
            "decided": analysis.decided if analysis.known else "", "verdict": analysis.verdict.headline,
            "region": " ".join(map(str, analysis.region)) if analysis.region else "", "error": "",
            "known": int(analysis.known), "familiar": int(analysis.familiar) if analysis.known else "",
            "check_score": "" if analysis.check_score is None else round(analysis.check_score, 4),
            "prediction_set": " ".join(analysis.prediction_set), "level": analysis.verdict.level,
            "skin_ita": "" if analysis.skin_ita is None else round(analysis.skin_ita, 1),
            "skin_tone": analysis.skin_tone or "",
            "patient_record": " ".join(analysis.patient.fields) if analysis.patient else ""}


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
