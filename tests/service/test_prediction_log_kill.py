"""Nothing answered is lost from the prediction log: the service and the log writer run as the
real processes (``serve``, ``log-writer``), clients send requests from several threads, and one
of the two is SIGKILLed under that load (and restarted). Every prediction a client got a 200
for is then in the ``predictions`` table exactly once. On the spool (the default) and on a Redis
stream of the test's own (skipped with the reason when no Redis is reachable)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
import redis

from shared.feature_store import open_feature_store
from shared.prediction_log import PREDICTIONS
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    ServiceProcess,
    SharedTriton,
    start_log_writer,
    start_service,
)
from tests.service.test_online_service import UA_1545

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

SHARED_REDIS = "redis://127.0.0.1:6379/0"
CLIENTS = 4
WRITER_ENV = {
    "FTI_PREDICTION_LOG_COMMIT_S": "0.2",  # many commits: a kill lands between some
    "FTI_PREDICTION_LOG_COMPACT_COMMITS": "5",
}


class Load:
    """Client threads sending 1-3 flight requests, each with its own request id, and keeping
    the ids and flight counts of the requests answered 200."""

    def __init__(self, url: str, tag: str) -> None:
        self.url, self.tag = url, tag
        self.answered: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for sent in range(1_000_000):
                if self._stop.is_set():
                    return
                request_id = f"{self.tag}-{number}-{sent}"
                flights = [{**UA_1545, "flight": 1545 + i} for i in range(1 + sent % 3)]
                try:
                    response = client.post(
                        "/v1/predictions",
                        json={"flights": flights},
                        headers={"X-Request-ID": request_id},
                    )
                except httpx.HTTPError:  # the service was killed: wait for the test to stop us
                    self._stop.wait(0.05)
                    continue
                if response.status_code == 200:
                    with self._lock:
                        self.answered[request_id] = len(response.json()["predictions"])

    def wait_for(self, count: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"only {len(self.answered)} requests answered"
            time.sleep(0.1)


@pytest.fixture(params=["spool", "redis"])
def sink_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "spool":
        yield {"FTI_PREDICTION_LOG_SEGMENT_S": "0.2"}
        return
    client = redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {SHARED_REDIS} ({exc})")
    stream = f"test:prediction-log:{uuid.uuid4().hex}"
    yield {
        "FTI_PREDICTION_LOG_SINK": "redis",
        "FTI_PREDICTION_LOG_STREAM": stream,
        "FTI_REDIS_URL": SHARED_REDIS,
    }
    client.delete(stream)
    client.close()


def _external_triton(triton: SharedTriton, tmp: Path) -> dict[str, str]:
    return {
        "FTI_TRITON_MODE": "external",
        "FTI_TRITON_URL": triton.url,
        "FTI_TRITON_GRPC_URL": triton.grpc_url or "",
        "FTI_TRITON_MODEL_REPOSITORY": str(triton.repository),
        "FTI_TRITON_RUNTIME_DIR": str(tmp / "serving"),
    }


def _logged(root: Path, tag: str) -> pl.DataFrame:
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        if store.table_version(PREDICTIONS) is None:
            return pl.DataFrame(schema=PREDICTIONS.polars_schema)
        return store.read(PREDICTIONS).filter(pl.col("request_id").str.starts_with(tag))
    finally:
        store.close()


def _assert_each_answered_prediction_once(
    root: Path, tag: str, answered: dict[str, int], writer: ServiceProcess
) -> None:
    """Waits (the running writer commits) until every answered request's rows are in."""
    deadline = time.monotonic() + 120
    while True:
        rows = _logged(root, tag)
        counts = dict(rows.group_by("request_id").len().iter_rows())
        if all(counts.get(r) == n for r, n in answered.items()):
            break
        if time.monotonic() > deadline:
            missing = {r: (n, counts.get(r)) for r, n in answered.items() if counts.get(r) != n}
            raise AssertionError(f"{len(missing)} answered requests not logged: {missing}")
        time.sleep(0.5)
    keys = [*PREDICTIONS.primary_key, PREDICTIONS.event_time]
    assert rows.select(pl.struct(keys).is_unique().all()).item(), "a prediction logged twice"
    assert all(counts[r] == n for r, n in answered.items())
    # A request whose client saw the kill (no response) may be logged, but once as well.
    assert all(n <= 3 for n in counts.values()), writer.log()


def test_service_killed_under_load_loses_no_answered_prediction(
    copy_root: Path, triton: SharedTriton, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    env = sink_env | _external_triton(triton, tmp_path)
    tag = f"kill-service-{uuid.uuid4().hex[:8]}"
    writer = start_log_writer(copy_root, tmp_path / "writer.log", **env, **WRITER_ENV)
    services = [start_service(copy_root, tmp_path / "service-1.log", **env)]
    try:
        with Load(services[0].url, tag) as load:
            load.wait_for(60)
            services[0].process.kill()  # SIGKILL: no shutdown, its open segment unsealed
            services[0].process.wait()
        answered = dict(load.answered)
        assert services[0].process.returncode == -9
        services.append(start_service(copy_root, tmp_path / "service-2.log", **env))
        with Load(services[1].url, f"{tag}-after") as after:
            after.wait_for(20)
        answered |= after.answered
        services[1].stop()  # gracefully: its last segment sealed
        _assert_each_answered_prediction_once(copy_root, tag, answered, writer)
    finally:
        for service in services:
            service.stop()
        writer.stop()
    assert writer.process.returncode == 0, writer.log()


def test_writer_killed_under_load_loses_and_duplicates_nothing(
    copy_root: Path, triton: SharedTriton, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    env = sink_env | _external_triton(triton, tmp_path)
    tag = f"kill-writer-{uuid.uuid4().hex[:8]}"
    service = start_service(copy_root, tmp_path / "service.log", **env)
    writers = [start_log_writer(copy_root, tmp_path / "writer-0.log", **env, **WRITER_ENV)]
    try:
        with Load(service.url, tag) as load:
            for round_ in (1, 2):
                load.wait_for(50 * round_)
                writers[-1].process.kill()  # SIGKILL, mid-commit or between commit and ack
                writers[-1].process.wait()
                log_path = tmp_path / f"writer-{round_}.log"
                writers.append(start_log_writer(copy_root, log_path, **env, **WRITER_ENV))
            load.wait_for(150)
        service.stop()  # gracefully: its last segment sealed
        _assert_each_answered_prediction_once(copy_root, tag, load.answered, writers[-1])
    finally:
        service.stop()
        for writer in writers:
            writer.stop()
    assert writers[-1].process.returncode == 0, writers[-1].log()
