"""The online row path of the fresh window features equals the vectorised one, bit for bit."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.recent_departure_rows import MAX_QUERIES, recent_departure_rows
from shared.recent_departures import (
    FEATURES,
    WINDOWS_MIN,
    DepartureLog,
    Schedule,
    recent_departure_features,
)
from tests.unit.test_recent_departures import (
    BASE,
    MIN,
    Event,
    Query,
    Scheduled,
    as_queries,
    event_rows,
    scenarios,
    schedule_rows,
    times,
)

pytestmark = pytest.mark.unit


@st.composite
def online_cases(draw: st.DrawFn) -> dict[str, Any]:
    """The oracle test's scenarios, plus what the online store can hand back: a flight's event
    restated at another time, rows read twice (under both indexes), unknown key parts in a
    query, and any coverage and horizon."""
    events, schedule, queries = draw(scenarios())
    for event in draw(st.lists(st.sampled_from(events), max_size=3)) if events else []:
        events.append(
            Event(
                event.flight_id,
                event.origin,
                event.carrier,
                event.tailnum,
                draw(times),
                None if draw(st.booleans()) else float(draw(st.integers(-30, 90))),
            )
        )
    events += events[: draw(st.integers(0, len(events)))]  # the same rows read twice
    schedule += [
        Scheduled(s.flight_id, s.origin, s.carrier, draw(times))
        for s in schedule[: draw(st.integers(0, 2))]
    ]
    queries = [
        Query(
            draw(st.sampled_from([q.origin, q.origin, None])),
            draw(st.sampled_from([q.carrier, q.carrier, None])),
            q.tailnum,
            q.at,
            q.day_start,
        )
        for q in queries
    ]
    # Queries whose window edges fall exactly on an event or a scheduled departure (random
    # times rarely do): the boundaries are where two implementations part.
    edges = [(e.origin, e.carrier, e.tailnum, e.event_at) for e in events]
    edges += [(s.origin, s.carrier, None, s.sched_at) for s in schedule]
    picked = draw(st.lists(st.sampled_from(edges), max_size=4)) if edges else []
    for origin, carrier, tail, moment in picked:
        at = moment + draw(st.sampled_from((0, *WINDOWS_MIN))) * MIN
        queries.append(Query(origin, carrier, tail, at, at - draw(st.integers(0, 400)) * MIN))
    covered = draw(st.one_of(st.none(), times))
    return {
        "events": events,
        "schedule": schedule,
        "queries": queries,
        "covered_until": covered,
        "tolerance": timedelta(minutes=draw(st.sampled_from([0, 10, 60]))),
        "known_since": draw(st.one_of(st.none(), st.just(BASE - 300 * MIN), times)),
    }


def both_paths(case: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    events, schedule = event_rows(case["events"]), schedule_rows(case["schedule"])
    queries = as_queries(case["queries"])
    rows = recent_departure_rows(
        events,
        schedule,
        queries,
        covered_until=case["covered_until"],
        tolerance_us=case["tolerance"] // timedelta(microseconds=1),
        known_since=case["known_since"],
    )
    vectorised = recent_departure_features(
        DepartureLog.from_rows(events),
        Schedule.from_rows(schedule),
        queries,
        covered_until=case["covered_until"],
        tolerance=case["tolerance"],
        known_since=case["known_since"],
    )
    return rows, vectorised


@settings(max_examples=400, deadline=None)
@given(online_cases())
def test_the_row_path_equals_the_vectorised_path_bit_for_bit(case: dict[str, Any]) -> None:
    rows, vectorised = both_paths(case)
    assert rows is not None  # whole-minute delays: never declined
    assert list(rows) == list(FEATURES)
    for name in FEATURES:
        assert rows[name].dtype == vectorised[name].dtype, name
        np.testing.assert_array_equal(rows[name], vectorised[name], err_msg=name)


def test_a_fractional_or_missing_departure_delay_is_left_to_the_vectorised_path() -> None:
    """Prefix sums and a direct sum may round fractional delays differently: the row path
    declines rather than risk a value the offline path would not give."""
    query = [Query("EWR", "AA", "N1", BASE, BASE - 600 * MIN)]
    for delay in (12.5, float("nan")):
        case = {
            "events": [
                Event("f1", "EWR", "AA", "N1", BASE - 10 * MIN, 0.1),
                Event("f2", "EWR", "AA", "N2", BASE - 5 * MIN, delay),
            ],
            "schedule": [],
            "queries": query,
            "covered_until": BASE,
            "tolerance": timedelta(0),
            "known_since": None,
        }
        rows, _ = both_paths(case)
        assert rows is None
    whole = case | {"events": [Event("f1", "EWR", "AA", "N1", BASE - 10 * MIN, 7.0)]}
    rows, vectorised = both_paths(whole)
    assert rows is not None and rows["origin_mean_dep_delay_30m"][0] == 7.0
    assert rows["tail_minutes_since_last_dep"][0] == vectorised["tail_minutes_since_last_dep"][0]


def test_the_online_path_uses_rows_for_a_few_queries_and_numpy_for_many() -> None:
    """Whichever path a batch takes, each flight gets the same values as alone."""
    from shared.fresh_features import FreshFeatures, online_fresh_columns, online_fresh_reads

    events = [Event(f"f{i}", "EWR", "AA", "N1", BASE - i * 7 * MIN, float(i)) for i in range(30)]
    found = [[event_rows(events)], [], [[]]]  # origin ranges, aircraft ranges, schedule
    requests = [
        {"origin": "EWR", "carrier": "AA", "tailnum": "N1", "flight_date": date(2013, 6, 1)}
        for _ in range(MAX_QUERIES + 5)
    ]
    at = [BASE - i * 3 * MIN for i in range(len(requests))]
    fresh = FreshFeatures()

    def columns(count: int) -> dict[str, np.ndarray]:
        reads = online_fresh_reads(requests[:count], at[:count])
        return online_fresh_columns(fresh, reads, [{"watermark": BASE}], found)

    many = columns(len(requests))
    for count in (1, MAX_QUERIES):
        few = columns(count)
        for name in fresh.features:
            np.testing.assert_array_equal(few[name], many[name][:count], err_msg=name)
