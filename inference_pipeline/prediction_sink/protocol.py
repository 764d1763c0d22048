"""The two sides of the prediction log's hand-off, whatever carries it.

A :class:`PredictionSink` is what the service appends to: one record per answered batch, durable
(by the sink's policy) when ``append`` returns, so a response is sent only for predictions the
log will have. A :class:`PredictionSource` is what the log writer reads: records in batches,
acknowledged only after the rows they hold are committed; a record fetched but not acknowledged
(the writer died) is fetched again, flagged ``replayed``, and the writer commits those rows with
an upsert so that they are in the table once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from shared.errors import FTIError


class SinkUnavailable(FTIError):
    """The sink refused an append or a read (disk full, broker down)."""


class LogRecord(NamedTuple):
    """One record as the writer reads it. (A named tuple: a commit holds thousands.)"""

    position: str  # where it is in the sink (a segment file, a stream entry id)
    payload: bytes
    replayed: bool  # maybe committed already by a writer that died before acknowledging it


class PredictionSink(Protocol):
    def append(self, record: bytes) -> None:
        """Store one record; raises :class:`SinkUnavailable` when it could not."""
        ...

    def tick(self) -> None:
        """Housekeeping the service's loop calls every second or so (the spool seals its
        segment when it is old enough for the writer)."""
        ...

    def close(self) -> None: ...


class PredictionSource(Protocol):
    @property
    def name(self) -> str: ...

    def fetch(self, max_records: int, wait_s: float) -> list[LogRecord]:
        """Up to about ``max_records`` records not yet acknowledged, waiting up to ``wait_s``
        for some; [] when there are none."""
        ...

    def ack(self, records: Sequence[LogRecord]) -> None:
        """``records`` are committed: never fetch them again (and free their space)."""
        ...

    @property
    def backlog_unit(self) -> str:
        """What `backlog` counts ("records", "bytes"): the unit of the writer's backlog
        metric."""
        ...

    def backlog(self) -> int:
        """What the sink holds unacknowledged (read by the writer and not yet committed, or not
        read yet), in `backlog_unit`; may be called from another thread (a metrics scrape)."""
        ...

    def close(self) -> None: ...
