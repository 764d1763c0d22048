"""Fresh window features against a brute-force oracle: exact windows, strictly before T."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.feature_group import UTC_TIMESTAMP
from shared.recent_departures import (
    COUNT_FEATURES,
    FEATURES,
    WINDOWS_MIN,
    DepartureLog,
    Queries,
    Schedule,
    epoch_us,
    feature_frame,
    online_known_since,
    recent_departure_features,
)

pytestmark = pytest.mark.unit

BASE = epoch_us(datetime(2013, 6, 1, 12, tzinfo=UTC))
MIN = 60_000_000
ORIGINS = ("EWR", "JFK")
CARRIERS = ("AA", "UA")
TAILS = ("N1", "N2", None)


@dataclass(frozen=True)
class Event:
    flight_id: str
    origin: str
    carrier: str
    tailnum: str | None
    event_at: int
    dep_delay: float | None  # None: a cancellation


@dataclass(frozen=True)
class Scheduled:
    flight_id: str
    origin: str
    carrier: str
    sched_at: int


@dataclass(frozen=True)
class Query:
    origin: str
    carrier: str
    tailnum: str | None
    at: int
    day_start: int


# Times on a coarse grid of minutes plus odd microseconds, so ties with T and window bounds
# happen often.
times = st.builds(
    lambda minutes, micros: BASE + minutes * MIN + micros,
    st.integers(-300, 60),
    st.sampled_from([0, 0, 0, 1, 30_000_000, MIN - 1]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Event], list[Scheduled], list[Query]]:
    n = draw(st.integers(0, 40))
    events, schedule = [], []
    for i in range(n):
        origin = draw(st.sampled_from(ORIGINS))
        carrier = draw(st.sampled_from(CARRIERS))
        sched = draw(times)
        flight = f"f{i}"
        if draw(st.booleans()):
            schedule.append(Scheduled(flight, origin, carrier, sched))
        if draw(st.integers(0, 3)):  # most flights have their event
            cancelled = draw(st.integers(0, 5)) == 0
            delay = None if cancelled else float(draw(st.integers(-120, 200)))
            at = sched if delay is None else sched + int(delay) * MIN
            events.append(Event(flight, origin, carrier, draw(st.sampled_from(TAILS)), at, delay))
    # Event times are often the queries' own times: equality must not count.
    queries = []
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.one_of(times, st.sampled_from([e.event_at for e in events] or [BASE])))
        queries.append(
            Query(
                draw(st.sampled_from(ORIGINS)),
                draw(st.sampled_from(CARRIERS)),
                draw(st.sampled_from(TAILS)),
                at,
                at - draw(st.integers(0, 400)) * MIN,
            )
        )
    return events, schedule, queries


def oracle(events: list[Event], schedule: list[Scheduled], q: Query) -> dict[str, float]:
    """The definitions, one event at a time."""
    out: dict[str, float] = {}
    for level, same in (
        ("origin", lambda x: x.origin == q.origin),
        ("origin_carrier", lambda x: x.origin == q.origin and x.carrier == q.carrier),
    ):
        for w in WINDOWS_MIN:
            start = q.at - w * MIN
            gone = [
                e.dep_delay
                for e in events
                if same(e) and e.dep_delay is not None and start <= e.event_at < q.at
            ]
            out[f"{level}_departures_{w}m"] = len(gone)
            out[f"{level}_mean_dep_delay_{w}m"] = sum(gone) / len(gone) if gone else math.nan
            out[f"{level}_delayed_share_{w}m"] = (
                sum(d > 15 for d in gone) / len(gone) if gone else math.nan
            )
            resolved = {e.flight_id for e in events if e.event_at < q.at}
            out[f"{level}_pending_{w}m"] = sum(
                1
                for s in schedule
                if same(s) and start <= s.sched_at < q.at and s.flight_id not in resolved
            )
    earlier = sorted(
        (e.event_at, e.flight_id, e.dep_delay)
        for e in events
        if q.tailnum is not None
        and e.tailnum == q.tailnum
        and e.dep_delay is not None
        and q.day_start <= e.event_at < q.at
    )
    out["tail_last_dep_delay"] = earlier[-1][2] if earlier else math.nan
    out["tail_minutes_since_last_dep"] = (q.at - earlier[-1][0]) / MIN if earlier else math.nan
    return out


def event_rows(events: list[Event]) -> list[dict[str, Any]]:
    """The events as the online store returns them (plain values)."""
    return [
        {
            "flight_id": e.flight_id,
            "origin": e.origin,
            "carrier": e.carrier,
            "tailnum": e.tailnum,
            "event_at": e.event_at,
            "dep_delay": e.dep_delay,
            "is_cancelled": e.dep_delay is None,
        }
        for e in events
    ]


def schedule_rows(schedule: list[Scheduled]) -> list[dict[str, Any]]:
    return [
        {
            "flight_id": s.flight_id,
            "origin": s.origin,
            "carrier": s.carrier,
            "sched_dep_utc": s.sched_at,
        }
        for s in schedule
    ]


def as_queries(queries: list[Query]) -> Queries:
    obj = lambda values: np.array([*values, 0], dtype=object)[:-1]  # noqa: E731
    return Queries(
        origin=obj([q.origin for q in queries]),
        carrier=obj([q.carrier for q in queries]),
        tailnum=obj([q.tailnum for q in queries]),
        at=np.array([q.at for q in queries], dtype=np.int64),
        day_start=np.array([q.day_start for q in queries], dtype=np.int64),
    )


def as_arrays(
    events: list[Event], schedule: list[Scheduled], queries: list[Query]
) -> tuple[DepartureLog, Schedule, Queries]:
    return (
        DepartureLog.from_rows(event_rows(events)),
        Schedule.from_rows(schedule_rows(schedule)),
        as_queries(queries),
    )


def compute(
    events: list[Event], schedule: list[Scheduled], queries: list[Query]
) -> dict[str, np.ndarray]:
    log, sched, q = as_arrays(events, schedule, queries)
    return recent_departure_features(
        log, sched, q, covered_until=BASE + 10**12, tolerance=timedelta(0)
    )


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_windows_equal_the_brute_force_oracle(
    scenario: tuple[list[Event], list[Scheduled], list[Query]],
) -> None:
    events, schedule, queries = scenario
    got = compute(events, schedule, queries)
    for i, q in enumerate(queries):
        expected = oracle(events, schedule, q)
        for name in FEATURES:
            np.testing.assert_allclose(
                got[name][i], expected[name], rtol=1e-6, equal_nan=True, err_msg=name
            )


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.integers(2, 30))
def test_replicated_departures_multiply_the_counts_and_keep_the_rest(
    scenario: tuple[list[Event], list[Scheduled], list[Query]], copies: int
) -> None:
    """The scale benchmarks' data (every flight k times, under new ids): the counts are k
    times the real ones, means, shares and the aircraft's last departure unchanged (the
    pending count is two prefix counts per key, not a check per departure in the window)."""
    events, schedule, queries = scenario
    real = compute(events, schedule, queries)
    many_events = [
        Event(f"{e.flight_id}-{k}", e.origin, e.carrier, e.tailnum, e.event_at, e.dep_delay)
        for e in events
        for k in range(copies)
    ]
    many_schedule = [
        Scheduled(f"{s.flight_id}-{k}", s.origin, s.carrier, s.sched_at)
        for s in schedule
        for k in range(copies)
    ]
    scaled = compute(many_events, many_schedule, queries)
    for name in FEATURES:
        factor = copies if name in COUNT_FEATURES else 1
        np.testing.assert_allclose(
            scaled[name], real[name] * factor, rtol=1e-6, equal_nan=True, err_msg=name
        )


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_nothing_at_or_after_t_and_no_input_order_changes_a_value(
    scenario: tuple[list[Event], list[Scheduled], list[Query]],
) -> None:
    """Rewriting every event at or after each query's T (delays, existence) changes nothing,
    and neither does shuffling the rows."""
    events, schedule, queries = scenario
    for i, q in enumerate(queries):
        before = [e for e in events if e.event_at < q.at]
        after = [
            Event(e.flight_id, e.origin, e.carrier, e.tailnum, e.event_at, 999.0)
            for e in events
            if e.event_at >= q.at
        ]
        shuffled = [*after[::2], *before][::-1]
        a = compute(events, schedule, [q])
        b = compute(shuffled, schedule[::-1], [q])
        for name in FEATURES:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name} (query {i})")


def test_a_query_past_the_coverage_gets_missing_features() -> None:
    events = [Event("f1", "EWR", "AA", "N1", BASE - 10 * MIN, 20.0)]
    queries = [
        Query("EWR", "AA", "N1", BASE, BASE - 600 * MIN),
        Query("EWR", "AA", "N1", BASE + 31 * MIN, BASE - 600 * MIN),
    ]
    log, sched, q = as_arrays(events, [], queries)
    got = recent_departure_features(
        log, sched, q, covered_until=BASE, tolerance=timedelta(minutes=30)
    )
    assert got["origin_departures_30m"][0] == 1
    assert got["tail_last_dep_delay"][0] == 20.0
    assert all(np.isnan(got[name][1]) for name in FEATURES)
    nothing = recent_departure_features(
        log, sched, q, covered_until=None, tolerance=timedelta(minutes=30)
    )
    assert all(np.isnan(nothing[name]).all() for name in FEATURES)


def test_a_query_reaching_before_the_online_horizon_gets_missing_features() -> None:
    """Online, only the last days are kept: a query whose windows (or whose aircraft's day)
    reach before them is missing, never computed from a partial history."""
    events = [Event("f1", "EWR", "AA", "N1", BASE - 10 * MIN, 20.0)]
    watermark = BASE + 5 * 24 * 60 * MIN
    since = online_known_since(watermark, timedelta(days=4))
    assert since is not None and since <= watermark - 4 * 24 * 60 * MIN
    queries = [
        Query("EWR", "AA", "N1", since + 240 * MIN, since + 200 * MIN),  # all within
        Query("EWR", "AA", "N1", since + 239 * MIN, since + 200 * MIN),  # 4 h reach out
        Query("EWR", "AA", "N1", since + 600 * MIN, since - 1),  # the aircraft's day does
    ]
    log, sched, q = as_arrays(events, [], queries)
    got = recent_departure_features(
        log, sched, q, covered_until=watermark, tolerance=timedelta(0), known_since=since
    )
    assert got["origin_departures_120m"][0] == 0
    assert np.isnan(got["origin_departures_120m"][1]) and np.isnan(got["tail_last_dep_delay"][2])


def test_offline_frames_and_online_rows_give_the_same_features() -> None:
    """DepartureLog.from_frame (Delta rows) = from_rows (online plain values), duplicates and
    superseded events included."""
    events = [
        Event("f1", "EWR", "AA", "N1", BASE - 10 * MIN, 20.0),
        Event("f2", "EWR", "UA", None, BASE - 50 * MIN, None),
        Event("f3", "JFK", "AA", "N1", BASE - 70 * MIN, -5.0),
    ]
    frame = pl.DataFrame(
        {
            "flight_id": [e.flight_id for e in events],
            "origin": [e.origin for e in events],
            "carrier": [e.carrier for e in events],
            "tailnum": [e.tailnum for e in events],
            "event_at": pl.Series([e.event_at for e in events]).cast(UTC_TIMESTAMP),
            "dep_delay": pl.Series([e.dep_delay for e in events], dtype=pl.Float32),
            "is_cancelled": [e.dep_delay is None for e in events],
        }
    )
    queries = [Query("EWR", "AA", "N1", BASE, BASE - 600 * MIN)]
    log, sched, q = as_arrays([*events, events[0]], [], queries)
    offline = recent_departure_features(
        DepartureLog.from_frame(frame), sched, q, covered_until=BASE, tolerance=timedelta(0)
    )
    online = recent_departure_features(log, sched, q, covered_until=BASE, tolerance=timedelta(0))
    for name in FEATURES:
        np.testing.assert_array_equal(offline[name], online[name], err_msg=name)
    typed = feature_frame(offline)
    assert typed["origin_departures_120m"].dtype == pl.Int32
    assert typed["origin_departures_120m"].to_list() == [1]
    assert typed["origin_mean_dep_delay_30m"].to_list() == [20.0]
    assert typed["origin_carrier_mean_dep_delay_120m"].to_list() == [20.0]
    assert typed["origin_pending_30m"].to_list() == [0]
