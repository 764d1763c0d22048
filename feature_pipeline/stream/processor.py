"""The stream consumer: events -> departure_events rows -> online at once, offline in bounded
commits, acknowledged only once both stores hold them.

Per micro-batch (one `fetch`):

1. decode the messages (`messages.decode`) and check each event with the function the batch
   run uses (`departure_event_rows`); unreadable messages and broken events become quarantine
   rows with their reasons, and the stream goes on;
2. upsert the rows into the online store straight away (fresh within the micro-batch), and the
   stream's watermark (its latest event or heartbeat time) with them;
3. hand the rows, the quarantine rows and the message ids to the offline committer.

The committer (a thread, so that a Delta commit never holds up the online path) gathers
micro-batches and commits them to Delta at most every ``commit_interval_s`` or once
``commit_events`` wait: one atomic MERGE per group keyed by primary key + event time, then the
progress row, then the acknowledgement of every message they came from. At-least-once delivery
plus idempotent upserts in both stores give exactly-once in effect: a consumer killed anywhere
re-reads what it had not acknowledged, and writing it again changes nothing.

Both threads update the consumer's metrics (`metrics.StreamMetrics`) once per micro-batch or
commit; what waits for its commit is read from the committer (`OfflineCommitter.waiting`) when
Prometheus scrapes.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from feature_pipeline.features.departures import departure_event_rows
from feature_pipeline.pipeline import new_quarantine_rows
from feature_pipeline.stream.messages import MESSAGE, decode
from feature_pipeline.stream.metrics import StreamMetrics
from feature_pipeline.stream.source import EventSource, Message
from feature_pipeline.validate import stamp_quarantine
from shared.errors import FTIError
from shared.feature_definitions import (
    DEPARTURE_EVENTS,
    DEPARTURES_STREAM,
    QUARANTINE,
    STREAM_PROGRESS,
)
from shared.feature_store import FeatureStore

log = logging.getLogger(__name__)

QUARANTINE_SOURCE = "departures"


@dataclass
class StreamSummary:
    """What a consumer did, for the CLI's table and JSON line."""

    source: str
    consumer: str
    messages: int = 0
    events: int = 0
    heartbeats: int = 0
    quarantined: int = 0
    micro_batches: int = 0
    commits: int = 0
    acked: int = 0
    watermark: str | None = None
    seconds: float = 0.0
    error: str | None = None
    commit_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("commit_seconds")
        out["events_per_s"] = round(self.events / self.seconds, 1) if self.seconds else None
        return out


@dataclass(frozen=True)
class _Pending:
    rows: pl.DataFrame
    quarantine: pl.DataFrame
    ids: list[str]
    watermark: datetime | None


def quarantine_messages(
    payloads: Sequence[bytes], problems: Sequence[tuple[int, str]], run_id: str
) -> pl.DataFrame:
    """Quarantine rows for messages (position, reasons), keyed by their content."""
    if not problems:
        return pl.DataFrame(schema=QUARANTINE.polars_schema)
    raw = [payloads[i].decode("utf-8", errors="replace") for i, _ in problems]
    rows = pl.DataFrame(
        {
            "source": [QUARANTINE_SOURCE] * len(raw),
            "row_hash": [
                hashlib.sha256(f"{QUARANTINE_SOURCE}\x1f{r}".encode()).hexdigest() for r in raw
            ],
            "raw": raw,
            "rules": [why for _, why in problems],
        }
    )
    stamped = stamp_quarantine([rows], run_id, datetime.now(UTC))
    return QUARANTINE.conform(stamped).unique(list(QUARANTINE.primary_key), keep="first")


def progress_row(watermark: datetime, events: int) -> pl.DataFrame:
    return STREAM_PROGRESS.conform(
        pl.DataFrame(
            {
                "stream": [DEPARTURES_STREAM],
                "watermark": [watermark],
                "committed_at": [datetime.now(UTC)],
                "events": [events],
            }
        )
    )


class OfflineCommitter:
    """Gathers micro-batches and commits them offline with a bounded commit rate, then
    acknowledges their messages (see the module docstring)."""

    def __init__(
        self,
        store: FeatureStore,
        source: EventSource,
        summary: StreamSummary,
        metrics: StreamMetrics,
        *,
        interval_s: float,
        max_events: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._source = source
        self._summary = summary
        self._metrics = metrics
        self._interval_s = interval_s
        self._max_events = max_events
        self._clock = clock
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=8)
        self._buffer: list[_Pending] = []
        self._buffered_events = 0
        self._last_commit = clock()
        self._error: BaseException | None = None
        # What waits for its commit, submitted and not yet acknowledged: (when it was
        # submitted, events) per micro-batch, oldest first. Written by both threads and read
        # by metrics scrapes from theirs, hence the lock (taken once per micro-batch).
        self._lock = threading.Lock()
        self._waiting: deque[tuple[float, int]] = deque()
        self._waiting_events = 0
        self._thread = threading.Thread(target=self._run, name="offline-committer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, pending: _Pending) -> None:
        self.check()
        if pending.ids:  # what the committer buffers, and settles once committed
            with self._lock:
                self._waiting.append((self._clock(), pending.rows.height))
                self._waiting_events += pending.rows.height
        self._queue.put(pending)

    def waiting(self) -> tuple[int, float]:
        """Events submitted and not yet committed and acknowledged, and how long (seconds) the
        oldest micro-batch not yet committed has waited (0: none); safe from any thread."""
        with self._lock:
            oldest = self._waiting[0][0] if self._waiting else None
            events = self._waiting_events
        return events, 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    @property
    def error(self) -> BaseException | None:
        """What stopped the committer, if anything."""
        return self._error

    def check(self) -> None:
        """Raise the committer's failure, if it failed (in the consumer's thread)."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Commit what waits, then stop."""
        self._queue.put(None)
        self._thread.join()
        self.check()

    def _run(self) -> None:
        try:
            while True:
                timeout = max(0.01, self._interval_s - (self._clock() - self._last_commit))
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = _Pending(pl.DataFrame(), pl.DataFrame(), [], None)
                if item is None:
                    self._commit()
                    return
                if item.ids:
                    self._buffer.append(item)
                    self._buffered_events += item.rows.height
                due = self._clock() - self._last_commit >= self._interval_s
                if self._buffer and (due or self._buffered_events >= self._max_events):
                    self._commit()
        except BaseException as exc:
            log.exception("offline commit failed; the consumer stops (nothing is acknowledged)")
            self._metrics.failed(exc)
            self._error = exc

    def _commit(self) -> None:
        if not self._buffer:
            return
        began = self._clock()
        batch, self._buffer, self._buffered_events = self._buffer, [], 0
        rows = pl.concat([p.rows for p in batch])
        keys = [*DEPARTURE_EVENTS.primary_key, DEPARTURE_EVENTS.event_time]
        rows = rows.unique(keys, keep="last", maintain_order=True)
        quarantined = [p.quarantine for p in batch if p.quarantine.height]
        marks = [p.watermark for p in batch if p.watermark is not None]
        # Each insert is one MERGE, retried by the store when a concurrent writer (another
        # replica, a backfill) committed first.
        self._store.insert(DEPARTURE_EVENTS, rows)
        if quarantined:
            keyed = pl.concat(quarantined).unique(list(QUARANTINE.primary_key))
            self._store.insert(QUARANTINE, new_quarantine_rows(self._store, keyed))
        if marks:
            self._store.insert(STREAM_PROGRESS, progress_row(max(marks), rows.height))
        ids = [i for p in batch for i in p.ids]
        self._source.ack(ids)
        self._settled(len(batch))
        seconds = self._clock() - began
        self._summary.commits += 1
        self._summary.acked += len(ids)
        self._summary.commit_seconds.append(seconds)
        self._metrics.committed(seconds, len(ids))
        self._last_commit = self._clock()
        log.info("committed %d events, acknowledged %d messages", rows.height, len(ids))

    def _settled(self, micro_batches: int) -> None:
        """The oldest ``micro_batches`` waiting are committed and acknowledged."""
        with self._lock:
            for _ in range(micro_batches):
                self._waiting_events -= self._waiting.popleft()[1]


class StreamProcessor:
    """Consumes ``source`` into ``store`` until stopped, or until the source is exhausted."""

    def __init__(
        self,
        store: FeatureStore,
        source: EventSource,
        *,
        consumer: str,
        batch: int,
        wait_s: float,
        commit_interval_s: float,
        commit_events: int,
        alive_file: Path | None = None,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.store = store
        self.alive_file = alive_file
        self.metrics = StreamMetrics() if metrics is None else metrics
        self.source = source
        self.batch = batch
        self.wait_s = wait_s
        self.run_id = f"stream-{consumer}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        self.summary = StreamSummary(source=source.name, consumer=consumer)
        self._watermark: datetime | None = None
        self._committer = OfflineCommitter(
            store,
            source,
            self.summary,
            self.metrics,
            interval_s=commit_interval_s,
            max_events=commit_events,
        )
        self.metrics.watch(self._committer.waiting)
        for group in (DEPARTURE_EVENTS, QUARANTINE, STREAM_PROGRESS):
            store.register(group)

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        max_messages: int | None = None,
        on_batch: Callable[[StreamSummary], None] | None = None,
    ) -> StreamSummary:
        stop = stop or threading.Event()
        began = time.perf_counter()
        self._committer.start()
        try:
            while not stop.is_set():
                self._committer.check()
                limit = self.batch
                if max_messages is not None:
                    limit = min(limit, max_messages - self.summary.messages)
                    if limit <= 0:
                        break
                messages = self.source.fetch(limit, self.wait_s)
                if self.alive_file is not None:
                    self.alive_file.touch()
                if messages:
                    self.process(messages)
                    if on_batch is not None:
                        on_batch(self.summary)
                elif self.source.exhausted:
                    break
        except FTIError as exc:
            self.summary.error = str(exc)
            log.error("stream stopped: %s", exc)
            if exc is not self._committer.error:  # the committer counted its own
                self.metrics.failed(exc)
        finally:
            try:
                self._committer.close()
            except FTIError as exc:
                self.summary.error = self.summary.error or str(exc)
            self.summary.seconds = time.perf_counter() - began
        return self.summary

    def process(self, messages: Sequence[Message]) -> None:
        """One micro-batch: decode, check, online upsert, hand to the committer."""
        payloads = [m.payload for m in messages]
        decoded = decode(payloads)
        rows, broken = departure_event_rows(decoded.events)
        problems = [
            *decoded.unreadable,
            *((i, "heartbeat: at is not an instant") for i in decoded.bad_heartbeats),
            *zip(broken[MESSAGE].to_list(), broken["rules"].list.join("; ").to_list(), strict=True),
        ]
        for position, why in problems:
            log.warning("quarantined message %s: %s", messages[position].id, why)
        quarantined = quarantine_messages(payloads, problems, self.run_id)
        self._write_online(rows, decoded.heartbeat)
        self._committer.submit(
            _Pending(rows, quarantined, [m.id for m in messages], self._watermark)
        )
        heartbeats = len(payloads) - decoded.events.height - len(decoded.unreadable)
        s = self.summary
        s.messages += len(messages)
        s.events += rows.height
        s.heartbeats += heartbeats
        s.quarantined += len(problems)
        s.micro_batches += 1
        s.watermark = None if self._watermark is None else self._watermark.isoformat()
        # By message, so that the kinds add up to the messages read: a restated flight's two
        # events are two event messages and one row; a bad heartbeat is quarantined only.
        self.metrics.micro_batch(
            events=decoded.events.height - broken.height,
            heartbeats=heartbeats - len(decoded.bad_heartbeats),
            quarantined=len(problems),
        )

    def _write_online(self, rows: pl.DataFrame, heartbeat: datetime | None) -> None:
        """Upsert the events online, and the watermark when it moved (timed when anything
        was written)."""
        began = time.perf_counter()
        wrote = rows.height > 0
        if wrote:
            self.store.write_online(DEPARTURE_EVENTS, rows)
        newest = _latest(rows, heartbeat)
        if newest is not None and (self._watermark is None or newest > self._watermark):
            self._watermark = newest
            self.store.write_online(STREAM_PROGRESS, progress_row(newest, rows.height))
            self.metrics.advanced(newest)
            wrote = True
        if wrote:
            self.metrics.online_seconds.observe(time.perf_counter() - began)


def _latest(rows: pl.DataFrame, heartbeat: datetime | None) -> datetime | None:
    """The micro-batch's latest event or heartbeat time."""
    found = [heartbeat] if heartbeat is not None else []
    newest = rows["event_at"].max() if rows.height else None
    if isinstance(newest, datetime):
        found.append(newest)
    return max(found) if found else None
