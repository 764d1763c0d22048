"""The fresh window features of a feature view: read the departure events, compute as of T.

:mod:`shared.recent_departures` computes the features from events, a schedule and query rows;
this module is its two edges, so that training, the batch job and the online service hand it
the same events for the same T:

- offline (:func:`offline_fresh_frame`): the ``departure_events`` and ``departure_schedule``
  rows of the whole span the spine's T values need (pinned to the view's table versions), and
  the events' coverage, the newest watermark in ``stream_progress``;
- online (:func:`online_fresh_reads` then :func:`online_fresh_columns`): per request, the
  origin's events of ``[T - EVENT_LOOKBACK, T)``, the aircraft's events of ``[local midnight,
  T)``, the origin's schedule of ``[T - 120 min, T)`` and the stream's watermark, read in the
  same single round trip per store as the view's other groups.

A view without fresh features (``FeatureView.fresh is None``: every version registered before
they existed) reads none of this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl

from shared.feature_definitions import (
    DEPARTURE_EVENTS,
    DEPARTURE_SCHEDULE,
    DEPARTURES_STREAM,
    NYC_TZ,
    STREAM_PROGRESS,
)
from shared.feature_group import FeatureGroup
from shared.feature_store import FeatureStore, OnlineLookup, OnlineRangeLookup
from shared.feature_store.protocol import HeldRows, OnlineRange, OnlineRow
from shared.flight_identity import local_day_start_utc
from shared.prediction_time import PREDICTION_TIME, epoch_us, instant_of
from shared.recent_departure_rows import MAX_QUERIES as ROW_PATH_MAX_QUERIES
from shared.recent_departure_rows import recent_departure_held, recent_departure_rows
from shared.recent_departures import (
    EVENT_LOOKBACK,
    FEATURES,
    LONGEST_WINDOW,
    DepartureLog,
    Queries,
    Schedule,
    feature_frame,
    micros,
    object_array,
    objects,
    online_known_since,
    recent_departure_features,
)

# The events must be known up to T - this (the stream's watermark) for the features of T to be
# computed; else they are all missing. Replays and the stream move the watermark at least every
# 5 minutes of event time (a heartbeat in a quiet night), so a working stream is within it.
FRESH_TOLERANCE = timedelta(minutes=10)
FRESH_GROUPS: tuple[FeatureGroup, ...] = (DEPARTURE_EVENTS, DEPARTURE_SCHEDULE, STREAM_PROGRESS)
# The name ``missing_groups`` reports when every fresh feature of a flight is missing.
FRESH_GROUP_NAME = DEPARTURE_EVENTS.name

_US = timedelta(microseconds=1)
_LOOKBACK_US = EVENT_LOOKBACK // _US
_LONGEST_US = LONGEST_WINDOW // _US


@dataclass(frozen=True)
class FreshFeatures:
    """The fresh window features a view uses, and the coverage tolerance they are read with."""

    features: tuple[str, ...] = FEATURES
    tolerance: timedelta = FRESH_TOLERANCE
    groups: tuple[FeatureGroup, ...] = field(default=FRESH_GROUPS)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown fresh window features {unknown}")

    def describe(self) -> dict[str, Any]:
        return {
            "function": "shared.recent_departures.recent_departure_features",
            "groups": [{"group": g.name, "group_version": g.version} for g in self.groups],
            "features": list(self.features),
            "tolerance_s": self.tolerance.total_seconds(),
        }

    @classmethod
    def from_description(cls, data: Mapping[str, Any]) -> FreshFeatures:
        """From :meth:`describe`; a group version this code does not define is refused."""
        stored = {g["group"]: g["group_version"] for g in data["groups"]}
        known = {g.name: g.version for g in FRESH_GROUPS}
        if stored != known:
            raise ValueError(f"fresh window features read groups {stored}; this code has {known}")
        return cls(
            features=tuple(data["features"]), tolerance=timedelta(seconds=data["tolerance_s"])
        )


# -- offline: training and the batch job ------------------------------------------------------


def day_starts(flight_date: pl.Expr) -> pl.Expr:
    """Local (New York) midnight of each flight date, as a UTC instant."""
    return (
        flight_date.cast(pl.Datetime("us"))
        .dt.replace_time_zone(NYC_TZ, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
    )


def offline_fresh_frame(
    store: FeatureStore,
    fresh: FreshFeatures,
    spine: pl.DataFrame,
    *,
    versions: Mapping[str, int],
) -> pl.DataFrame:
    """The fresh features of each spine row (columns origin, carrier, tailnum, flight_date and
    :data:`PREDICTION_TIME`), in spine order, as of the row's T, from the offline tables at
    ``versions`` (a group missing from it: its current version)."""
    at = micros(spine[PREDICTION_TIME])
    day_start = micros(spine.select(day_starts(pl.col("flight_date"))).to_series())
    queries = Queries(
        origin=objects(spine["origin"]),
        carrier=objects(spine["carrier"]),
        tailnum=objects(spine["tailnum"]),
        at=at,
        day_start=day_start,
    )
    if not len(queries):
        return feature_frame({name: np.empty(0) for name in FEATURES}).select(fresh.features)
    first = int(min(at.min() - _LOOKBACK_US, day_start.min()))
    last = int(at.max())  # events and departures at or after every T never count
    events = store.read(
        DEPARTURE_EVENTS,
        instant_of(first),
        instant_of(last),
        version=versions.get(DEPARTURE_EVENTS.name),
    )
    schedule = store.read(
        DEPARTURE_SCHEDULE,
        instant_of(int(at.min()) - _LONGEST_US),
        instant_of(last),
        version=versions.get(DEPARTURE_SCHEDULE.name),
    )
    values = recent_departure_features(
        DepartureLog.from_frame(events),
        Schedule.from_frame(schedule),
        queries,
        covered_until=offline_watermark(store, versions.get(STREAM_PROGRESS.name)),
        tolerance=fresh.tolerance,
    )
    return feature_frame(values).select(fresh.features)


def offline_watermark(store: FeatureStore, version: int | None) -> int | None:
    """The newest watermark of the departure events in the offline table (epoch us; None:
    none): a batch run writes "complete up to the end of my window", the stream its
    position."""
    progress = store.read(STREAM_PROGRESS, version=version)
    marks = progress.filter(pl.col("stream") == DEPARTURES_STREAM)["watermark"]
    return None if marks.is_empty() else int(micros(marks).max())


# -- online: the request path -----------------------------------------------------------------


@lru_cache(maxsize=4096)
def _day_start_us(flight_date: date) -> int:
    return epoch_us(local_day_start_utc(flight_date))


@dataclass(frozen=True)
class FreshReads:
    """What the online path asks the store for one batch of requests: the watermark lookup
    and three range lookups (origin events, aircraft events, origin schedule), one range per
    key and run of overlapping request spans; ``queries`` are the request rows."""

    progress: OnlineLookup
    ranges: tuple[OnlineRangeLookup, ...]
    queries: Queries


def online_fresh_reads(requests: Sequence[Mapping[str, Any]], times: Sequence[int]) -> FreshReads:
    """The reads the fresh features of ``requests`` (fields origin, carrier, tailnum,
    flight_date as a date) as of ``times`` (epoch microseconds) need."""
    at = np.asarray(times, dtype=np.int64)
    day_start = np.array([_day_start_us(r["flight_date"]) for r in requests], dtype=np.int64)
    queries = Queries(
        origin=object_array([r.get("origin") for r in requests]),
        carrier=object_array([r.get("carrier") for r in requests]),
        tailnum=object_array([r.get("tailnum") for r in requests]),
        at=at,
        day_start=day_start,
    )
    origin_events: dict[Any, list[tuple[int, int]]] = {}
    tail_events: dict[Any, list[tuple[int, int]]] = {}
    origin_schedule: dict[Any, list[tuple[int, int]]] = {}
    for origin, tail, t, start in zip(
        queries.origin.tolist(), queries.tailnum.tolist(), at.tolist(), day_start.tolist(),
        strict=True,
    ):  # fmt: skip
        origin_events.setdefault(origin, []).append((t - _LOOKBACK_US, t))
        if tail is not None:
            tail_events.setdefault(tail, []).append((min(start, t), t))
        origin_schedule.setdefault(origin, []).append((t - _LONGEST_US, t))
    ranges = tuple(
        _range_lookup(group, index, spans)
        for group, index, spans in (
            (DEPARTURE_EVENTS, ("origin",), origin_events),
            (DEPARTURE_EVENTS, ("tailnum",), tail_events),
            (DEPARTURE_SCHEDULE, ("origin",), origin_schedule),
        )
    )
    return FreshReads(OnlineLookup(STREAM_PROGRESS, [(DEPARTURES_STREAM,)]), ranges, queries)


def _range_lookup(
    group: FeatureGroup, index: tuple[str, ...], spans: Mapping[Any, list[tuple[int, int]]]
) -> OnlineRangeLookup:
    """One range read per key and run of overlapping spans: a batch of requests at one airport
    over an hour reads its events once, not once per request (reading more than a request's
    own span changes none of its values: the features count only what lies in its windows,
    and a flight's latest event stands for it, as in the offline read of a whole spine)."""
    merged: list[tuple[Any, int, int]] = []  # (key, start, end)
    for key, key_spans in spans.items():
        key_spans.sort()
        start, end = key_spans[0]
        for next_start, next_end in key_spans[1:]:
            if next_start > end:
                merged.append((key, start, end))
                start = next_start
            end = max(end, next_end)
        merged.append((key, start, end))
    keys = [(key,) for key, _, _ in merged]
    starts = [start for _, start, _ in merged]
    ends = [end for _, _, end in merged]
    return OnlineRangeLookup(group, index, keys, starts, ends)


def online_fresh_rows(
    progress: Sequence[OnlineRow], found: Sequence[Sequence[OnlineRange]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """What the store answered to a batch's fresh reads as (event rows, schedule rows, the
    stream's watermark or None): the origins' and the aircraft's events together."""
    origin_events, tail_events, schedule = found
    events = [row for rows in (*origin_events, *tail_events) for row in rows]
    return events, [row for rows in schedule for row in rows], online_watermark(progress)


def online_watermark(progress: Sequence[OnlineRow]) -> int | None:
    """The stream's watermark the store answered (epoch us), or None: none yet."""
    return progress[0]["watermark"] if progress and progress[0] is not None else None


def online_fresh_known_since(watermark: int | None) -> int | None:
    """The first instant the online store surely still holds, by the stream's watermark."""
    if watermark is None:
        return None
    return online_known_since(watermark, DEPARTURE_EVENTS.online_horizon)


def online_fresh_columns(
    fresh: FreshFeatures,
    reads: FreshReads,
    progress: Sequence[OnlineRow],
    found: Sequence[Sequence[OnlineRange]],
) -> dict[str, np.ndarray]:
    """The fresh features of the requests, from what the store answered to ``reads``."""
    watermark = online_watermark(progress)
    known_since = online_fresh_known_since(watermark)
    # A request's few flights: no numpy setup; from the held rows' indexes where the store
    # has them (the rows read are then not gathered at all), else from the rows read.
    few = len(reads.queries) <= ROW_PATH_MAX_QUERIES
    values = held_fresh_values(fresh, reads, found, watermark, known_since) if few else None
    if values is not None:
        return {name: values[name] for name in fresh.features}
    events, schedule_rows, _ = online_fresh_rows(progress, found)
    if few:
        values = recent_departure_rows(
            events,
            schedule_rows,
            reads.queries,
            covered_until=watermark,
            tolerance_us=fresh.tolerance // _US,
            known_since=known_since,
        )
    if values is None:
        values = recent_departure_features(
            DepartureLog.from_rows(events),
            Schedule.from_rows(schedule_rows),
            reads.queries,
            covered_until=watermark,
            tolerance=fresh.tolerance,
            known_since=known_since,
        )
    return {name: values[name] for name in fresh.features}


def held_fresh_values(
    fresh: FreshFeatures,
    reads: FreshReads,
    found: Sequence[Sequence[OnlineRange]],
    watermark: int | None,
    known_since: int | None,
) -> dict[str, np.ndarray] | None:
    """The features from the indexes kept with the store's held rows, where it answered every
    range from memory (`HeldRows`: the SQLite store's range cache); None: it did not, or an
    index declined."""
    held: list[dict[Any, HeldRows]] = []
    for lookup, ranges in zip(reads.ranges, found, strict=True):
        by_key: dict[Any, HeldRows] = {}
        for (key,), rows in zip(lookup.keys, ranges, strict=True):
            if isinstance(rows, HeldRows):
                by_key[key] = rows
            elif rows:  # read with SQL (an empty range is not read at all)
                return None
        held.append(by_key)
    origin_events, tail_events, origin_schedule = held
    return recent_departure_held(
        origin_events,
        origin_schedule,
        tail_events,
        reads.queries,
        covered_until=watermark,
        tolerance_us=fresh.tolerance // _US,
        known_since=known_since,
    )
