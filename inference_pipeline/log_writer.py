"""The log writer (``python -m inference_pipeline log-writer``): reads the prediction log's sink
and writes the ``predictions`` table, in its own process, so the online service only serves.

Commits are bounded: one commit once ``FTI_PREDICTION_LOG_COMMIT_ROWS`` rows wait or the oldest
waiting record is ``FTI_PREDICTION_LOG_COMMIT_S`` old (10 s by default: at most 360 commits an
hour however busy the service). Records are acknowledged to the sink only after their commit,
so a writer killed at any point loses nothing: the records it had not acknowledged are read
again after the restart, flagged ``replayed``, and a commit holding any is an upsert on the
rows' keys (flight, model version, request id, scored at: one request's id is fresh, so a key
is one prediction) instead of an append, so they are in the table once. Only such commits pay
the upsert's read of the recent files; the others are plain appends.

Compaction: after every ``FTI_PREDICTION_LOG_COMPACT_COMMITS`` commits (60: every 10 minutes
at the default commit interval) the table's small files are rewritten into large ones (Delta
``OPTIMIZE``, one more commit with the same rows), then files unreferenced for
``FTI_PREDICTION_LOG_VACUUM_HOURS`` (168, delta-rs's minimum retention, so time travel over a
week keeps working) are vacuumed. The local Delta store only: Hopsworks compacts its own tables.

Metrics (`inference_pipeline.log_writer_metrics`): records read, rows and commits by kind,
commit and compaction times, failures, what waits in memory and in the sink; served on
``FTI_PREDICTION_LOG_METRICS_PORT`` by the ``log-writer`` command.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import polars as pl
from deltalake.exceptions import DeltaError

from inference_pipeline.log_writer_metrics import APPEND, UPSERT, WriterMetrics
from inference_pipeline.prediction_sink.protocol import LogRecord, PredictionSource
from inference_pipeline.prediction_sink.records import RecordError, decode_batches, prediction_rows
from inference_pipeline.settings import InferenceSettings
from shared.errors import FTIError
from shared.feature_store import FeatureStore
from shared.feature_store.local import LocalFeatureStore
from shared.prediction_log import PREDICTIONS, LoggedPredictions

log = logging.getLogger(__name__)

_FETCH_RECORDS = 1000  # records per read of the sink
_MAX_WAIT_S = 1.0  # a read of the sink waits at most this long (then the stop flag is checked)
_BACKOFF_MAX_S = 10.0


@dataclass
class WriterSummary:
    source: str
    records: int = 0
    rows: int = 0
    commits: int = 0
    upserts: int = 0  # commits holding replayed records
    compactions: int = 0
    malformed: int = 0  # records that could not be decoded (logged and dropped)
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Commit:
    """Records read and not yet acknowledged, in reading order, with their decoded entries."""

    records: list[LogRecord] = field(default_factory=list)
    entries: list[list[LoggedPredictions]] = field(default_factory=list)
    rows: int = 0
    since: float | None = None  # when the oldest of them was read
    # A commit of these failed: it may have landed all the same, so the next try upserts.
    uncertain: bool = False
    committed: bool = False  # committed, not yet acknowledged (the acknowledgement failed)

    def add(self, record: LogRecord, entries: list[LoggedPredictions]) -> None:
        self.records.append(record)
        self.entries.append(entries)
        self.rows += sum(len(entry) for entry in entries)
        if self.since is None:
            self.since = time.monotonic()

    def take(self, max_rows: int) -> _Commit:
        """The oldest records up to ``max_rows`` rows (at least one record), moved out."""
        taken, rows = 0, 0
        while taken < len(self.records) and (taken == 0 or rows < max_rows):
            rows += sum(len(entry) for entry in self.entries[taken])
            taken += 1
        head = _Commit(self.records[:taken], self.entries[:taken], rows, self.since)
        head.uncertain = self.uncertain
        del self.records[:taken], self.entries[:taken]
        self.rows -= rows
        if not self.records:
            self.since = None
        return head


class LogWriter:
    def __init__(
        self,
        store: FeatureStore,
        source: PredictionSource,
        settings: InferenceSettings,
        metrics: WriterMetrics | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._settings = settings
        self._pending = _Commit()
        self._committing: _Commit | None = None  # taken, its commit or ack not done
        self._since_compaction = 0
        self.summary = WriterSummary(source=source.name)
        self.metrics = WriterMetrics(source) if metrics is None else metrics
        self.metrics.watch(self._waiting)

    def run(
        self,
        stop: threading.Event,
        *,
        drain: bool = False,
        on_commit: Callable[[WriterSummary], None] | None = None,
        collect_per_commit: bool = False,
    ) -> WriterSummary:
        """Commit what the sink holds until ``stop`` is set (then commit what waits and
        return), or with ``drain``, until the sink holds nothing more ready. In drain mode a
        failure ends the run (``summary.error``); otherwise it is logged and retried.

        ``collect_per_commit`` (the ``log-writer`` process, which runs nothing else): Python's
        garbage collector runs once after each commit instead of whenever allocations pile up
        (see `_collect_per_commit`)."""
        if not collect_per_commit:
            return self._run(stop, drain, on_commit)
        with _collect_per_commit() as collect:
            return self._run(stop, drain, _collect_then(on_commit, collect))

    def _run(
        self,
        stop: threading.Event,
        drain: bool,
        on_commit: Callable[[WriterSummary], None] | None,
    ) -> WriterSummary:
        began = time.monotonic()
        self._store.register(PREDICTIONS)
        backoff = 0.5
        while not stop.is_set():
            try:
                fetched = self._source.fetch(_FETCH_RECORDS, 0.0 if drain else self._wait_s())
                self._alive()
                for record in fetched:
                    self._read(record)
                while self._committing is not None or self._due(final=drain and not fetched):
                    self._commit()
                    if on_commit is not None:
                        on_commit(self.summary)
            except (FTIError, DeltaError, OSError) as exc:
                self.metrics.failures.labels(type(exc).__name__).inc()
                if drain:
                    self.summary.error = f"{type(exc).__name__}: {exc}"
                    break
                log.error("prediction log writer: %s; retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.5
            if drain and not fetched and not self._pending.records:
                break
        if stop.is_set():
            try:
                while self._committing is not None or self._due(final=True):
                    self._commit()
            except (FTIError, DeltaError, OSError) as exc:  # not acknowledged: read again later
                self.summary.error = f"{type(exc).__name__}: {exc}"
        self.summary.seconds = time.monotonic() - began
        return self.summary

    def _waiting(self) -> tuple[int, int, float | None]:
        """Records and rows read and not yet committed and acknowledged, and when the oldest
        was read (a metrics scrape reads this from its own thread: a snapshot is enough)."""
        committing, pending = self._committing, self._pending
        records, rows = len(pending.records), pending.rows
        since = pending.since
        if committing is not None:
            records, rows = records + len(committing.records), rows + committing.rows
            since = committing.since
        return records, rows, since

    def _alive(self) -> None:
        path = self._settings.prediction_log_alive_file
        if path is not None:
            path.touch()

    def _wait_s(self) -> float:
        if self._pending.since is None:
            return _MAX_WAIT_S
        due_in = self._pending.since + self._settings.prediction_log_commit_s - time.monotonic()
        return min(_MAX_WAIT_S, max(0.0, due_in))

    def _due(self, *, final: bool = False) -> bool:
        """Whether the waiting records make a commit: enough rows, old enough, or ``final``
        (draining, stopping) and any at all."""
        pending = self._pending
        if pending.since is None:
            return False
        old = time.monotonic() - pending.since >= self._settings.prediction_log_commit_s
        return final or old or pending.rows >= self._settings.prediction_log_commit_rows

    def _read(self, record: LogRecord) -> None:
        self.summary.records += 1
        self.metrics.read[record.replayed].inc()
        entries: list[LoggedPredictions] = []
        if record.payload:
            try:
                entries = decode_batches(record.payload)
            except RecordError as exc:  # no retry can read it: dropped, loudly
                self.summary.malformed += 1
                self.metrics.malformed.inc()
                log.error("prediction log record %s dropped: %s", record.position, exc)
        self._pending.add(record, entries)

    def _commit(self) -> None:
        """One bounded commit of the oldest waiting records, then their acknowledgement. A
        failure leaves them in ``_committing``, tried again first."""
        if self._committing is None:
            self._committing = self._pending.take(self._settings.prediction_log_commit_rows)
        batch = self._committing
        began = time.perf_counter()
        rows = prediction_rows([entry for entries in batch.entries for entry in entries])
        if rows.height and not batch.committed:
            self._write(batch, rows)
            self.metrics.commit_seconds.observe(time.perf_counter() - began)
        self._source.ack(batch.records)
        self._committing = None
        self.metrics.last_commit.set_to_current_time()
        log.info("committed %d prediction rows (%d records)", rows.height, len(batch.records))
        every = self._settings.prediction_log_compact_commits
        if every and self._since_compaction >= every:
            self.compact()

    def _write(self, pending: _Commit, rows: pl.DataFrame) -> None:
        replayed = pending.uncertain or any(record.replayed for record in pending.records)
        pending.uncertain = True
        if replayed:  # maybe committed before (a writer died, a commit failed): no duplicate
            self._store.insert(PREDICTIONS, rows)
            self.summary.upserts += 1
        else:
            self._store.append(PREDICTIONS, rows)
        pending.committed = True
        kind = UPSERT if replayed else APPEND
        self.metrics.commits.labels(kind).inc()
        self.metrics.rows.labels(kind).inc(rows.height)
        self.summary.commits += 1
        self.summary.rows += rows.height
        self._since_compaction += 1

    def compact(self) -> None:
        """OPTIMIZE (and VACUUM, by the settings) the predictions table."""
        self._since_compaction = 0
        if not isinstance(self._store, LocalFeatureStore):
            return
        with self.metrics.compaction_seconds.time():
            result = self._store.compact(
                PREDICTIONS, vacuum_hours=self._settings.prediction_log_vacuum_hours
            )
        self.summary.compactions += 1
        log.info("compacted the predictions table: %s", result)


@contextmanager
def _collect_per_commit() -> Iterator[Callable[[], object]]:
    """Automatic garbage collection off, and a collection to run after each commit.

    The records read since the last commit wait decoded in memory (tens of container objects
    per record, thousands of records): every automatic collection walked them all again, which
    doubled the decoding's CPU (`benchmarks/prediction_log_writer.py`), CPU the writer takes
    from the serving processes on a shared host. Decoded records hold no reference cycles and
    are freed by reference counting once committed; a collection after each commit (the
    start-up objects frozen out of its reach) finds what cycles there are, so memory stays
    bounded by the commit policy."""
    gc.collect()
    gc.freeze()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield gc.collect
    finally:
        if was_enabled:
            gc.enable()
        gc.unfreeze()


def _collect_then(
    on_commit: Callable[[WriterSummary], None] | None, collect: Callable[[], object]
) -> Callable[[WriterSummary], None]:
    def after_commit(summary: WriterSummary) -> None:
        collect()
        if on_commit is not None:
            on_commit(summary)

    return after_commit
