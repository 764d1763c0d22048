"""The stream over a real Redis (consumer groups): at-least-once delivery, exactly-once in effect.

Each test uses its own stream key (and data root); the broker-restart test runs its own
redis-server (append-only file in a temporary folder) on a free port, never the shared one.
Consumers run as `python -m feature_pipeline stream` processes, killed as an operator's
machine would kill them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import redis

from feature_pipeline.features.departures import departure_event_rows
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.stream.messages import decode
from feature_pipeline.stream.redis_streams import RedisStreamPublisher
from feature_pipeline.stream.run import Replay
from feature_pipeline.stream.settings import StreamSettings
from shared.feature_definitions import DEPARTURE_EVENTS, QUARANTINE
from shared.feature_store import open_feature_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHARED_REDIS = "redis://127.0.0.1:6379/0"
DAY = date(2013, 12, 31)
MESSAGES = 900  # the first 900 messages of the day (events and heartbeats)


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    pacer = Replay(DAY, DAY, speed=None, max_events=MESSAGES).pacer(StreamSettings())
    return [m.payload for m in pacer.due(MESSAGES)]


@pytest.fixture(scope="module")
def expected(payloads: list[bytes]) -> pl.DataFrame:
    """What the stores must end up holding: the events of those messages, once each."""
    rows, broken = departure_event_rows(decode(payloads).events)
    assert broken.is_empty()
    return rows.sort("flight_id")


def _shared_redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {SHARED_REDIS} ({exc})")
    return client


@pytest.fixture
def stream_key() -> Iterator[str]:
    client = _shared_redis_or_skip()
    key = f"test:departures:{uuid.uuid4().hex}"
    yield key
    client.delete(key)
    client.close()


def _env(url: str, key: str, root: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FTI_STREAM_URL": url,
        "FTI_STREAM_KEY": key,
        "FTI_DATA_ROOT": str(root),
        "FTI_STREAM_BATCH": "50",
        "FTI_STREAM_COMMIT_EVENTS": "150",
        "FTI_STREAM_COMMIT_INTERVAL_S": "20",
    }
    return env | extra


class Consumer:
    """One `stream` process (a group member), its output kept in a log file."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feature_pipeline",
                "stream",
                "--consumer",
                name,
                "--log-level",
                "info",
            ],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._out.close()

    def stop(self) -> int:
        """SIGTERM: what was fetched is committed and acknowledged, then it exits."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self._out.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _group(client: redis.Redis, key: str) -> dict[str, int]:
    """The group's delivered-but-unacked (pending) and not-yet-delivered (lag) entries."""
    info = client.xinfo_groups(key)
    if not info:
        return {"pending": 0, "lag": 1, "read": 0}
    group = info[0]
    return {
        "pending": int(group["pending"]),
        "lag": int(group["lag"] or 0),
        "read": int(group["entries-read"] or 0),
    }


def _wait(
    condition: Callable[[], bool],
    what: str,
    timeout_s: float = 240.0,
    *consumers: Consumer,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.log.name}:\n{c.output()[-3000:]}" for c in consumers)
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.1)


def _stored(root: Path) -> tuple[pl.DataFrame, int, pl.DataFrame]:
    """Offline events, online event rows, offline quarantine."""
    store = open_feature_store(FeaturePipelineSettings(data_root=root))
    try:
        events = store.read(DEPARTURE_EVENTS).sort("flight_id")
        online = store.online.row_count(DEPARTURE_EVENTS)  # type: ignore[attr-defined]
        quarantine = (
            store.read(QUARANTINE)
            if store.table_version(QUARANTINE) is not None
            else pl.DataFrame()
        )
    finally:
        store.close()
    return events, online, quarantine


def _all_done(client: redis.Redis, key: str, total: int) -> Callable[[], bool]:
    """Every entry of the stream (at least ``total``) delivered to the group and acknowledged.

    Read off the ids, not the group's ``entries-read`` counter: after a broker restart Redis may
    report that counter as unknown (nil) for good, and the wait timed out with everything done
    (seen in CI)."""

    def done() -> bool:
        groups = client.xinfo_groups(key)
        if not groups:
            return False
        stream = client.xinfo_stream(key)
        group = groups[0]
        return (
            int(stream["length"]) >= total
            and int(group["pending"]) == 0
            and group["last-delivered-id"] == stream["last-generated-id"]
        )

    return done


def test_a_consumer_killed_mid_stream_resumes_and_the_stores_equal_an_uninterrupted_run(
    tmp_path: Path, payloads: list[bytes], expected: pl.DataFrame, stream_key: str
) -> None:
    client = _shared_redis_or_skip()
    RedisStreamPublisher(SHARED_REDIS, stream_key).publish(payloads)
    env = _env(SHARED_REDIS, stream_key, tmp_path / "data")
    first = Consumer("member-1", env, tmp_path / "consumer.log")
    # Killed once some entries are committed and acknowledged and others fetched but not.
    _wait(
        lambda: (
            _group(client, stream_key)["read"] >= 300 and _group(client, stream_key)["pending"] > 0
        ),
        "a consumer with acknowledged and pending entries",
        240.0,
        first,
    )
    first.kill()
    before = _group(client, stream_key)
    assert before["pending"] > 0  # delivered, never acknowledged: must come again
    second = Consumer("member-1", env, tmp_path / "consumer.log")  # the same member restarts
    _wait(
        _all_done(client, stream_key, len(payloads)),
        "every entry consumed and acknowledged",
        240.0,
        second,
    )
    assert second.stop() == 0, second.output()
    events, online, _ = _stored(tmp_path / "data")
    assert events.equals(expected)  # nothing lost, nothing doubled
    assert online == expected.height  # each event once online too


def test_a_malformed_event_is_quarantined_with_its_reason_and_the_stream_goes_on(
    tmp_path: Path, payloads: list[bytes], expected: pl.DataFrame, stream_key: str
) -> None:
    client = _shared_redis_or_skip()
    bad = [
        b"not json at all",
        b'{"type": "departure", "flight_id": "x", "origin": "BOS", "carrier": "UA",'
        b' "sched_dep": "2013-12-31T12:00:00Z", "actual_dep": "2013-12-31T12:05:00Z",'
        b' "dep_delay": 9.0}',
        b'{"type": "departure", "flight_id": "y", "origin": "EWR", "carrier": "UA",'
        b' "sched_dep": "yesterday", "dep_delay": 1.0}',
    ]
    mixed = [*payloads[:300], *bad, *payloads[300:]]
    RedisStreamPublisher(SHARED_REDIS, stream_key).publish(mixed)
    consumer = Consumer(
        "member-1", _env(SHARED_REDIS, stream_key, tmp_path / "data"), tmp_path / "c.log"
    )
    _wait(
        _all_done(client, stream_key, len(mixed)),
        "every entry consumed and acknowledged",
        240.0,
        consumer,
    )
    assert consumer.stop() == 3, consumer.output()  # partial: written, some quarantined
    events, _, quarantine = _stored(tmp_path / "data")
    assert events.equals(expected)  # the events after the bad ones are there too
    reasons = dict(
        quarantine.filter(pl.col("source") == "departures").select("raw", "rules").iter_rows()
    )
    assert reasons["not json at all"].startswith("unreadable")
    assert "origin: not a NYC origin" in reasons[bad[1].decode()]
    assert "dep_delay: disagrees" in reasons[bad[1].decode()]
    assert "sched_dep: missing or not an instant" in reasons[bad[2].decode()]
    assert "quarantined message" in consumer.output()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of this test's own, with an append-only file that survives restarts."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        _wait(lambda: _pings(client), "the test's redis-server", timeout_s=30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_the_consumer_waits_for_a_restarted_broker_and_resumes(
    tmp_path: Path, payloads: list[bytes], expected: pl.DataFrame
) -> None:
    broker = OwnRedis(tmp_path / "redis")
    broker.start()
    try:
        client = redis.Redis.from_url(broker.url)
        key = "departures"
        half = len(payloads) // 2
        RedisStreamPublisher(broker.url, key).publish(payloads[:half])
        consumer = Consumer(
            "member-1", _env(broker.url, key, tmp_path / "data"), tmp_path / "c.log"
        )
        _wait(
            lambda: _group(client, key)["read"] >= half // 2,
            "the consumer under way",
            240.0,
            consumer,
        )
        broker.kill()  # mid-stream: some entries pending, the consumer polling
        time.sleep(2.0)
        broker.start()  # the append-only file brings the stream and the group back
        RedisStreamPublisher(broker.url, key).publish(payloads[half:])
        _wait(
            _all_done(client, key, len(payloads)),
            "every entry consumed after the restart",
            240.0,
            consumer,
        )
        assert consumer.stop() == 0, consumer.output()
        output = consumer.output()
        assert "unavailable" in output and "back after" in output
        events, online, _ = _stored(tmp_path / "data")
        assert events.equals(expected)
        assert online == expected.height
    finally:
        broker.kill()


def test_replicas_share_the_load_and_a_dead_members_entries_are_claimed(
    tmp_path: Path, payloads: list[bytes], expected: pl.DataFrame, stream_key: str
) -> None:
    client = _shared_redis_or_skip()
    env = _env(
        SHARED_REDIS,
        stream_key,
        tmp_path / "data",
        # Entries wait up to 8 s for their commit (so a killed member surely holds some), and
        # are claimed once idle 10 s.
        FTI_STREAM_COMMIT_INTERVAL_S="8",
        FTI_STREAM_COMMIT_EVENTS="100000",
        FTI_STREAM_CLAIM_IDLE_S="10",
    )
    members = {
        "member-a": Consumer("member-a", env, tmp_path / "a.log"),
        "member-b": Consumer("member-b", env, tmp_path / "b.log"),
    }

    def pending() -> dict[str, int]:
        try:
            found = client.xinfo_consumers(stream_key, "feature-pipeline")
        except redis.ResponseError:  # no group yet: the members are still starting
            return {}
        return {c["name"].decode(): int(c["pending"]) for c in found}

    # Both members read from the group before anything is published, so both get entries.
    _wait(lambda: len(pending()) == 2, "both members in the group", 240.0, *members.values())
    RedisStreamPublisher(SHARED_REDIS, stream_key).publish(payloads)
    _wait(
        lambda: any(pending().values()),
        "a member holding pending entries",
        240.0,
        *members.values(),
    )
    doomed = max(pending().items(), key=lambda item: item[1])[0]
    members[doomed].kill()  # dead with entries delivered to it and never acknowledged
    survivor = members["member-b" if doomed == "member-a" else "member-a"]
    _wait(
        _all_done(client, stream_key, len(payloads)),
        "the survivor finishing, the dead member's entries too",
        240.0,
        *members.values(),
    )
    assert survivor.stop() == 0, survivor.output()
    assert "claimed" in survivor.output()
    events, online, _ = _stored(tmp_path / "data")
    assert events.equals(expected)
    assert online == expected.height
