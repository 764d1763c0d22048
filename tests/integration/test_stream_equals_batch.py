"""One implementation: a day replayed through the stream writes, value for value, what the
batch run of that day writes, offline and online, and both give the same window features."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_pipeline.pipeline import run_backfill, run_schedule
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.stream.run import Replay, run_stream
from feature_pipeline.stream.settings import Broker, StreamSettings
from shared.feature_definitions import DEPARTURE_EVENTS, DEPARTURE_SCHEDULE, QUARANTINE
from shared.feature_group import FeatureGroup
from shared.feature_store import OnlineRangeLookup, open_feature_store
from shared.feature_view import local_day_start_utc
from shared.recent_departures import (
    EVENT_LOOKBACK,
    FEATURES,
    DepartureLog,
    Queries,
    Schedule,
    epoch_us,
    recent_departure_features,
)

pytestmark = [pytest.mark.integration, pytest.mark.data]

DAY = date(2013, 12, 31)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days backfilled before the day (the history both runs start from)."""
    root = tmp_path_factory.mktemp("history")
    summary = run_backfill(
        FeaturePipelineSettings(data_root=root), date(2013, 12, 28), date(2013, 12, 30)
    )
    assert summary.error is None, summary.error
    return root


@pytest.fixture(scope="module")
def batch_and_stream(
    history: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    batch = tmp_path_factory.mktemp("batch") / "root"
    streamed = tmp_path_factory.mktemp("stream") / "root"
    shutil.copytree(history, batch)
    shutil.copytree(history, streamed)
    assert run_backfill(FeaturePipelineSettings(data_root=batch), DAY, DAY).error is None
    # The schedule is known ahead of the day; the events arrive through the stream.
    assert run_schedule(FeaturePipelineSettings(data_root=streamed), DAY, DAY).error is None
    settings = StreamSettings(
        data_root=streamed,
        stream_broker=Broker.embedded,
        stream_batch=97,  # many micro-batches and several commits, at odd boundaries
        stream_commit_events=300,
        stream_commit_interval_s=20,
    )
    summary = run_stream(settings, replay=Replay(DAY, DAY, speed=None))
    assert summary.error is None and summary.quarantined == 0
    assert summary.events == 776 and summary.commits >= 3
    yield batch, streamed


def _offline(root: Path, group: FeatureGroup) -> pl.DataFrame:
    store = open_feature_store(FeaturePipelineSettings(data_root=root))
    try:
        frame = store.read(group)
    finally:
        store.close()
    return frame.sort([*group.primary_key, group.event_time])


def test_the_streamed_day_writes_the_batch_rows(batch_and_stream: tuple[Path, Path]) -> None:
    batch, streamed = batch_and_stream
    assert_frame_equal(_offline(streamed, DEPARTURE_EVENTS), _offline(batch, DEPARTURE_EVENTS))
    assert_frame_equal(_offline(streamed, DEPARTURE_SCHEDULE), _offline(batch, DEPARTURE_SCHEDULE))
    assert _offline(streamed, QUARANTINE).filter(pl.col("source") == "departures").is_empty()


def _online_day(root: Path) -> list[dict[str, object]]:
    store = open_feature_store(FeaturePipelineSettings(data_root=root))
    start, end = local_day_start_utc(DAY), local_day_start_utc(DAY + timedelta(days=1))
    lookup = OnlineRangeLookup(
        DEPARTURE_EVENTS,
        ("origin",),
        [("EWR",), ("JFK",), ("LGA",)],
        [epoch_us(start)] * 3,
        [epoch_us(end + timedelta(hours=6))] * 3,
    )
    try:
        _, [ranges] = store.get_online_rows_and_ranges([], [lookup])
    finally:
        store.close()
    return sorted((r for rows in ranges for r in rows), key=lambda r: str(r["flight_id"]))


def test_online_rows_equal(batch_and_stream: tuple[Path, Path]) -> None:
    batch, streamed = batch_and_stream
    assert _online_day(streamed) == _online_day(batch)
    day = [r for r in _online_day(batch) if str(r["flight_id"]).startswith("20131231")]
    assert len(day) == 776  # and a few of the day before, which left after midnight


def test_window_features_are_the_same_every_few_minutes(
    batch_and_stream: tuple[Path, Path],
) -> None:
    """Every NYC departure of the day, as of T every 7 minutes from the day's start: the same
    features from the streamed store as from the batch one."""
    batch, streamed = batch_and_stream
    first = local_day_start_utc(DAY)
    at = np.array([epoch_us(first + timedelta(minutes=7 * i)) for i in range(24 * 60 // 7)])
    queries = []
    for origin, carrier, tail in (
        ("EWR", "UA", "N37255"),
        ("JFK", "B6", "N566JB"),
        ("LGA", "DL", None),
    ):
        queries.append((origin, carrier, tail))
    rows = [(o, c, t, a) for o, c, t in queries for a in at]
    obj = lambda values: np.array([*values, 0], dtype=object)[:-1]  # noqa: E731
    q = Queries(
        origin=obj([r[0] for r in rows]),
        carrier=obj([r[1] for r in rows]),
        tailnum=obj([r[2] for r in rows]),
        at=np.array([r[3] for r in rows], dtype=np.int64),
        day_start=np.full(len(rows), epoch_us(first), dtype=np.int64),
    )
    got = []
    for root in (batch, streamed):
        events = _offline(root, DEPARTURE_EVENTS).filter(
            pl.col("event_at") >= first - EVENT_LOOKBACK
        )
        schedule = _offline(root, DEPARTURE_SCHEDULE)
        got.append(
            recent_departure_features(
                DepartureLog.from_frame(events),
                Schedule.from_frame(schedule),
                q,
                covered_until=epoch_us(datetime(2014, 1, 2, tzinfo=UTC)),
                tolerance=timedelta(0),
            )
        )
    for name in FEATURES:
        np.testing.assert_array_equal(got[0][name], got[1][name], err_msg=name)
    assert np.nanmax(got[0]["origin_departures_60m"]) > 10  # a busy hour was seen
