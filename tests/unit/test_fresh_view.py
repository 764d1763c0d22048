"""The fresh window features in the feature view: recorded with a version, absent from versions
registered before them (which still read and score), and online = offline at T."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from inference_pipeline.model_artifact import feature_view_from_description
from shared.errors import ArtifactIntegrityError
from shared.feature_store import FeatureStore
from shared.feature_store.protocol import OnlineRangeLookup
from shared.feature_view import (
    FLIGHT_DELAY_VIEW,
    FeatureView,
    build_training_frame,
    online_feature_columns,
)
from shared.fresh_features import FRESH_GROUP_NAME, online_fresh_reads
from shared.prediction_time import PREDICTION_TIME, epoch_us
from shared.recent_departures import EVENT_LOOKBACK, FEATURES
from shared.transforms import MDTState, fit_mdt
from tests.unit.test_feature_view import DAYS, open_store, synthetic_groups

pytestmark = pytest.mark.unit

REQUEST_FIELDS = (
    "flight_date",
    "sched_dep_time",
    "carrier",
    "flight",
    "origin",
    "dest",
    "tailnum",
    "distance",
)


def without_fresh(view: FeatureView) -> FeatureView:
    """The view as versions registered before the fresh features had it."""
    return replace(view.without_fresh(), version=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeatureStore]:
    s = open_store(tmp_path, synthetic_groups(seed=3, random_times=True))
    yield s
    s.close()


def mdt_for(store: FeatureStore, view: FeatureView) -> MDTState:
    frame = build_training_frame(store, view, DAYS[0], DAYS[-1] + timedelta(days=1)).frame
    return fit_mdt(frame, view.numeric, view.categorical)


def test_the_view_records_its_fresh_features_and_is_rebuilt_with_them(
    store: FeatureStore,
) -> None:
    described = FLIGHT_DELAY_VIEW.describe()
    assert described["fresh"]["features"] == list(FEATURES)
    assert {g["group"] for g in described["fresh"]["groups"]} == {
        "departure_events",
        "departure_schedule",
        "stream_progress",
    }
    rebuilt = feature_view_from_description(described, mdt_for(store, FLIGHT_DELAY_VIEW))
    assert rebuilt.fresh == FLIGHT_DELAY_VIEW.fresh
    assert rebuilt.features == FLIGHT_DELAY_VIEW.features
    assert [g.name for g in rebuilt.groups] == [g.name for g in FLIGHT_DELAY_VIEW.groups]
    assert (FRESH_GROUP_NAME, list(FEATURES)) in rebuilt.input_groups()


def test_a_version_without_fresh_features_reads_and_scores_without_them(
    store: FeatureStore,
) -> None:
    """A v1 description (no ``fresh``) rebuilds a view that neither computes nor reads them,
    offline or online, and whose training frame has none of their columns."""
    old = without_fresh(FLIGHT_DELAY_VIEW)
    described = old.describe()
    assert "fresh" not in described
    view = feature_view_from_description(described, mdt_for(store, old))
    assert view.fresh is None and not set(FEATURES) & set(view.features)
    assert "departure_events" not in {g.name for g in view.groups}
    frame = build_training_frame(store, view, DAYS[0], DAYS[-1] + timedelta(days=1)).frame
    assert not set(FEATURES) & set(frame.columns)
    requests, times = as_requests(frame)
    online = online_feature_columns(RefusingRanges(store), view, requests, times)
    assert not set(FEATURES) & set(online.columns)


def test_a_description_of_other_fresh_groups_is_refused(store: FeatureStore) -> None:
    described = FLIGHT_DELAY_VIEW.describe()
    described["fresh"]["groups"][0]["group_version"] = 99
    with pytest.raises(ArtifactIntegrityError, match="fresh features"):
        feature_view_from_description(described, mdt_for(store, FLIGHT_DELAY_VIEW))


@pytest.mark.parametrize("lead", [0, 15, 60, 120])
def test_online_at_t_equals_the_training_frame(store: FeatureStore, lead: int) -> None:
    """The online store the synthetic groups were written to (no materialization: the same
    rows, written online directly), read at each row's T, gives the training frame's values."""
    for group in FLIGHT_DELAY_VIEW.groups:
        if group.online:
            store.write_online(group, store.read(group))
    view = FLIGHT_DELAY_VIEW.with_lead(lead)
    frame = build_training_frame(store, view, DAYS[0], DAYS[-1] + timedelta(days=1)).frame
    requests, times = as_requests(frame)
    online = online_feature_columns(store, view, requests, times)
    for name in FEATURES:
        offline = frame[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
        got = np.asarray(online.columns[name], dtype=np.float64)
        np.testing.assert_allclose(got, offline, rtol=0, atol=1e-5, err_msg=name)
    # and one request at a time (each its own reads) gives the same
    for i in range(len(requests)):
        one = online_feature_columns(store, view, requests[i : i + 1], times[i : i + 1])
        for name in FEATURES:
            np.testing.assert_allclose(
                np.asarray(one.columns[name], dtype=np.float64),
                np.asarray(online.columns[name][i : i + 1], dtype=np.float64),
                rtol=0,
                atol=1e-5,
                err_msg=name,
            )


def as_requests(frame: pl.DataFrame) -> tuple[list[dict[str, Any]], list[int]]:
    requests = frame.select(REQUEST_FIELDS).to_dicts()
    return requests, [epoch_us(t) for t in frame[PREDICTION_TIME]]


class RefusingRanges:
    """A store whose event-range reads fail: a view without fresh features must not use them."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store

    def get_online_rows(self, lookups: Any) -> Any:
        return self._store.get_online_rows(lookups)

    def get_online_rows_and_ranges(self, lookups: Any, ranges: Any) -> Any:
        raise AssertionError("a view without fresh features read event ranges")


def test_overlapping_request_spans_are_read_once_per_key_and_run() -> None:
    """A batch at one airport within an hour reads its events in one range per key: what a
    100-flight request costs the store grows with its airports and aircraft, not its flights
    (the values are those of one request at a time: see the test above)."""
    minute = 60_000_000
    day = date(2013, 12, 31)
    t0 = epoch_us(datetime(2013, 12, 31, 15, tzinfo=UTC))
    requests = [
        {"origin": "EWR", "carrier": "UA", "tailnum": "N1", "flight_date": day},
        {"origin": "EWR", "carrier": "UA", "tailnum": "N2", "flight_date": day},
        {"origin": "EWR", "carrier": "AA", "tailnum": "N1", "flight_date": day},
        {"origin": "JFK", "carrier": "B6", "tailnum": None, "flight_date": day},
        {"origin": "EWR", "carrier": "UA", "tailnum": "N3", "flight_date": day},
    ]
    # the last EWR request is 8 hours later: beyond every window of the others
    times = [t0, t0 + 10 * minute, t0 + 40 * minute, t0, t0 + 480 * minute]
    reads = online_fresh_reads(requests, times)
    origin_events, tail_events, schedule = reads.ranges
    lookback = EVENT_LOOKBACK // timedelta(microseconds=1)
    assert spans(origin_events) == [
        (("EWR",), t0 - lookback, t0 + 40 * minute),
        (("EWR",), t0 + 480 * minute - lookback, t0 + 480 * minute),
        (("JFK",), t0 - lookback, t0),
    ]
    midnight = epoch_us(datetime(2013, 12, 31, 5, tzinfo=UTC))  # New York midnight in UTC
    assert spans(tail_events) == [
        (("N1",), midnight, t0 + 40 * minute),
        (("N2",), midnight, t0 + 10 * minute),
        (("N3",), midnight, t0 + 480 * minute),
    ]
    assert [k for (k,) in schedule.keys] == ["EWR", "EWR", "JFK"]


def spans(lookup: OnlineRangeLookup) -> list[tuple[tuple[Any, ...], int, int]]:
    return list(zip(lookup.keys, lookup.start_us, lookup.end_us, strict=True))
