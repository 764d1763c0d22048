"""Failures, with real processes: Triton killed under traffic -> 503 naming it within the timeout,
then recovery by itself after a restart on the same ports; the Redis online store killed ->
503 naming the feature store, then recovery, and the same for a broken SQLite store; a
corrupted artifact refused at load."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from inference_pipeline.model_artifact import load_serving_model
from inference_pipeline.service import create_app
from inference_pipeline.triton_server import (
    TritonEndpoints,
    TritonServer,
    find_tritonserver,
    free_loopback_port,
    prepare_backends,
    server_command,
    server_environment,
)
from shared.errors import ArtifactIntegrityError
from shared.feature_definitions import AIRPORT_WEATHER, CARRIER_STATS, PLANES, ROUTE_STATS
from shared.feature_store import open_feature_store
from shared.fresh_features import FRESH_GROUPS
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    MODEL_NAME,
    RedisServer,
    RegisteredModel,
    ServiceProcess,
    SharedTriton,
    inference_settings,
    start_service,
)
from tests.service.test_online_service import UA_1545

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
TIMEOUT_S = 1.0


def spawn_triton(repository: Path, runtime: Path, endpoints: TritonEndpoints) -> TritonServer:
    """A tritonserver on fixed ports (so a restart comes back where the service looks)."""
    dist = find_tritonserver()
    assert dist is not None
    backends = prepare_backends(dist, runtime)
    command = server_command(dist, repository, backends, endpoints, 5)
    log_path = runtime / "tritonserver.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(dist),
            start_new_session=True,
        )
    server = TritonServer(endpoints, process=process, log_path=log_path, stop_timeout_s=5)
    server.wait_until_ready(60)
    return server


def post(url: str, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(f"{url}/v1/predictions", json={"flights": [UA_1545]}, timeout=timeout)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_killed_gives_fast_503_then_recovers_after_restart(
    registered_model: RegisteredModel, triton: SharedTriton, tmp_path: Path, protocol: str
) -> None:
    """Over the default lean HTTP client and over gRPC (``FTI_TRITON_PROTOCOL``)."""
    endpoints = TritonEndpoints(
        http=f"127.0.0.1:{free_loopback_port()}",
        grpc=f"127.0.0.1:{free_loopback_port()}",
        metrics=f"127.0.0.1:{free_loopback_port()}",
    )
    repository = tmp_path / "repository"
    shutil.copytree(triton.repository, repository)
    server = spawn_triton(repository, tmp_path / "triton", endpoints)
    service = start_service(
        registered_model.root,
        tmp_path / "service.log",
        FTI_TRITON_MODE="external",
        FTI_TRITON_URL=endpoints.http,
        FTI_TRITON_GRPC_URL=str(endpoints.grpc),
        FTI_TRITON_PROTOCOL=protocol,
        FTI_TRITON_MODEL_REPOSITORY=str(repository),
        FTI_TRITON_RUNTIME_DIR=str(tmp_path / "serving"),
        FTI_TRITON_TIMEOUT_S=str(TIMEOUT_S),
    )
    try:
        for _ in range(20):
            assert post(service.url).status_code == 200
        assert server._process is not None
        os.killpg(server._process.pid, signal.SIGKILL)  # the whole group: server and stubs
        server._process.wait()
        began = time.monotonic()
        down = post(service.url)
        elapsed = time.monotonic() - began
        assert down.status_code == 503, down.text
        assert down.json()["dependency"] == "triton"
        assert elapsed < TIMEOUT_S + 1.0
        ready = httpx.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 503 and not ready.json()["checks"]["triton"]["ok"]

        server = spawn_triton(repository, tmp_path / "triton", endpoints)  # nothing loaded
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            status = post(service.url).status_code
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, service.log()
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
    finally:
        service.stop()
        server.stop()


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    pgid: int
    cmdline: str


def processes() -> list[Proc]:
    """Every process of this machine, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append(Proc(int(entry.name), fields[0], int(fields[1]), int(fields[2]), cmdline))
    return found


def triton_of(service: ServiceProcess) -> Proc:
    (server,) = [
        p
        for p in processes()
        if p.ppid == service.process.pid and "tritonserver" in p.cmdline and p.state != "Z"
    ]
    return server


def assert_no_leftovers(service: ServiceProcess, killed: Proc, runtime: Path) -> None:
    """No zombie child of the service, nothing left of the killed server's process group,
    one Python-backend stub of ours (the new server's)."""
    deadline = time.monotonic() + 10
    while True:
        now = processes()
        zombies = [p for p in now if p.ppid == service.process.pid and p.state == "Z"]
        group = [p for p in now if p.pgid == killed.pid]
        stubs = [
            p
            for p in now
            if "triton_python_backend_stub" in p.cmdline and str(runtime) in p.cmdline
        ]
        if (not zombies and not group and len(stubs) == 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert zombies == [] and group == [], (zombies, group)
    assert len(stubs) == 1 and stubs[0].pgid == triton_of(service).pid, stubs


def test_a_killed_managed_triton_is_restarted_under_load(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    """SIGKILL the managed tritonserver alone (as ``kill -9`` does) while clients send
    predictions: the service restarts it, loads the model and answers 200 again by itself;
    the killed server is reaped (no zombie) and its Python-backend stub killed and reaped."""
    runtime = tmp_path / "serving"
    service = start_service(
        registered_model.root,
        tmp_path / "service.log",
        FTI_TRITON_RUNTIME_DIR=str(runtime),
        FTI_TRITON_TIMEOUT_S=str(TIMEOUT_S),
        FTI_PREDICTION_LOG="false",
        FTI_ALIAS_POLL_S="0",
    )
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = http.post("/v1/predictions", json={"flights": [UA_1545]}).status_code
                except httpx.HTTPError:
                    status = 0
                answers.append((sent, status))

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        server = triton_of(service)
        stub = next(p for p in processes() if p.pgid == server.pid and p.pid != server.pid)
        assert "triton_python_backend_stub" in stub.cmdline
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        back, alive = None, []
        while time.monotonic() - killed < 120 and back is None:
            alive.append(httpx.get(f"{service.url}/healthz", timeout=10).status_code)
            back = next((t for t, s in answers if t > killed and s == 200), None)
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert back is not None, service.log()
        assert set(alive) == {200}  # down well within the restart limit: still alive
        after = [s for t, s in answers if t > killed]
        assert 503 in after and after[-1] == 200, after[-20:]
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
        assert_no_leftovers(service, server, runtime)
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        assert 'fti_triton_restarts_total{outcome="ok"} 1.0' in metrics
        assert "fti_triton_up 1.0" in metrics
        log = service.log_path.read_text(errors="replace")
        assert f"managed Triton died: tritonserver (pid {server.pid}) killed by SIGKILL" in log
        assert "managed Triton restarted" in log
        assert (runtime / "triton" / "tritonserver.log.1").exists()  # the dead server's log
    finally:
        stop.set()
        service.stop()
    assert service.process.returncode in (0, -15), service.log()
    assert not [p for p in processes() if str(runtime) in p.cmdline]  # nothing outlives it


def test_a_managed_triton_that_cannot_come_back_fails_liveness(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    """Restarts that keep failing (the model cannot load: its Python-backend stub is gone)
    turn /healthz to 503 after FTI_TRITON_RESTART_LIMIT_S, so the pod's supervisor restarts
    the service; once a restart succeeds again, so does /healthz."""
    runtime = tmp_path / "serving"
    service = start_service(
        registered_model.root,
        tmp_path / "service.log",
        FTI_TRITON_RUNTIME_DIR=str(runtime),
        FTI_PREDICTION_LOG="false",
        FTI_ALIAS_POLL_S="0",
        FTI_TRITON_RESTART_LIMIT_S="2",
        FTI_TRITON_RESTART_BACKOFF_S="0.5",
        FTI_TRITON_RESTART_BACKOFF_MAX_S="1",
    )
    stub = runtime / "triton" / "backends" / "python" / "triton_python_backend_stub"
    try:
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        stub.rename(stub.with_suffix(".away"))
        os.kill(triton_of(service).pid, signal.SIGKILL)
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            health = httpx.get(f"{service.url}/healthz", timeout=10)
            if health.status_code == 503:
                break
            time.sleep(0.5)
        assert health is not None and health.status_code == 503, service.log()
        assert health.json()["status"] == "failing"
        assert "FTI_TRITON_RESTART_LIMIT_S" in health.json()["detail"]
        assert post(service.url).status_code == 503
        stub.with_suffix(".away").rename(stub)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and post(service.url).status_code != 200:
            time.sleep(0.5)
        assert post(service.url).status_code == 200, service.log()
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        assert 'fti_triton_restarts_total{outcome="failed"}' in metrics
        assert "/healthz now answers 503" in service.log_path.read_text(errors="replace")
    finally:
        service.stop()


def test_online_store_down_gives_503_then_recovers(
    registered_model: RegisteredModel,
    triton: SharedTriton,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    store_settings = dict(
        online_backend="redis", redis_url=url, redis_namespace="svc", online_timeout_s=0.5
    )
    store = open_feature_store(
        FeatureStoreSettings(data_root=registered_model.root, **store_settings)  # type: ignore[arg-type]
    )
    try:
        for group in (ROUTE_STATS, CARRIER_STATS, AIRPORT_WEATHER, PLANES, *FRESH_GROUPS):
            store.materialize(group)
    finally:
        store.close()
    settings = inference_settings(
        registered_model.root, triton, tmp_path, prediction_log=False, **store_settings
    )
    body = {"flights": [UA_1545]}
    with TestClient(create_app(settings)) as client:
        ok = client.post("/v1/predictions", json=body)
        assert ok.status_code == 200 and ok.json()["predictions"][0]["missing_groups"] == []
        redis_server.kill()
        began = time.monotonic()
        down = client.post("/v1/predictions", json=body)
        assert time.monotonic() - began < 2.0
        assert down.status_code == 503 and down.json()["dependency"] == "feature_store"
        assert client.get("/readyz").json()["checks"]["feature_store"]["ok"] is False
        # Back, but empty (no persistence): served again, every online group flagged missing.
        redis_server.start()
        deadline, response = time.monotonic() + 15, down
        while time.monotonic() < deadline and response.status_code != 200:
            time.sleep(0.2)
            response = client.post("/v1/predictions", json=body)
        assert response.status_code == 200, response.text
        assert set(response.json()["predictions"][0]["missing_groups"]) == {
            "route_stats",
            "carrier_stats",
            "airport_weather",
            "planes",
            "departure_events",  # the fresh window features: no watermark, no events
        }


def test_a_hung_store_answers_503_within_one_timeout_per_request(
    registered_model: RegisteredModel,
    triton: SharedTriton,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    """Redis paused (SIGSTOP: connections are accepted, nothing is answered) under concurrent
    requests to the real service process: every 503 comes within the online timeout of its
    request's start, queued requests included (they took up to twice the timeout, waiting
    for the hung read ahead of them and then for their own); back to 200 on SIGCONT."""
    url = redis_server.url
    namespace = f"hung-{uuid.uuid4().hex[:8]}"
    store = open_feature_store(
        FeatureStoreSettings(
            data_root=registered_model.root,
            online_backend="redis",  # type: ignore[arg-type]
            redis_url=url,
            redis_namespace=namespace,
        )
    )
    try:
        for group in (ROUTE_STATS, CARRIER_STATS, AIRPORT_WEATHER, PLANES, *FRESH_GROUPS):
            store.materialize(group)
    finally:
        store.close()
    service = start_service(
        registered_model.root,
        tmp_path / "service.log",
        FTI_TRITON_MODE="external",
        FTI_TRITON_URL=triton.url,
        FTI_TRITON_GRPC_URL=str(triton.grpc_url),
        FTI_TRITON_MODEL_REPOSITORY=str(triton.repository),
        FTI_TRITON_RUNTIME_DIR=str(tmp_path / "serving"),
        FTI_ONLINE_BACKEND="redis",
        FTI_REDIS_URL=url,
        FTI_REDIS_NAMESPACE=namespace,
        FTI_ONLINE_TIMEOUT_S=str(TIMEOUT_S),
        FTI_PREDICTION_LOG="false",
        FTI_ALIAS_POLL_S="0",
    )
    answers: list[tuple[float, float, int, str | None]] = []  # (sent, seconds, status, dep.)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            while not stop.is_set():
                sent = time.monotonic()
                response = http.post("/v1/predictions", json={"flights": [UA_1545]})
                body = response.json()
                answers.append(
                    (sent, time.monotonic() - sent, response.status_code, body.get("dependency"))
                )

    try:
        assert post(service.url).status_code == 200
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        redis_server.signal(signal.SIGSTOP)
        paused = time.monotonic()
        time.sleep(4 * TIMEOUT_S)
        redis_server.signal(signal.SIGCONT)
        resumed = time.monotonic()
        time.sleep(3.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        redis_server.signal(signal.SIGCONT)
        stop.set()
        service.stop()
    failed = [a for a in answers if a[2] != 200]
    assert {(status, dependency) for _, _, status, dependency in failed} == {(503, "feature_store")}
    assert len(failed) >= 8, answers  # every client met the outage, several times
    # Queued behind the hung read, requests took up to twice the timeout before each request
    # got one deadline, and two or three timeouts while a cancelled Redis read could outlive
    # its deadline (`StoreAccess.awaited`). 1.5: a margin for a busy machine's scheduling.
    slowest = sorted(seconds for _, seconds, _, _ in failed)
    assert slowest[-1] < 1.5 * TIMEOUT_S, slowest[-10:]
    # Sent and answered while Redis was stopped: nothing can answer those but a 503. (Sent
    # alone is not enough: a client thread of this busy process can note the time, then send
    # the request only after the resume, and rightly get a 200.)
    during = [a for a in answers if paused + TIMEOUT_S < a[0] and a[0] + a[1] < resumed]
    assert during, answers
    assert all(status == 503 for _, _, status, _ in during), [a for a in during if a[2] != 503]
    late = [a for a in answers if a[0] > resumed + 1.5]
    assert late and all(status == 200 for _, _, status, _ in late), late


def test_broken_sqlite_store_gives_503_then_recovers(
    copy_root: Path, triton: SharedTriton, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The SQLite online store is read on the event loop's thread (see
    `ScoringPipeline._score_batch`): a read that fails must still be a 503 naming the store, and
    the service must serve again once the store is whole. The outage is logged in two lines,
    not one per failed request."""
    settings = inference_settings(
        copy_root, triton, tmp_path, prediction_log=False, failure_log_interval_s=0.5
    )
    path = FeatureStoreSettings(data_root=copy_root).resolved_sqlite_path
    table = ROUTE_STATS.table_name
    body = {"flights": [UA_1545]}
    caplog.set_level(logging.WARNING, logger="inference_pipeline.service.errors")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/predictions", json=body).status_code == 200
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute(f'ALTER TABLE "{table}" RENAME TO "{table}_away"')
        began = time.monotonic()
        down = client.post("/v1/predictions", json=body)
        assert time.monotonic() - began < 2.0
        assert down.status_code == 503, down.text
        assert down.json()["dependency"] == "feature_store" and table in down.json()["message"]
        assert client.get("/healthz").status_code == 200  # the loop is not stuck
        for _ in range(29):
            assert client.post("/v1/predictions", json=body).status_code == 503
        time.sleep(0.7)  # the interval ends: its summary line
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute(f'ALTER TABLE "{table}_away" RENAME TO "{table}"')
        again = client.post("/v1/predictions", json=body)
        assert again.status_code == 200, again.text
        assert again.json()["predictions"][0]["missing_groups"] == []
    lines = [
        r.getMessage() for r in caplog.records if r.name == "inference_pipeline.service.errors"
    ]
    assert len(lines) == 2, lines
    assert lines[0].startswith("POST /v1/predictions -> 503: online read of")
    assert lines[1].startswith("feature_store: 29 more failures in the last 0.5 s (latest: POST")


def test_a_deleted_or_replaced_sqlite_store_is_noticed(
    copy_root: Path, triton: SharedTriton, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service keeps one connection to the SQLite online store. Deleted, the file is still
    read through it, but a restart would find none: /readyz says so, naming it. Replaced by
    another file, the service reopens and serves from the new one."""
    settings = inference_settings(copy_root, triton, tmp_path, prediction_log=False)
    path = FeatureStoreSettings(data_root=copy_root).resolved_sqlite_path
    body = {"flights": [UA_1545]}
    # The replacement, made as an operator would (the backup API, then an edit): it lacks
    # the flight's route row.
    replacement = tmp_path / "replacement.sqlite"
    with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(replacement)) as copy:
        source.backup(copy)
        copy.execute(
            f'DELETE FROM "{ROUTE_STATS.table_name}" WHERE origin = ? AND dest = ?',
            (UA_1545["origin"], UA_1545["dest"]),
        )
        copy.commit()
    caplog.set_level(logging.WARNING, logger="shared.feature_store.online_sqlite")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        assert (
            client.post("/v1/predictions", json=body).json()["predictions"][0]["missing_groups"]
            == []
        )
        path.unlink()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        store = ready.json()["checks"]["feature_store"]
        assert not store["ok"] and str(path) in store["detail"] and "gone" in store["detail"]
        assert client.post("/v1/predictions", json=body).status_code == 200  # still serving

        os.replace(replacement, path)
        deadline, missing = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            answer = client.post("/v1/predictions", json=body)
            assert answer.status_code == 200, answer.text
            missing = answer.json()["predictions"][0]["missing_groups"]
            if missing == ["route_stats"]:
                break
            time.sleep(0.2)
        assert missing == ["route_stats"]  # served from the new file
        assert client.get("/readyz").status_code == 200
    assert any("was replaced: reopened it" in r.getMessage() for r in caplog.records)


def test_corrupted_artifact_is_refused_at_load(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    source = ModelRegistry(RegistrySettings(data_root=registered_model.root, model_name=MODEL_NAME))
    model = load_serving_model(source, "champion", tmp_path / "good")
    root = tmp_path / "root"
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL_NAME))
    package = tmp_path / "package"
    shutil.copytree(model.path, package)
    (package / "manifest.json").unlink()
    with registry.run("corrupt", tags={}) as run_id:
        version = registry.register(run_id, package)
    registry.promote(version.version)
    stored = next((root / "mlartifacts").rglob("mdt_state.json"))
    stored.write_text(stored.read_text().replace('"clip": 8.0', '"clip": 9.0'))

    with pytest.raises(ArtifactIntegrityError, match=r"mdt_state\.json"):
        load_serving_model(registry, "champion", tmp_path / "download")

    from inference_pipeline.settings import InferenceSettings

    settings = InferenceSettings(
        data_root=root, model_name=MODEL_NAME, triton_runtime_dir=tmp_path / "serving"
    )
    with (
        pytest.raises(ArtifactIntegrityError, match=r"changed: mdt_state\.json"),
        TestClient(create_app(settings)),
    ):
        pass
