"""The 2013 departure events, as an upstream system would have appended them.

Each valid flight of the window becomes its event (``events_from_flights``: actual departure =
scheduled + delay; a cancellation at the scheduled instant), ordered by event time, with a
heartbeat whenever a stretch of event time passes without one (so quiet hours advance the
stream's clock too). :class:`Pacer` releases them X times faster than real time, or all at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from feature_pipeline.extract import Source, Window
from feature_pipeline.features.departures import CANCELLATION, events_from_flights
from feature_pipeline.pipeline import validate_flights
from feature_pipeline.stream.messages import encode, heartbeat


@dataclass(frozen=True)
class Timed:
    """A message and its event time."""

    at: datetime
    payload: bytes


def replay_events(source: Source, start: date, end: date) -> pl.DataFrame:
    """Typed events of the flights of local days [start, end], in event-time order."""
    flights = validate_flights(source.flights(Window(start, end)), source.airport_codes()).valid
    events = events_from_flights(flights)
    event_at = (
        pl.when(pl.col("type") == CANCELLATION)
        .then(pl.col("sched_dep"))
        .otherwise(pl.col("actual_dep"))
    )
    return events.with_columns(event_at.alias("event_at")).sort(["event_at", "flight_id"])


def timeline(events: pl.DataFrame, quiet: timedelta | None) -> list[Timed]:
    """Events (with ``event_at``) as messages, with a heartbeat whenever ``quiet`` of event
    time passes without an event (None: no heartbeats): what an upstream system sends so that
    a quiet night still moves the stream's clock."""
    payloads = encode(events.drop("event_at"))
    moments: list[datetime] = events["event_at"].to_list()
    out: list[Timed] = []
    last = moments[0] if moments else None
    for at, payload in zip(moments, payloads, strict=True):
        while quiet is not None and last is not None and at - last > quiet:
            last += quiet
            out.append(Timed(last, heartbeat(last)))
        out.append(Timed(at, payload))
        last = at
    return out


class Pacer:
    """Releases timed messages ``speed`` times faster than real time (None: at once)."""

    def __init__(
        self,
        messages: list[Timed],
        speed: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._messages = messages
        self._speed = speed
        self._clock = clock
        self._next = 0
        self._began: float | None = None

    @property
    def done(self) -> bool:
        return self._next >= len(self._messages)

    @property
    def released(self) -> int:
        return self._next

    def due(self, limit: int) -> list[Timed]:
        """The messages due by now (at most ``limit``), without waiting."""
        if self._began is None:
            self._began = self._clock()
        if self._speed is None:
            stop = min(len(self._messages), self._next + limit)
        else:
            first = self._messages[0].at if self._messages else None
            elapsed = (self._clock() - self._began) * self._speed
            stop = self._next
            while (
                stop < len(self._messages)
                and stop - self._next < limit
                and first is not None
                and (self._messages[stop].at - first).total_seconds() <= elapsed
            ):
                stop += 1
        out = self._messages[self._next : stop]
        self._next = stop
        return out

    def wait_s(self) -> float:
        """Seconds until the next message is due (0 when due or done)."""
        if self.done or self._speed is None or self._began is None:
            return 0.0
        first = self._messages[0].at
        due = (self._messages[self._next].at - first).total_seconds() / self._speed
        return max(0.0, due - (self._clock() - self._began))

    def __iter__(self) -> Iterator[list[Timed]]:
        """Batches as they fall due (sleeping in between), until all are released."""
        while not self.done:
            time.sleep(min(self.wait_s(), 0.5))
            batch = self.due(10_000)
            if batch:
                yield batch
