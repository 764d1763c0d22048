"""The prediction log's sinks and its writer, without a service: what is appended reaches the
``predictions`` table once, whatever dies when (a service before sealing its segment, a writer
between its commit and its acknowledgement), on the spool and on a real Redis stream (skipped
with the reason when none is reachable; each test uses a stream of its own)."""

from __future__ import annotations

import gc
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
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
from inference_pipeline.log_writer_metrics import WriterMetrics
from inference_pipeline.prediction_sink.configured import open_sink, open_source
from inference_pipeline.prediction_sink.protocol import SinkUnavailable
from inference_pipeline.prediction_sink.records import encode_batch, prediction_rows
from inference_pipeline.prediction_sink.spool import OPEN, SEALED, TAKEN, SpoolSink, SpoolSource
from inference_pipeline.settings import InferenceSettings, PredictionLogSink
from inference_pipeline.triton_server import free_loopback_port
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


def _append(settings: InferenceSettings, request_ids: list[str]) -> list[str]:
    """One two-row batch per request id, appended to the configured sink as a service would."""
    sink = open_sink(settings)
    for request_id in request_ids:
        sink.append(encode_batch(_batch(request_id), request_id))
    sink.close()
    return request_ids


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
    ids = _append(settings, [f"req-{i}" for i in range(25)])
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
    ids = _append(settings, [f"req-{i}" for i in range(10)])

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
    assert _sample(writer.metrics, "fti_log_writer_records_total", replayed="true") == 10
    assert _sample(writer.metrics, "fti_log_writer_commits_total", kind="upsert") == 1
    assert _sample(writer.metrics, "fti_log_writer_rows_total", kind="upsert") == 20


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
    ids = _append(settings, [f"req-{i}" for i in range(30)])
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
    ids = _append(settings, [f"req-{i}" for i in range(30)])
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


def _sample(metrics: WriterMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def _backlog(metrics: WriterMetrics, settings: InferenceSettings) -> float | None:
    unit = "records" if settings.prediction_log_sink is PredictionLogSink.redis else "bytes"
    return _sample(metrics, f"fti_prediction_log_backlog_{unit}")


def test_the_metrics_count_what_was_read_committed_and_left_waiting(
    settings: InferenceSettings,
) -> None:
    _append(settings, [f"req-{i}" for i in range(25)])
    store = open_feature_store(settings.store_settings())
    source = open_source(settings)
    try:
        writer = LogWriter(store, source, settings)
        metrics = writer.metrics
        backlog_before = _backlog(metrics, settings)
        if settings.prediction_log_sink is PredictionLogSink.redis:
            assert backlog_before == 25  # one stream entry per appended batch
        else:
            assert backlog_before is not None and backlog_before > 25 * 100  # segment bytes
        assert _sample(metrics, "fti_log_writer_last_commit_timestamp_seconds") == 0
        began = time.time()
        summary = writer.run(threading.Event(), drain=True)
        assert summary.error is None and summary.commits >= 1
        assert _sample(metrics, "fti_log_writer_records_total", replayed="false") == 25
        assert _sample(metrics, "fti_log_writer_rows_total", kind="append") == 50
        assert _sample(metrics, "fti_log_writer_commits_total", kind="append") == summary.commits
        assert _sample(metrics, "fti_log_writer_commit_seconds_count") == summary.commits
        assert (_sample(metrics, "fti_log_writer_last_commit_timestamp_seconds") or 0) >= began
        for gauge in ("waiting_records", "waiting_rows", "oldest_waiting_seconds"):
            assert _sample(metrics, f"fti_log_writer_{gauge}") == 0
        assert _backlog(metrics, settings) == 0  # acknowledged: gone from the sink
    finally:
        source.close()
        store.close()


def test_records_read_and_not_committed_show_as_waiting(tmp_path: Path) -> None:
    settings = _settings(tmp_path, prediction_log_commit_s=3600.0)
    sink = open_sink(settings)
    sink.append(encode_batch(_batch("waits", rows=3), "1"))
    sink.close()
    store = open_feature_store(settings.store_settings())
    source = open_source(settings)
    try:
        writer = LogWriter(store, source, settings)
        for record in source.fetch(10, 0.0):  # what the loop does before a commit is due
            writer._read(record)
        time.sleep(0.05)
        assert _sample(writer.metrics, "fti_log_writer_waiting_records") == 1
        assert _sample(writer.metrics, "fti_log_writer_waiting_rows") == 3
        assert (_sample(writer.metrics, "fti_log_writer_oldest_waiting_seconds") or 0) >= 0.05
        assert (_backlog(writer.metrics, settings) or 0) > 0  # read, not acknowledged
    finally:
        source.close()
        store.close()


def test_a_malformed_record_is_dropped_counted_and_the_rest_committed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sink = open_sink(settings)
    sink.append(encode_batch(_batch("before"), "1"))
    sink.append(b'{"format": 99}')  # another writer version's record: cannot be decoded
    sink.append(encode_batch(_batch("after"), "2"))
    sink.close()
    writer = _drain(settings)
    assert (writer.summary.records, writer.summary.malformed) == (3, 1)
    assert _sample(writer.metrics, "fti_log_writer_malformed_records_total") == 1
    _assert_once_each(tmp_path, ["before", "after"])
    assert _drain(settings).summary.records == 0  # acknowledged with the rest: not read again


def test_a_failed_commit_is_counted_and_retried(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sink = open_sink(settings)
    sink.append(encode_batch(_batch("retried"), "1"))
    sink.close()
    store = open_feature_store(settings.store_settings())
    source = open_source(settings)
    real_upsert = store.insert
    stop = threading.Event()

    def failing(group: Any, rows: pl.DataFrame) -> Any:
        raise OSError("volume gone for a moment")

    def upsert_then_stop(group: Any, rows: pl.DataFrame) -> Any:
        result = real_upsert(group, rows)
        stop.set()
        return result

    store.append = failing  # type: ignore[method-assign]  # the first try, a plain append
    store.insert = upsert_then_stop  # type: ignore[method-assign]  # its retry
    try:
        writer = LogWriter(store, source, settings)
        thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        source.close()
        store.close()
    assert _sample(writer.metrics, "fti_log_writer_failures_total", error="OSError") == 1
    # The retry may have landed already: an upsert, so the rows are there once.
    assert _sample(writer.metrics, "fti_log_writer_commits_total", kind="upsert") == 1
    _assert_once_each(tmp_path, ["retried"])


def _writer_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    return env | {
        "FTI_DATA_ROOT": str(root),
        "FTI_PREDICTION_LOG_COMMIT_S": "0.1",
        "FTI_PREDICTION_LOG_SEGMENT_S": "0.05",
        **extra,
    }


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.slow
def test_the_log_writer_process_serves_its_metrics_while_it_works(tmp_path: Path) -> None:
    port = free_loopback_port()
    env = _writer_env(tmp_path, FTI_PREDICTION_LOG_METRICS_PORT=str(port))
    log_path = tmp_path / "writer.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_pipeline", "log-writer"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        samples: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "fti_prediction_log_backlog_bytes" not in samples:
            assert process.poll() is None, log_path.read_text()
            try:
                samples = _scrape(port)
            except OSError:
                time.sleep(0.2)
        assert samples.get("fti_prediction_log_backlog_bytes") == 0, log_path.read_text()
        appended_at = time.time()
        _append(_settings(tmp_path), ["a", "b", "c"])
        # Until the commit is whole: its rows are counted when written, its time set last,
        # once the records are acknowledged; a scrape can fall in between (and reads the
        # metrics one after the other), so the figures are read from one scrape after that.
        while time.monotonic() < deadline:
            samples = _scrape(port)
            if (
                samples.get('fti_log_writer_rows_total{kind="append"}') == 6
                and samples.get("fti_log_writer_last_commit_timestamp_seconds", 0) >= appended_at
                and samples.get("fti_prediction_log_backlog_bytes") == 0
            ):
                samples = _scrape(port)
                break
            time.sleep(0.2)
        assert samples['fti_log_writer_rows_total{kind="append"}'] == 6, log_path.read_text()
        assert samples['fti_log_writer_records_total{replayed="false"}'] == 3
        assert samples["fti_log_writer_commit_seconds_count"] >= 1
        assert samples["fti_log_writer_last_commit_timestamp_seconds"] > 0
        assert samples["fti_prediction_log_backlog_bytes"] == 0
        assert not math.isnan(samples["fti_log_writer_oldest_waiting_seconds"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, log_path.read_text()
    _assert_once_each(tmp_path, ["a", "b", "c"])


def test_a_metrics_port_in_use_is_one_readable_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # where the writer binds
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "inference_pipeline", "log-writer"],
            env=_writer_env(tmp_path, FTI_PREDICTION_LOG_METRICS_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: log writer cannot serve its metrics on port")
    assert "FTI_PREDICTION_LOG_METRICS_PORT" in lines[-1]


def test_a_backlog_the_sink_cannot_give_is_nan_not_a_failed_scrape(tmp_path: Path) -> None:
    source = SpoolSource(tmp_path / "spool")
    try:
        metrics = WriterMetrics(source)
        assert metrics.registry.get_sample_value("fti_prediction_log_backlog_bytes") == 0
        (tmp_path / "spool" / ".writer.lock").unlink()
        (tmp_path / "spool").rmdir()  # the volume went away under the writer
        value = metrics.registry.get_sample_value("fti_prediction_log_backlog_bytes")
        assert value is not None and math.isnan(value)
    finally:
        source.close()
