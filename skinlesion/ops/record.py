"""One analysed image as operations see it (`Decision`): what the metrics count, the decision
log stores and the drift monitor reads. It never holds the image; the SHA-256 of the image's
bytes is kept only for the decision log (`Decision.anonymous` drops it)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from ..analysis import Analysis

ANSWERED, UNFAMILIAR, REFUSED, BAD_INPUT, ERROR = "answered", "unfamiliar", "refused", "bad_input", "error"
OUTCOMES = (ANSWERED, UNFAMILIAR, REFUSED, BAD_INPUT, ERROR)
CHUNK = 1 << 20


def sha256(source: str | Path | bytes) -> str:
    """The SHA-256 of a file's bytes (read in chunks) or of bytes."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
    else:
        with Path(source).open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def size_of(source: str | Path | bytes) -> int | None:
    """Bytes of a file or of bytes; None when unreadable."""
    try:
        return len(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).stat().st_size
    except (OSError, TypeError):
        return None


def outcome(analysis: Analysis) -> str:
    """answered, unfamiliar (answered with caution) or refused (not of the task's kind)."""
    return REFUSED if not analysis.known else UNFAMILIAR if not analysis.familiar else ANSWERED


@dataclass(frozen=True)
class Decision:
    task: str                           # the task key
    model: str                          # the SHA-256 of the answering weights (ops.model_hash)
    endpoint: str                       # classify, analyse, explain, compare, similar, batch, page_…, cli
    outcome: str                        # OUTCOMES
    latency_ms: float                   # the model's work on this image (a batch: its share of the batch)
    probabilities: dict[str, float] = field(default_factory=dict)  # calibrated; empty without an answer
    decided: str | None = None          # the decision rule's class (None: refused or no answer)
    prediction_set: tuple[str, ...] = ()
    level: str | None = None            # the verdict's level
    check_score: float | None = None    # the modality check's score and threshold (refuses above it)
    check_threshold: float | None = None
    familiarity_score: float | None = None   # the familiarity check's (cautions above it)
    familiarity_threshold: float | None = None
    tiles: int = 0
    error: str = ""                     # why a bad input was not analysed (the message the client got)
    sha256: str | None = None           # of the image's bytes: the decision log only
    bytes: int | None = None            # the image's size in bytes
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    record: bool = False                # the answer used the patient's record (its own rule: drift.answers_of)

    @classmethod
    def of(cls, task: str, model: str, endpoint: str, latency_ms: float, analysis: Analysis | None = None,
           error: str = "", failed: bool = False, source: str | Path | bytes | None = None,
           keep_hash: bool = False) -> "Decision":
        """The decision of an analysis, or of a bad input (`error`) or a failure (`failed`).
        `source`: the image's file or bytes, for its size (and its hash when `keep_hash`)."""
        size = size_of(source) if source is not None else None
        digest = sha256(source) if keep_hash and source is not None and size is not None else None
        if analysis is None:
            return cls(task, model, endpoint, ERROR if failed else BAD_INPUT, latency_ms, error=error[:500],
                       sha256=digest, bytes=size)
        return cls(task, model, endpoint, outcome(analysis), latency_ms,
                   {c: float(p) for c, p in analysis.probabilities.items()},
                   analysis.decided if analysis.known else None, tuple(analysis.prediction_set),
                   analysis.verdict.level, analysis.check_score, analysis.check_threshold,
                   analysis.familiarity_score, analysis.familiarity_threshold, analysis.tiles,
                   sha256=digest, bytes=size, record=analysis.patient is not None)

    @property
    def anonymous(self) -> "Decision":
        """Without the image's hash: what the in-memory window keeps."""
        return replace(self, sha256=None)
