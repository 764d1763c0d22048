"""The fresh window features of a few queries, straight from the online store's rows.

:func:`shared.recent_departures.recent_departure_features` is the implementation of record: it
runs on whole spines offline and on every large online batch. On the one or few flights of a
typical online request it pays a fixed cost of about a hundred numpy calls on arrays of a few
dozen events (about 0.9 ms of a 2-3 ms request, ``benchmarks/fresh_features.py``). This module
computes the same numbers in plain Python: the rows indexed once per key (origin, aircraft) in
time order, then each query's windows found in its own key's rows by bisection.

It follows the definitions of :mod:`shared.recent_departures` to the bit, and
``tests/unit/test_recent_departure_rows.py`` holds it equal to the vectorised path on random
events, schedules and queries (edge instants, ties, unknown keys, cancellations, stale
coverage). Where exact equality could fail it declines (returns ``None``) and the caller uses
the vectorised path: a departure at a query's origin whose delay is missing or not a whole number
of minutes (the
vectorised path sums delays by prefix sums, whose rounding differs from a direct sum's for
fractional values, and a missing one makes it NaN from there on; whole minutes, as the data
hold, sum exactly either way).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from operator import itemgetter
from typing import Any

import numpy as np

from shared.feature_definitions import DELAY_THRESHOLD_MIN
from shared.recent_departures import (
    COUNT_FEATURES,
    EVENT_LOOKBACK,
    FEATURES,
    LEVELS,
    WINDOWS_MIN,
    Queries,
    latest_per_flight,
)

# Up to this many queries per call the row path is faster (benchmarks/fresh_features.py, flights
# of a day in departure order: x1.2 at 16, x0.8 at 32; a pass over every row per query, before
# the rows were indexed per key, made it x0.87 at 12).
MAX_QUERIES = 16

_US_PER_MIN = 60_000_000
_WINDOWS_US = tuple(w * _US_PER_MIN for w in WINDOWS_MIN)
_LOOKBACK_US = EVENT_LOOKBACK // timedelta(microseconds=1)
_NAN = math.nan
# Per level and window (shortest first): its departures, mean delay, delayed share and pending
# features' names.
_WINDOW_NAMES = tuple(
    tuple(
        (
            f"{level}_departures_{minutes}m",
            f"{level}_mean_dep_delay_{minutes}m",
            f"{level}_delayed_share_{minutes}m",
            f"{level}_pending_{minutes}m",
        )
        for minutes in WINDOWS_MIN
    )
    for level in LEVELS
)


def recent_departure_rows(
    event_rows: Iterable[Mapping[str, Any]],
    schedule_rows: Iterable[Mapping[str, Any]],
    queries: Queries,
    *,
    covered_until: int | None,
    tolerance_us: int,
    known_since: int | None = None,
) -> dict[str, np.ndarray] | None:
    """What ``recent_departure_features`` returns for the same rows (as
    ``DepartureLog.from_rows`` and ``Schedule.from_rows`` take them), or None where it cannot
    promise the same numbers (see the module note)."""
    events = latest_per_flight(event_rows, "event_at")
    schedule = latest_per_flight(schedule_rows, "sched_dep_utc")
    origins = set(queries.origin.tolist())
    tails = set(queries.tailnum.tolist())
    # A flight's resolution: its event's time (one per flight once deduplicated).
    resolved: dict[Any, int] = {}
    departures = _Timelines()  # per origin of a query: its departures
    aircraft = _Timelines()  # per aircraft of a query: its departures, from any origin
    for event in events:
        flight, moment = event["flight_id"], event["event_at"]
        resolved[flight] = moment
        if event["is_cancelled"]:
            continue
        if event["origin"] in origins:
            # The vectorised path sums the delays of every departure at the queries' origins
            # in one prefix sum: one such delay that is not whole could round any window.
            delay = event["dep_delay"]
            if delay is None or not float(delay).is_integer():
                return None
            departures.add(event["origin"], moment, event)
        tail = event["tailnum"]
        if tail is not None and tail in tails:
            aircraft.add(tail, (moment, flight), event)
    scheduled = _Timelines()
    for row in schedule:
        if row["origin"] in origins:
            scheduled.add(row["origin"], row["sched_dep_utc"], row)
    columns: dict[str, list[float]] = {name: [] for name in FEATURES}
    for origin, carrier, tail, at, day_start in zip(
        queries.origin.tolist(),
        queries.carrier.tolist(),
        queries.tailnum.tolist(),
        queries.at.tolist(),
        queries.day_start.tolist(),
        strict=True,
    ):
        values = _window_values(departures, scheduled, resolved, origin, carrier, at)
        values |= _tail_values(aircraft, tail, at, day_start)
        stale = covered_until is None or at - tolerance_us > covered_until
        if known_since is not None and min(at - _LOOKBACK_US, day_start) < known_since:
            stale = True
        for name, value in values.items():
            columns[name].append(_NAN if stale else value)
    return {
        name: np.array(column, dtype=np.float64 if name in COUNT_FEATURES else np.float32)
        for name, column in columns.items()
    }


class _Timelines:
    """Rows per key in time order, searched by bisection: a query visits the rows of its own
    key and windows only (a batch's rows hold every query's keys and spans, and a pass over
    all of them per query made a batch of 8 flights cost 8 such passes)."""

    def __init__(self) -> None:
        self._rows: dict[Any, list[tuple[Any, Mapping[str, Any]]]] = {}
        self._sorted: dict[Any, tuple[list[Any], list[Mapping[str, Any]]]] = {}

    def add(self, key: Any, order: Any, row: Mapping[str, Any]) -> None:
        self._rows.setdefault(key, []).append((order, row))

    def of(self, key: Any) -> tuple[list[Any], list[Mapping[str, Any]]]:
        """The key's (sort keys, rows), oldest first."""
        found = self._sorted.get(key)
        if found is None:
            pairs = sorted(self._rows.get(key, ()), key=itemgetter(0))
            found = self._sorted[key] = ([o for o, _ in pairs], [r for _, r in pairs])
        return found


def _window_values(
    departures: _Timelines,
    scheduled: _Timelines,
    resolved: Mapping[Any, int],
    origin: Any,
    carrier: Any,
    at: int,
) -> dict[str, float]:
    """The window features of one query, before the coverage rule.

    The windows are nested, so each instant in [T - 120 min, T) falls in one bucket (the
    part of a window not in the shorter ones) and a window's sums are its buckets' sums. A
    key part the query lacks counts nothing (the vectorised path's code -1: zero counts, no
    mean, no share)."""
    edges = [at - w for w in _WINDOWS_US]  # the windows' starts, newest first
    # per level (origin, then origin and carrier) and bucket: departures, delay sum, delayed
    count = [[0] * len(edges) for _ in LEVELS]
    delay_sum = [[0.0] * len(edges) for _ in LEVELS]
    late = [[0] * len(edges) for _ in LEVELS]
    pending = [[0] * len(edges) for _ in LEVELS]
    if origin is not None:
        known_pair = carrier is not None
        times, events = departures.of(origin)
        for bucket, (lo, hi) in enumerate(_buckets(times, edges, at)):
            for event in events[lo:hi]:
                delay = event["dep_delay"]
                for level in range(2 if known_pair and event["carrier"] == carrier else 1):
                    count[level][bucket] += 1
                    delay_sum[level][bucket] += delay
                    late[level][bucket] += delay > DELAY_THRESHOLD_MIN
        times, rows = scheduled.of(origin)
        for bucket, (lo, hi) in enumerate(_buckets(times, edges, at)):
            for row in rows[lo:hi]:
                # pending at T: scheduled in the window and not resolved before T
                if resolved.get(row["flight_id"], at) < at:
                    continue
                for level in range(2 if known_pair and row["carrier"] == carrier else 1):
                    pending[level][bucket] += 1
    values: dict[str, float] = {}
    for level, names in enumerate(_WINDOW_NAMES):
        n = delayed = waiting = 0
        total = 0.0
        for bucket, (departed, mean, share, waits) in enumerate(names):
            n += count[level][bucket]
            total += delay_sum[level][bucket]
            delayed += late[level][bucket]
            waiting += pending[level][bucket]
            values[departed] = float(n)
            values[mean] = total / n if n else _NAN
            values[share] = delayed / n if n else _NAN
            values[waits] = float(waiting)
    return values


def _buckets(times: Sequence[int], edges: Sequence[int], at: int) -> list[tuple[int, int]]:
    """Per bucket (newest first), the slice of ``times`` (ascending) in it: [edge, the next
    newer edge or T)."""
    bounds = [bisect_left(times, at), *(bisect_left(times, edge) for edge in edges)]
    return [(bounds[i + 1], bounds[i]) for i in range(len(edges))]


def _tail_values(aircraft: _Timelines, tail: Any, at: int, day_start: int) -> dict[str, float]:
    """The aircraft's latest departure before T (the latest flight id of equal instants), if
    it is today's."""
    delay = since = _NAN
    if tail is not None:
        marks, events = aircraft.of(tail)
        last = bisect_left(marks, (at,)) - 1  # (at,) sorts before every (at, flight id)
        if last >= 0 and marks[last][0] >= day_start:
            value = events[last]["dep_delay"]  # only summed delays need be whole
            delay = _NAN if value is None else float(value)
            since = (at - marks[last][0]) / _US_PER_MIN
    return {"tail_last_dep_delay": delay, "tail_minutes_since_last_dep": since}
