"""The prediction log's sinks and its writer, without a service: what is appended reaches the
``predictions`` table once, whatever dies when (a service before sealing its segment, a writer
between its commit and its acknowledgement), on the spool and on a real Redis stream (skipped
with the reason when none is reachable; each test uses a stream of its own)."""

from __future__ import annotations

import gc
import itertools
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import redis

from inference_pipeline.log_writer import LogWriter
from inference_pipeline.prediction_sink.configured import open_sink, open_source
from inference_pipeline.prediction_sink.protocol import SinkUnavailable
from inference_pipeline.prediction_sink.records import encode_batch, prediction_rows
from inference_pipeline.prediction_sink.spool import OPEN, SEALED, TAKEN, SpoolSink, SpoolSource
from inference_pipeline.settings import InferenceSettings, PredictionLogSink
from shared.feature_store import open_feature_store
from shared.prediction_log import ONLINE_SOURCE, PREDICTIONS, LoggedPredictions
from shared.settings import FeatureStoreSettings

pytestmark = pytest.mark.integration

SHARED_REDIS = "redis://127.0.0.1:6379/0"
SCORED_AT = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)


def _batch(request_id: str, rows: int = 2) -> list[LoggedPredictions]:
    columns: dict[str, Any] = {
        "flight_date": [date(2013, 12, 31)] * rows,
        "sched_dep_time": list(range(600, 600 + rows)),
        "carrier": ["UA"] * rows,
        "dep_hour": np.arange(rows, dtype=np.float64),
    }
    return [
        LoggedPredictions(
            flight_ids=[f"20131231-UA{i}-EWR-0600" for i in range(rows)],
            columns=columns,
            window=slice(0, rows),
            features=["carrier", "dep_hour"],
            probabilities=[0.5] * rows,
            missing=[[]] * rows,
            model_version="1",
            request_id=request_id,
            scored_at=SCORED_AT,
            source=ONLINE_SOURCE,
            latency_ms=1.0,
        )
    ]


def _settings(root: Path, **values: object) -> InferenceSettings:
    base: dict[str, object] = {
        "data_root": root,
        "prediction_log_segment_s": 0.05,
        "prediction_log_commit_s": 0.05,
    }
    return InferenceSettings(_env_file=None, **(base | values))  # type: ignore[arg-type, call-arg]


def _drain(settings: InferenceSettings, **writer: Any) -> LogWriter:
    store = open_feature_store(settings.store_settings())
    source = open_source(settings)
    try:
        log_writer = LogWriter(store, source, settings)
        summary = log_writer.run(threading.Event(), drain=True, **writer)
    finally:
        source.close()
        store.close()
    assert summary.error is None, summary.error
    return log_writer


def _table(root: Path) -> pl.DataFrame:
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        return store.read(PREDICTIONS)
    finally:
        store.close()


def _assert_once_each(root: Path, request_ids: list[str], rows_each: int = 2) -> None:
    table = _table(root)
    counts = dict(table.group_by("request_id").len().iter_rows())
    assert counts == dict.fromkeys(request_ids, rows_each)
    assert table.select(pl.struct(*PREDICTIONS.primary_key, "scored_at").is_unique().all()).item()


@pytest.fixture
def stream() -> Iterator[str]:
    client = redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {SHARED_REDIS} ({exc})")
    name = f"test:prediction-log:{uuid.uuid4().hex}"
    yield name
    client.delete(name)
    client.close()


@pytest.fixture(params=["spool", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> InferenceSettings:
    if request.param == "redis":
        name = request.getfixturevalue("stream")
        return _settings(
            tmp_path, prediction_log_sink=PredictionLogSink.redis, prediction_log_stream=name
        )
    return _settings(tmp_path)


def test_appended_batches_reach_the_table_once_and_leave_the_sink(
    settings: InferenceSettings,
) -> None:
    sink = open_sink(settings)
    ids = [f"req-{i}" for i in range(25)]
    for request_id in ids:
        sink.append(encode_batch(_batch(request_id), request_id))
    sink.close()
    writer = _drain(settings)
    assert writer.summary.records == 25 and writer.summary.rows == 50
    assert writer.summary.upserts == 0  # nothing was replayed: plain appends
    _assert_once_each(settings.data_root, ids)
    again = _drain(settings)  # acknowledged: nothing is read twice
    assert again.summary.records == 0
    if settings.prediction_log_sink is PredictionLogSink.spool:
        assert not [
            p for p in settings.prediction_spool_dir.iterdir() if p.suffix in (OPEN, SEALED, TAKEN)
        ]


def test_a_writer_that_died_between_commit_and_acknowledgement_duplicates_nothing(
    settings: InferenceSettings,
) -> None:
    sink = open_sink(settings)
    ids = [f"req-{i}" for i in range(10)]
    for request_id in ids:
        sink.append(encode_batch(_batch(request_id), request_id))
    sink.close()

    store = open_feature_store(settings.store_settings())
    source = open_source(settings)
    source.ack = lambda records: (_ for _ in ()).throw(SinkUnavailable("killed"))  # type: ignore[method-assign]
    summary = LogWriter(store, source, settings).run(threading.Event(), drain=True)
    source.close()
    store.close()
    assert summary.rows == 20 and summary.error is not None  # committed, never acknowledged

    writer = _drain(settings)  # the restarted writer reads them again ...
    assert writer.summary.records == 10 and writer.summary.upserts == 1
    _assert_once_each(settings.data_root, ids)  # ... and upserts: once each


def test_a_dead_services_unsealed_segment_is_taken_over_without_its_torn_tail(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, prediction_log_segment_s=3600.0)
    sink = SpoolSink(
        settings.prediction_spool_dir, segment_bytes=1 << 30, segment_s=3600, fsync=False
    )
    sink.append(encode_batch(_batch("answered"), "1"))
    (segment,) = settings.prediction_spool_dir.glob(f"*{OPEN}")
    source = SpoolSource(settings.prediction_spool_dir)
    assert source.fetch(10, 0.0) == []  # its process holds the lock: still being written
    source.close()
    with segment.open("ab") as torn:  # a write the process never finished (no response sent)
        torn.write(b"\xff\x00\x00\x00partial")
    os.close(sink._fd)  # type: ignore[arg-type]  # the process is gone: its lock with it
    writer = _drain(settings)
    assert writer.summary.records == 1
    _assert_once_each(tmp_path, ["answered"])
    assert not segment.exists()


def test_one_writer_per_spool_folder(tmp_path: Path) -> None:
    first = SpoolSource(tmp_path / "spool")
    try:
        with pytest.raises(SinkUnavailable, match="another log writer"):
            SpoolSource(tmp_path / "spool")
    finally:
        first.close()


def test_commits_are_bounded_by_rows_and_the_table_is_compacted(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        prediction_log_commit_rows=10,
        prediction_log_compact_commits=3,
        prediction_log_vacuum_hours=None,
    )
    sink = open_sink(settings)
    ids = [f"req-{i}" for i in range(30)]
    for request_id in ids:
        sink.append(encode_batch(_batch(request_id), request_id))
    sink.close()
    writer = _drain(settings)
    assert writer.summary.commits == 6  # 60 rows, 10 a commit
    assert writer.summary.compactions == 2
    _assert_once_each(tmp_path, ids)
    rows = prediction_rows([e for i in ids for e in _batch(i)])
    assert (
        _table(tmp_path)
        .sort("request_id", "flight_id")
        .equals(rows.sort("request_id", "flight_id"))
    )


def test_one_collection_per_commit_writes_the_same_rows_and_restores_the_collector(
    tmp_path: Path,
) -> None:
    """The ``log-writer`` process's mode: automatic collection off while it runs, one full
    collection after each commit, and the collector as it was afterwards."""
    settings = _settings(tmp_path, prediction_log_commit_rows=10)
    sink = open_sink(settings)
    ids = [f"req-{i}" for i in range(30)]
    for request_id in ids:
        sink.append(encode_batch(_batch(request_id), request_id))
    sink.close()
    seen: list[tuple[bool, int]] = []

    def on_commit(_: object) -> None:  # called after the commit's collection
        seen.append((gc.isenabled(), gc.get_stats()[2]["collections"]))

    full_before = gc.get_stats()[2]["collections"]
    writer = _drain(settings, on_commit=on_commit, collect_per_commit=True)
    assert writer.summary.commits == 6
    assert [enabled for enabled, _ in seen] == [False] * 6
    collections = [full_before, *(n for _, n in seen)]
    assert all(b > a for a, b in itertools.pairwise(collections))  # one (or more) per commit
    assert gc.isenabled() and gc.get_freeze_count() == 0
    _assert_once_each(tmp_path, ids)


def test_every_worker_process_has_its_own_spool_file_and_the_writer_reads_them_all(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    workers = [open_sink(settings) for _ in range(3)]  # as `serve --workers 3` opens them
    ids = []
    for round_ in range(4):
        for number, sink in enumerate(workers):
            request_id = f"w{number}-{round_}"
            sink.append(encode_batch(_batch(request_id), request_id))
            ids.append(request_id)
    segments = {p.name for p in settings.prediction_spool_dir.glob(f"*{OPEN}")}
    assert len(segments) == 3  # one open segment per worker, never shared
    for sink in workers:
        sink.close()
    _drain(settings)
    _assert_once_each(tmp_path, ids)
