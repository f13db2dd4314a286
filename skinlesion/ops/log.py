"""The decision log: one row per analysed image in a database (SQLAlchemy: an SQLite file, a
PostgreSQL server, any URL), off unless asked for (SKINLESION_LOG_DB=URL, `--log-db URL`).

A row holds what `Decision` holds (record.py): time, task, model hash, endpoint, the SHA-256
and size of the image's bytes (never the image), the decided class, every probability, the
prediction set, the checks' scores and outcome, the latency, the tile count, whether the
answer used the patient's record (not the record) and, for a bad input, why. Nothing else: no
file name, no address, no session.

Writes never block or fail an answer: `put` hands the row to a bounded queue and returns; one
writer thread inserts what has queued, in one transaction. When the database is down the
rows stay queued and the writer retries with a growing pause; the failure is logged once and
counted (`on_status("failed", n)`); rows past the queue's capacity are dropped and counted
("dropped"). Retention: rows older than `days` are deleted at start and daily (`purge`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    inspect,
    select,
    text,
)
from sqlalchemy.schema import CreateColumn

from .record import Decision

CAPACITY = 10_000        # rows waiting for the database; more are dropped (counted)
BATCH = 256              # rows per transaction
RETRY_SECONDS = (1, 2, 5, 10, 30)  # pauses after consecutive failures, the last repeated
PURGE_EVERY = 24 * 3600  # seconds between retention purges
log = logging.getLogger(__name__)

metadata = MetaData()
decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False, index=True),
    Column("task", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("sha256", String(64)),
    Column("bytes", BigInteger),
    Column("decided", String(32)),
    Column("probabilities", JSON),
    Column("prediction_set", String(255)),
    Column("level", String(16)),
    Column("check_score", Float),
    Column("check_threshold", Float),
    Column("familiarity_score", Float),
    Column("familiarity_threshold", Float),
    Column("latency_ms", Float, nullable=False),
    Column("tiles", Integer, nullable=False),
    Column("error", String(500), nullable=False),
    Column("record", Boolean),  # the answer used the patient's record (never the record itself); added later
)


def create_or_upgrade(engine) -> None:
    """Create the table, or add the columns a log made by an earlier version lacks (each nullable,
    so the old rows read as before). Written here rather than with Alembic: the only change so far
    is added columns, one statement each."""
    metadata.create_all(engine)
    present = {c["name"] for c in inspect(engine).get_columns(decisions.name)}
    missing = [c for c in decisions.columns if c.name not in present]
    if not missing:
        return
    with engine.begin() as connection:
        for column in missing:
            connection.execute(text(f"ALTER TABLE {decisions.name} ADD COLUMN "
                                    f"{CreateColumn(column).compile(dialect=engine.dialect)}"))


def engine_for(url: str):
    """An engine that checks its connections before use (a restarted server is found again)."""
    return create_engine(url, pool_pre_ping=True)


def as_row(d: Decision) -> dict:
    return {"time": d.time, "task": d.task, "model": d.model, "endpoint": d.endpoint, "outcome": d.outcome,
            "sha256": d.sha256, "bytes": d.bytes, "decided": d.decided, "probabilities": d.probabilities or None,
            "prediction_set": " ".join(d.prediction_set), "level": d.level, "check_score": d.check_score,
            "check_threshold": d.check_threshold, "familiarity_score": d.familiarity_score,
            "familiarity_threshold": d.familiarity_threshold, "latency_ms": d.latency_ms, "tiles": d.tiles,
            "error": d.error, "record": d.record}


def as_decision(row) -> Decision:
    when = row.time if row.time.tzinfo else row.time.replace(tzinfo=timezone.utc)  # SQLite keeps no zone
    return Decision(row.task, row.model, row.endpoint, row.outcome, row.latency_ms, row.probabilities or {},
                    row.decided, tuple(row.prediction_set.split()) if row.prediction_set else (), row.level,
                    row.check_score, row.check_threshold, row.familiarity_score, row.familiarity_threshold,
                    row.tiles, row.error, row.sha256, row.bytes, when, bool(row.record))


def read(url: str, since: datetime | None = None, task: str | None = None) -> list[Decision]:
    """The log's decisions (of `task`, from `since` on), oldest first."""
    engine = engine_for(url)
    query = select(decisions).order_by(decisions.c.time, decisions.c.id)
    if since is not None:
        query = query.where(decisions.c.time >= since)
    if task is not None:
        query = query.where(decisions.c.task == task)
    try:
        with engine.connect() as connection:
            return [as_decision(row) for row in connection.execute(query)]
    finally:
        engine.dispose()


def delete_older(connection, days: float) -> int:
    """Delete the rows older than `days`; how many went."""
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    return connection.execute(delete(decisions).where(decisions.c.time < cutoff)).rowcount


def purge(url: str, days: float) -> int:
    """`delete_older` on the log at `url` (`python -m skinlesion purge`)."""
    engine = engine_for(url)
    try:
        create_or_upgrade(engine)
        with engine.begin() as connection:
            return delete_older(connection, days)
    finally:
        engine.dispose()


class DecisionLog:
    """The writer (module docstring). `on_status(status, n)` hears what became of rows:
    written, failed (still queued, retried), dropped."""

    def __init__(self, url: str, days: float | None = None, capacity: int = CAPACITY,
                 on_status: Callable[[str, int], None] | None = None):
        self.url, self.days = url, days
        self.engine = engine_for(url)
        self.on_status = on_status or (lambda status, n: None)
        self.queue: queue.Queue[Decision] = queue.Queue(capacity)
        self.pending: list[dict] = []     # taken from the queue, not yet written
        self.ready = False                # the table exists
        self.failing = False              # logged once until a write succeeds again
        self.purged = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self.thread.start()

    def put(self, decision: Decision) -> bool:
        """Queue a row; False (and counted as dropped) when the queue is full. Never blocks."""
        try:
            self.queue.put_nowait(decision)
            return True
        except queue.Full:
            self.on_status("dropped", 1)
            return False

    def flush(self, timeout: float = 30) -> bool:
        """Wait until every queued row is written (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.queue.unfinished_tasks

    def close(self, timeout: float = 10) -> None:
        self.flush(timeout)
        self.stopping.set()
        self.thread.join(timeout)
        self.engine.dispose()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            if not self.pending:
                try:
                    self.pending.append(as_row(self.queue.get(timeout=0.5)))
                except queue.Empty:
                    continue
            while len(self.pending) < BATCH:
                try:
                    self.pending.append(as_row(self.queue.get_nowait()))
                except queue.Empty:
                    break
            try:
                self._write()
            except Exception as error:  # a dead server, a full disk, a lost connection: retried
                self.on_status("failed", len(self.pending))
                if not self.failing:
                    log.error("The decision log cannot write to its database (%s); answers go on, rows wait "
                              "(up to %d) and are retried", type(error).__name__, self.queue.maxsize)
                self.failing = True
                self.stopping.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if self.failing:
                log.warning("The decision log writes again")
            self.failing, failures = False, 0

    def _write(self) -> None:
        if not self.ready:
            create_or_upgrade(self.engine)
            self.ready = True
        if self.days and time.monotonic() - self.purged > PURGE_EVERY:
            self.purged = time.monotonic()
            with self.engine.begin() as connection:
                delete_older(connection, self.days)
        with self.engine.begin() as connection:
            connection.execute(decisions.insert(), self.pending)
        written = len(self.pending)
        self.pending = []
        for _ in range(written):
            self.queue.task_done()
        self.on_status("written", written)
