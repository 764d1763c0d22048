"""The stream consumer's Prometheus metrics, over a real Redis (skipped with the reason when
none is reachable; each test uses a stream of its own): what a consumer read, wrote, committed
and acknowledged, what waits for its commit, its group's lag and pending as Redis reports them,
NaN while Redis cannot be reached, and a real `stream` process scraped over HTTP."""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from feature_pipeline.features.departures import departure_event_rows
from feature_pipeline.stream.messages import decode
from feature_pipeline.stream.metrics import StreamMetrics
from feature_pipeline.stream.redis_streams import (
    RedisGroupProbe,
    RedisStreamPublisher,
    RedisStreamSource,
)
from feature_pipeline.stream.run import Replay, run_stream, stream_metrics
from feature_pipeline.stream.settings import Broker, StreamSettings
from shared.errors import BrokerUnavailable, StoreUnavailable
from tests.integration import test_stream_redis
from tests.integration.test_stream_redis import (
    ROOT,
    SHARED_REDIS,
    Consumer,
    _env,
    _free_port,
    _shared_redis_or_skip,
    _wait,
)

pytestmark = pytest.mark.integration

# The fixture: a stream key of the test's own on the shared Redis (skipped without one).
stream_key = test_stream_redis.stream_key

DAY = date(2013, 12, 31)
MESSAGES = 240  # the day's first messages: events and heartbeats
MALFORMED = b"not json at all"
GROUP = "feature-pipeline"  # StreamSettings' default group


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    """The day's first messages, then one that cannot be read (quarantined)."""
    pacer = Replay(DAY, DAY, speed=None, max_events=MESSAGES).pacer(StreamSettings())
    return [*(m.payload for m in pacer.due(MESSAGES)), MALFORMED]


def _expected(payloads: list[bytes]) -> tuple[int, int, float]:
    """Valid events, heartbeats, and the watermark (Unix seconds) of ``payloads``."""
    decoded = decode(payloads)
    rows, broken = departure_event_rows(decoded.events)
    latest = rows["event_at"].max()
    assert broken.is_empty() and isinstance(latest, datetime) and decoded.heartbeat is not None
    heartbeats = len(payloads) - decoded.events.height - len(decoded.unreadable)
    return rows.height, heartbeats, max(latest, decoded.heartbeat).timestamp()


def _settings(root: Path, key: str, **extra: Any) -> StreamSettings:
    return StreamSettings(
        data_root=root, stream_url=SHARED_REDIS, stream_key=key, stream_batch=50, **extra
    )


def _sample(metrics: StreamMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def _consume_all(
    settings: StreamSettings,
    metrics: StreamMetrics,
    total: int,
    at_the_end: list[dict[str, float | None]] | None = None,
) -> Any:
    """Run the consumer until it has read ``total`` messages, then stop it (it commits and
    acknowledges what waits); ``at_the_end`` gets the waiting gauges read just before."""
    stop = threading.Event()

    def read_all(summary: Any) -> None:
        if summary.messages >= total:
            if at_the_end is not None:
                names = ("waiting_events", "oldest_waiting_seconds", "group_pending", "group_lag")
                at_the_end.append({n: _sample(metrics, f"fti_stream_{n}") for n in names})
            stop.set()

    return run_stream(settings, stop=stop, on_batch=read_all, metrics=metrics)


def test_the_metrics_count_what_was_read_committed_and_acknowledged(
    tmp_path: Path, payloads: list[bytes], stream_key: str
) -> None:
    client = _shared_redis_or_skip()
    RedisStreamPublisher(SHARED_REDIS, stream_key).publish(payloads)
    client.xgroup_create(stream_key, GROUP, id="0")  # what the consumer would create at start
    settings = _settings(tmp_path, stream_key, stream_commit_events=100)
    metrics = stream_metrics(settings)
    try:
        assert _sample(metrics, "fti_stream_group_lag") == len(payloads)  # none delivered yet
        assert _sample(metrics, "fti_stream_group_pending") == 0
        assert _sample(metrics, "fti_stream_last_commit_timestamp_seconds") == 0
        began = time.time()
        summary = _consume_all(settings, metrics, len(payloads))
        assert summary.error is None and summary.commits >= 2  # 100 events a commit at most
        events, heartbeats, watermark = _expected(payloads[:-1])
        assert _sample(metrics, "fti_stream_messages_total", kind="event") == events
        assert _sample(metrics, "fti_stream_messages_total", kind="heartbeat") == heartbeats
        assert _sample(metrics, "fti_stream_messages_total", kind="quarantined") == 1
        assert events + heartbeats + 1 == len(payloads) == summary.messages
        assert _sample(metrics, "fti_stream_micro_batches_total") == summary.micro_batches >= 5
        # Every micro-batch of 50 holds events: each upserted online, and timed.
        assert _sample(metrics, "fti_stream_online_upsert_seconds_count") == summary.micro_batches
        assert _sample(metrics, "fti_stream_offline_commits_total") == summary.commits
        assert _sample(metrics, "fti_stream_offline_commit_seconds_count") == summary.commits
        assert _sample(metrics, "fti_stream_acknowledged_messages_total") == len(payloads)
        assert (_sample(metrics, "fti_stream_last_commit_timestamp_seconds") or 0) >= began
        assert _sample(metrics, "fti_stream_watermark_timestamp_seconds") == watermark
        assert _sample(metrics, "fti_stream_waiting_events") == 0
        assert _sample(metrics, "fti_stream_oldest_waiting_seconds") == 0
        assert _sample(metrics, "fti_stream_group_lag") == 0
        assert _sample(metrics, "fti_stream_group_pending") == 0  # all acknowledged
        assert _sample(metrics, "fti_stream_failures_total", error="ConnectionError") is None
    finally:
        metrics.close()


def test_what_waits_for_its_commit_is_shown_until_it_is_committed(
    tmp_path: Path, payloads: list[bytes], stream_key: str
) -> None:
    _shared_redis_or_skip()
    RedisStreamPublisher(SHARED_REDIS, stream_key).publish(payloads)
    # No commit is due before the consumer stops: everything read waits for it.
    settings = _settings(
        tmp_path,
        stream_key,
        stream_commit_interval_s=3600,
        stream_claim_idle_s=7200,
        stream_commit_events=1_000_000,
    )
    metrics = stream_metrics(settings)
    seen: list[dict[str, float | None]] = []
    try:
        summary = _consume_all(settings, metrics, len(payloads), at_the_end=seen)
        assert summary.error is None and summary.commits == 1  # the one on stopping
        events, _, _ = _expected(payloads[:-1])
        [waiting] = seen
        assert waiting["waiting_events"] == events
        assert (waiting["oldest_waiting_seconds"] or 0) > 0
        assert waiting["group_pending"] == len(payloads)  # delivered, not acknowledged
        assert waiting["group_lag"] == 0  # every entry delivered
        assert _sample(metrics, "fti_stream_waiting_events") == 0
        assert _sample(metrics, "fti_stream_group_pending") == 0
    finally:
        metrics.close()


def test_the_group_gauges_are_nan_while_redis_cannot_be_reached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = StreamMetrics(RedisGroupProbe(f"redis://127.0.0.1:{_free_port()}/0", "s", GROUP))
    try:
        with caplog.at_level(logging.WARNING, logger="feature_pipeline.stream.metrics"):
            began = time.monotonic()
            lag = _sample(metrics, "fti_stream_group_lag")
            pending = _sample(metrics, "fti_stream_group_pending")
        assert lag is not None and math.isnan(lag)
        assert pending is not None and math.isnan(pending)
        assert time.monotonic() - began < 5  # the probe's short timeouts
        assert "consumer group lag unknown" in caplog.text
        assert _sample(metrics, "fti_stream_micro_batches_total") == 0  # the rest still served
    finally:
        metrics.close()


def test_the_embedded_broker_has_no_group_gauges(tmp_path: Path) -> None:
    metrics = stream_metrics(StreamSettings(data_root=tmp_path, stream_broker=Broker.embedded))
    names = {family.name for family in metrics.registry.collect()}
    assert "fti_stream_messages" in names
    assert not {"fti_stream_group_lag", "fti_stream_group_pending"} & names


def test_a_failed_broker_call_and_a_failed_commit_are_counted(tmp_path: Path) -> None:
    metrics = StreamMetrics()
    stopping = threading.Event()
    stopping.set()  # no waiting for the broker: the first failed try gives up
    with pytest.raises(BrokerUnavailable):
        RedisStreamSource(
            f"redis://127.0.0.1:{_free_port()}/0",
            "s",
            GROUP,
            "m",
            stop=stopping,
            on_failure=metrics.failed,
        )
    assert _sample(metrics, "fti_stream_failures_total", error="ConnectionError") == 1

    def refuse(*_: object) -> None:
        raise StoreUnavailable("the volume went away")

    # Micro-batches of 10, a commit due after the first: it fails while the loop goes on.
    settings = StreamSettings(
        data_root=tmp_path, stream_broker=Broker.embedded, stream_batch=10, stream_commit_events=1
    )
    replay = Replay(DAY, DAY, speed=None, max_events=MESSAGES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("shared.feature_store.local.LocalFeatureStore.insert", refuse)
        summary = run_stream(settings, replay=replay, metrics=metrics)
    assert summary.error == "the volume went away"
    # Raised in the committer's thread, then again in the loop's: counted once.
    assert _sample(metrics, "fti_stream_failures_total", error="StoreUnavailable") == 1
    assert _sample(metrics, "fti_stream_offline_commits_total") == 0
    assert (_sample(metrics, "fti_stream_waiting_events") or 0) > 0  # never committed


def _scrape(port: int) -> dict[str, float]:
    """``/metrics`` as {sample name with its labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_the_stream_process_serves_its_metrics_while_it_consumes(
    tmp_path: Path, payloads: list[bytes], stream_key: str
) -> None:
    _shared_redis_or_skip()
    port = _free_port()
    env = _env(
        SHARED_REDIS,
        stream_key,
        tmp_path / "data",
        FTI_STREAM_METRICS_PORT=str(port),
        FTI_STREAM_COMMIT_INTERVAL_S="1",
    )
    consumer = Consumer("member-1", env, tmp_path / "c.log")
    samples: dict[str, float] = {}

    def scraped(condition: str, value: float) -> bool:
        nonlocal samples
        assert consumer.process.poll() is None, consumer.output()
        try:
            samples = _scrape(port)
        except OSError:
            return False
        return samples.get(condition) == value

    # Up, its group created (lag 0 of an empty stream), nothing read yet.
    _wait(lambda: scraped("fti_stream_group_lag", 0), "metrics served", 120.0, consumer)
    assert samples["fti_stream_micro_batches_total"] == 0
    RedisStreamPublisher(SHARED_REDIS, stream_key).publish(payloads)
    _wait(
        lambda: (
            scraped("fti_stream_acknowledged_messages_total", len(payloads))
            and samples.get("fti_stream_last_commit_timestamp_seconds", 0) > 0
        ),
        "every message acknowledged",
        240.0,
        consumer,
    )
    # The commit is whole (its time is set last); a scrape reads the metrics one after the
    # other and could have fallen in the middle of it, so the figures come from one more.
    samples = _scrape(port)
    events, heartbeats, watermark = _expected(payloads[:-1])
    assert samples['fti_stream_messages_total{kind="event"}'] == events
    assert samples['fti_stream_messages_total{kind="heartbeat"}'] == heartbeats
    assert samples['fti_stream_messages_total{kind="quarantined"}'] == 1
    assert samples["fti_stream_offline_commits_total"] >= 1
    assert samples["fti_stream_last_commit_timestamp_seconds"] > 0
    assert samples["fti_stream_watermark_timestamp_seconds"] == watermark
    assert samples["fti_stream_waiting_events"] == 0
    assert samples["fti_stream_group_lag"] == 0
    assert samples["fti_stream_group_pending"] == 0
    assert consumer.stop() == 3, consumer.output()  # partial: one message quarantined


def test_a_metrics_port_in_use_is_one_readable_line_and_nothing_is_consumed(
    tmp_path: Path, stream_key: str
) -> None:
    client = _shared_redis_or_skip()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # where the consumer binds
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "feature_pipeline", "stream", "--consumer", "member-1"],
            env=_env(SHARED_REDIS, stream_key, tmp_path, FTI_STREAM_METRICS_PORT=str(port)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: stream cannot serve its metrics on port {port}")
    assert "FTI_STREAM_METRICS_PORT" in lines[-1]
    assert not client.exists(stream_key)  # never joined the group (that creates the stream)
