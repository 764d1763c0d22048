"""The fresh window features of a few queries, straight from the online store's rows.

:func:`shared.recent_departures.recent_departure_features` is the implementation of record: it
runs on whole spines offline and on every large online batch. On the one or few flights of a
typical online request it pays a fixed cost of about a hundred numpy calls on arrays of a few
dozen events (about 0.9 ms of a 2-3 ms request, ``benchmarks/fresh_features.py``). This module
computes the same numbers in plain Python, one query at a time, in a pass over the rows.

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
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
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

# Up to this many queries per call the row path is faster (benchmarks/fresh_features.py: x1.2
# at 8 flights of a day in departure order, x0.87 at 12).
MAX_QUERIES = 8

_US_PER_MIN = 60_000_000
_WINDOWS_US = tuple(w * _US_PER_MIN for w in WINDOWS_MIN)
_LONGEST_US = max(_WINDOWS_US)
_LOOKBACK_US = EVENT_LOOKBACK // timedelta(microseconds=1)
_NAN = math.nan


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
    events = list(latest_per_flight(event_rows, "event_at"))
    schedule = list(latest_per_flight(schedule_rows, "sched_dep_utc"))
    # The vectorised path sums the delays of every departure at the queries' origins in one
    # prefix sum: one such delay that is not whole could round any of their windows.
    origins = set(queries.origin.tolist())
    departures = []
    for event in events:
        if event["is_cancelled"]:
            continue
        if event["origin"] in origins and not _whole(event["dep_delay"]):
            return None
        departures.append(event)
    # A flight's resolution: its event's time (one per flight once deduplicated).
    resolved = {e["flight_id"]: e["event_at"] for e in events}
    columns: dict[str, list[float]] = {name: [] for name in FEATURES}
    for origin, carrier, tail, at, day_start in zip(
        queries.origin.tolist(),
        queries.carrier.tolist(),
        queries.tailnum.tolist(),
        queries.at.tolist(),
        queries.day_start.tolist(),
        strict=True,
    ):
        values = _query_values(departures, schedule, resolved, origin, carrier, tail, at, day_start)
        stale = covered_until is None or at - tolerance_us > covered_until
        if known_since is not None and min(at - _LOOKBACK_US, day_start) < known_since:
            stale = True
        for name, value in values.items():
            columns[name].append(_NAN if stale else value)
    return {
        name: np.array(column, dtype=np.float64 if name in COUNT_FEATURES else np.float32)
        for name, column in columns.items()
    }


def _query_values(
    departures: Sequence[Mapping[str, Any]],
    schedule: Sequence[Mapping[str, Any]],
    resolved: Mapping[Any, int],
    origin: Any,
    carrier: Any,
    tail: Any,
    at: int,
    day_start: int,
) -> dict[str, float]:
    """Every feature of one query, before the coverage rule.

    The windows are nested, so each instant in [T - 120 min, T) falls in one bucket (the
    part of a window not in the shorter ones) and a window's sums are its buckets' sums. A
    key part the query lacks counts nothing (the vectorised path's code -1: zero counts, no
    mean, no share)."""
    edges = [at - w for w in _WINDOWS_US]  # the windows' starts, newest first
    oldest = edges[-1]
    # per level (origin, then origin and carrier) and bucket: departures, delay sum, delayed
    count = [[0] * len(edges) for _ in LEVELS]
    delay_sum = [[0.0] * len(edges) for _ in LEVELS]
    late = [[0] * len(edges) for _ in LEVELS]
    pending = [[0] * len(edges) for _ in LEVELS]
    known_origin = origin is not None
    known_pair = known_origin and carrier is not None
    last: tuple[int, str] | None = None  # the aircraft's latest departure before T
    last_delay = _NAN
    for event in departures:
        moment = event["event_at"]
        if moment >= at:
            continue
        if tail is not None and event["tailnum"] == tail:
            mark = (moment, event["flight_id"])
            if last is None or mark > last:
                delay = event["dep_delay"]  # only summed delays need be whole
                last, last_delay = mark, _NAN if delay is None else float(delay)
        if moment < oldest or not known_origin or event["origin"] != origin:
            continue
        bucket = _bucket(moment, edges)
        delay = event["dep_delay"]
        for level in range(2 if known_pair and event["carrier"] == carrier else 1):
            count[level][bucket] += 1
            delay_sum[level][bucket] += delay
            late[level][bucket] += delay > DELAY_THRESHOLD_MIN
    if known_origin:
        for row in schedule:
            scheduled = row["sched_dep_utc"]
            # pending at T: scheduled in [T - w, T) and not resolved before T
            if not oldest <= scheduled < at or row["origin"] != origin:
                continue
            if resolved.get(row["flight_id"], at) < at:
                continue
            bucket = _bucket(scheduled, edges)
            for level in range(2 if known_pair and row["carrier"] == carrier else 1):
                pending[level][bucket] += 1
    values: dict[str, float] = {}
    for level, name in enumerate(LEVELS):
        n = delayed = waiting = 0
        total = 0.0
        for bucket, minutes in enumerate(WINDOWS_MIN):
            n += count[level][bucket]
            total += delay_sum[level][bucket]
            delayed += late[level][bucket]
            waiting += pending[level][bucket]
            values[f"{name}_departures_{minutes}m"] = float(n)
            values[f"{name}_mean_dep_delay_{minutes}m"] = total / n if n else _NAN
            values[f"{name}_delayed_share_{minutes}m"] = delayed / n if n else _NAN
            values[f"{name}_pending_{minutes}m"] = float(waiting)
    found = last is not None and last[0] >= day_start
    values["tail_last_dep_delay"] = last_delay if found else _NAN
    values["tail_minutes_since_last_dep"] = (at - last[0]) / _US_PER_MIN if found else _NAN  # type: ignore[index]
    return values


def _bucket(moment: int, edges: Sequence[int]) -> int:
    """The index of the shortest window that holds ``moment`` (known to be in the longest)."""
    for bucket, start in enumerate(edges):
        if moment >= start:
            return bucket
    raise AssertionError("outside the longest window")


def _whole(delay: Any) -> bool:
    """A delay that prefix sums and a direct sum add up exactly alike (NaN is not)."""
    return delay is not None and float(delay).is_integer()
