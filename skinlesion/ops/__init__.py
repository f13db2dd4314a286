"""Operations: what whoever runs the app can see of it, behind one entry (`Operations`).

    record.py   one analysed image as operations see it (`Decision`): never the image
    metrics.py  /metrics for Prometheus and /healthz (prometheus_client)
    log.py      the decision log, off unless asked for: one row per image in a database (SQLAlchemy)
    drift.py    drift a person can see: the decisions against the model's own reference (Monitor tab,
                `python -m skinlesion monitor`)

Every way in reports each analysed image once: the page's and the API's handlers
(app/handlers.py, inside `Operations.request`), the batch path and the command line
(batch.batch_rows' `observe`).
"""
from __future__ import annotations

import os
import time
from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Iterator

from ..analysis import Analysis
from ..models.network import WEIGHTS_FILE
from .log import DecisionLog, read
from .metrics import Metrics
from .record import Decision, sha256

LOG_ENV, LOG_DAYS_ENV = "SKINLESION_LOG_DB", "SKINLESION_LOG_DAYS"  # the decision log's URL and retention
WINDOW = 5000  # recent decisions kept in memory for the Monitor tab when the log is off (no image, no hash)
ENDPOINT: ContextVar[str | None] = ContextVar("endpoint", default=None)  # the request being handled
REPORTS: ContextVar[bool] = ContextVar("reports", default=True)  # False: its images were reported already


def model_hash(predictor) -> str:
    """The SHA-256 of the weights that answer: the folder's own file, and its members' in order."""
    folder = getattr(predictor, "folder", None)
    files = [] if folder is None else [folder / WEIGHTS_FILE, *(
        folder / m["folder"] / WEIGHTS_FILE for m in (predictor.spec.config.get("ensemble") or {}).get("members", []))]
    files = [f for f in files if Path(f).is_file()]
    if not files:
        return "unknown"
    return sha256(files[0]) if len(files) == 1 else sha256("".join(sha256(f) for f in files).encode())


class Operations:
    """The metrics, the decision log (when `log_url`) and the recent window, for `predictors`
    (task key → Predictor)."""

    def __init__(self, predictors: dict, log_url: str | None = None, log_days: float | None = None,
                 window: int = WINDOW):
        self.metrics = Metrics()
        self.models = {task: model_hash(p) for task, p in predictors.items()}
        for task, p in predictors.items():
            self.metrics.served(task, str(p.spec.config.get("architecture", "")), self.models[task])
        self.log_url = log_url
        self.log = DecisionLog(log_url, log_days, on_status=lambda status, n: self.metrics.log_rows.labels(
            status).inc(n)) if log_url else None
        self.window: deque[Decision] = deque(maxlen=window)

    @classmethod
    def from_env(cls, predictors: dict) -> "Operations":
        """SKINLESION_LOG_DB (a database URL; unset: no log) and SKINLESION_LOG_DAYS (retention)."""
        days = os.environ.get(LOG_DAYS_ENV)
        return cls(predictors, os.environ.get(LOG_ENV) or None, float(days) if days else None)

    @contextmanager
    def request(self, endpoint: str, bad_input: tuple[type[BaseException], ...] = (),
                images: bool = True) -> Iterator[None]:
        """Around one request's handler: its time and status (ok, bad_input for the exceptions
        `bad_input` names, error for any other), and its endpoint for the images it reports;
        `images` False: the images it analyses were reported by an earlier request (the page's
        own image, analysed again for its heat-map), so they are not counted or logged twice."""
        token, start, status = ENDPOINT.set(endpoint), time.perf_counter(), "ok"
        try:
            with self.reporting(images):
                yield
        except bad_input:
            status = "bad_input"
            raise
        except Exception:
            status = "error"
            raise
        finally:
            ENDPOINT.reset(token)
            self.metrics.request(endpoint, status, time.perf_counter() - start)

    @contextmanager
    def reporting(self, images: bool) -> Iterator[None]:
        """Whether the images analysed inside are reported; False: an earlier request reported
        them already (the page's own image sent again), so they are not counted or logged twice."""
        reports = REPORTS.set(images)
        try:
            yield
        finally:
            REPORTS.reset(reports)

    def image(self, task: str, latency_ms: float, analysis: Analysis | None = None, error: str = "",
              failed: bool = False, source=None, endpoint: str | None = None) -> Decision:
        """Report one analysed image (or one that could not be: `error`, `failed`); `source`, its
        file or bytes, gives its size, and its hash when the log is on."""
        decision = Decision.of(task, self.models.get(task, "unknown"), endpoint or ENDPOINT.get() or "unknown",
                               latency_ms, analysis, error, failed, source, keep_hash=self.log is not None)
        if not REPORTS.get():
            return decision
        self.metrics.image(decision)
        self.window.append(decision.anonymous)
        if self.log is not None:
            self.log.put(decision)
        return decision

    def reporter(self, predictor, endpoint: str | None = None):
        """batch_rows' `observe` for `predictor`'s batch: each file reported as `image` does."""
        task = predictor.task.key

        def observe(item, analysis: Analysis | None, error: str, latency_ms: float) -> None:
            source = item.path if item.member is None else None
            if item.member is not None and self.log is not None and not item.error:
                try:
                    source = item.source()  # a zip member's bytes, for its hash
                except Exception:
                    source = None
            self.image(task, latency_ms, analysis, error, source=source, endpoint=endpoint)
        return observe

    def recent(self, task: str, since: datetime | None = None) -> list[Decision]:
        """The decisions of `task` (from `since`): from the log when it is on, else the window."""
        if self.log is not None:
            self.log.flush(timeout=2)
            return read(self.log_url, since, task)
        return [d for d in list(self.window) if d.task == task and (since is None or d.time >= since)]

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
