"""The production topology of docker-compose.yml, run as processes on this machine.

Every part is a separate process started the way its container starts, with the environment its
compose service declares (and nothing else): an `mlflow server` on a fresh PostgreSQL database
with artifacts proxied through it, Redis as the online store, Triton as its own server
(`python -m inference_pipeline triton`, the CPU profile's container command, explicit model
control), the online service with two uvicorn workers sharing that Triton, and the jobs (feature
backfill, training, batch scoring, monitoring).

What differs from the containers, and only that: host names and ports become loopback and free
ports, container paths become temporary folders, the secrets are generated, the data is small
(Jan-Mar 2013, one training epoch), Redis uses a database and key namespace of its own, the
artifact destination is a folder (no object store runs here) and MLflow runs one worker (two
cores). Skipped, with the reason, when PostgreSQL, Redis or the Triton binary is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import polars as pl
import pytest

from shared.flight_identity import as_of_before_departure
from shared.prediction_time import DEFAULT_LEAD_MINUTES
from tests.deploy import deployment as d

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_DSN: dict[str, object] = {
    "host": PG_HOST,
    "port": PG_PORT,
    "user": "postgres",
    "dbname": "postgres",
}
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = 13  # no other test uses it; keys carry a namespace of this run as well
LAST_DAY = date(2013, 3, 31)
TRAINING_CONFIG = """
[model]
hidden = [32]
dropout = 0.0
max_embedding_dim = 4

[optim]
epochs = 1
batch_size = 1024
warmup_steps = 5

[baseline]
enabled = false

[gates]
min_roc_auc = 0.5
"""
WINDOWS = [
    "--train", "2013-01-01:2013-03-01",
    "--validation", "2013-03-01:2013-03-15",
    "--test", "2013-03-15:2013-04-01",
]  # fmt: skip
API_KEY = secrets.token_hex(16)
ADMIN_KEY = secrets.token_hex(16)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    root: Path
    database: str
    namespace: str
    ports: dict[str, int]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    # -- what the compose services become here ------------------------------------------------

    def rewrites(self) -> list[tuple[str, str]]:
        """Compose host names and container paths -> this machine (longest first)."""
        return [
            ("redis://redis:6379/0", f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"),
            ("http://mlflow:5000", f"http://127.0.0.1:{self.ports['mlflow']}"),
            ("triton:8000", f"127.0.0.1:{self.ports['triton_http']}"),
            ("triton:8001", f"127.0.0.1:{self.ports['triton_grpc']}"),
            ("/checkpoints", str(self.root / "checkpoints")),
            ("/models", str(self.root / "models")),
            ("/reports", str(self.root / "reports")),
            ("/tmp/triton", str(self.root / "triton-runtime")),
            ("/data", str(self.root / "data")),
        ]

    def env(self, service: str, **extra: str) -> dict[str, str]:
        """The service's environment as compose gives it (image ENV, environment:, env files),
        rewritten for this machine, on top of this process's non-FTI environment."""
        container = _compose()[service]
        # The image's PATH names its own venv; this machine's comes from `base` below.
        declared = {k: v for k, v in container.effective_env.items() if k != "PATH"}
        for env_file in container.env_files:
            declared |= {name: "" for name in _dotenv_names(env_file)}
        if "FTI_API_KEY" in declared:  # service.env: generated here
            declared |= {"FTI_API_KEY": API_KEY, "FTI_ADMIN_API_KEY": ADMIN_KEY}
        rewritten = {name: self._rewrite(value) for name, value in declared.items()}
        compose_hosts = re.compile(r"(^|//)(mlflow|redis|triton|postgres):\d")
        leftovers = {n: v for n, v in rewritten.items() if compose_hosts.search(v)}
        assert not leftovers, f"{service}: not mapped to this machine: {leftovers}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FTI_", "MLFLOW_"))}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        return base | rewritten | {"FTI_REDIS_NAMESPACE": self.namespace} | extra

    def _rewrite(self, value: str) -> str:
        for before, after in self.rewrites():
            if value == before or value.startswith(before.rstrip("/") + "/"):
                return after + value[len(before) :]
        return value

    def argv(self, service: str, args: list[str] | None = None) -> list[str]:
        """The container's command (image ENTRYPOINT + compose command), ``args`` replacing the
        command part as `docker compose run <service> ARGS` does; python is this venv's."""
        container = _compose()[service]
        argv = list(container.argv)
        if args is not None:
            entry: list[str] = list(container.spec.get("entrypoint") or [])
            if not entry and container.dockerfile is not None:
                entry = container.dockerfile.final.entrypoint or []
            argv = [*entry, *args]
        if argv[0] in {"python", "python3"}:
            argv[0] = sys.executable
        elif argv[0] == "mlflow":
            argv[0] = str(Path(sys.executable).parent / "mlflow")
        return argv

    # -- processes ----------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[name] = process
        return process

    def run(
        self, name: str, argv: list[str], env: dict[str, str], timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        (self.logs / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
        self.results[name] = done
        return done

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else "<no log>"

    def stop(self, name: str, timeout: float = 60) -> int | None:
        process = self.processes.get(name)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode


def _compose() -> dict[str, d.Container]:
    # The CPU profile, as started with `FTI_TRITON_FLAVOUR=cpu docker compose --profile cpu up`.
    return {c.name: c for c in d.compose_containers({"FTI_TRITON_FLAVOUR": "cpu"})}


def _dotenv_names(path: Path) -> list[str]:
    source = path if path.exists() else path.with_name(path.name + ".example")
    lines = [line.strip() for line in source.read_text().splitlines()]
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not answering {url} after {timeout:.0f} s")


def _last_json_line(text: str) -> dict[str, object]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary line in:\n{text[-2000:]}"
    return dict(json.loads(lines[-1]))


# -- external servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary (dev extra) not installed")
    if not _reachable(PG_HOST, PG_PORT):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    name = f"fti_prod_{secrets.token_hex(4)}"
    admin = psycopg2.connect(**PG_DSN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def redis_namespace() -> Iterator[str]:
    redis = pytest.importorskip("redis")
    if not _reachable(REDIS_HOST, REDIS_PORT):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    namespace = f"fti-prod-{secrets.token_hex(4)}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        yield namespace
    finally:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, database: str, redis_namespace: str
) -> Iterator[Stack]:
    from inference_pipeline.triton_server import find_tritonserver

    if find_tritonserver() is None:
        pytest.skip("the nvidia-pytriton wheel (tritonserver binary) is not installed")
    root = tmp_path_factory.mktemp("production")
    logs = root / "logs"
    for folder in ("data", "models", "checkpoints", "reports", "artifacts", "logs"):
        (root / folder).mkdir()
    ports = {
        name: free_port()
        for name in ("mlflow", "triton_http", "triton_grpc", "triton_metrics", "online")
    }
    stack = Stack(root, database, redis_namespace, ports, logs)
    try:
        _start_mlflow(stack)
        _start_triton(stack)
        yield stack
    finally:
        for name in list(stack.processes)[::-1]:
            stack.stop(name)
        shutil.rmtree(root / "models", ignore_errors=True)


def _start_mlflow(stack: Stack) -> None:
    port = stack.ports["mlflow"]
    argv = []
    for arg in stack.argv("mlflow"):
        if arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--artifacts-destination="):
            arg = f"--artifacts-destination={(stack.root / 'artifacts').as_uri()}"
        elif arg.startswith("--allowed-hosts="):
            arg = arg.replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        argv.append(arg)
    argv.append("--workers=1")  # two cores here
    # mlflow.env's database URI; its bucket credentials are not needed with a folder.
    env = {k: v for k, v in stack.env("mlflow").items() if not k.startswith("AWS_")}
    env["MLFLOW_BACKEND_STORE_URI"] = f"postgresql://postgres@127.0.0.1:5432/{stack.database}"
    process = stack.start("mlflow", argv, env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", process, 180, "mlflow server")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log('mlflow')}") from None


def _start_triton(stack: Stack) -> None:
    argv = stack.argv("triton-cpu")
    mapped = {
        "--http-port": stack.ports["triton_http"],
        "--grpc-port": stack.ports["triton_grpc"],
        "--metrics-port": stack.ports["triton_metrics"],
    }
    argv = [
        str(mapped[argv[i - 1]]) if i and argv[i - 1] in mapped else a for i, a in enumerate(argv)
    ]
    argv += ["--address", "127.0.0.1"]
    process = stack.start("triton", argv, stack.env("triton-cpu"))
    url = f"http://127.0.0.1:{stack.ports['triton_http']}/v2/health/ready"
    try:
        _wait_http(url, process, 120, "tritonserver")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log('triton')}") from None


# -- the flow: backfill -> train -> serve (2 workers) -> batch ------------------------------------


@pytest.fixture(scope="module")
def trained(stack: Stack) -> str:
    """Backfill Jan-Mar, train and register; returns the champion's version."""
    backfill = stack.run(
        "feature-backfill",
        stack.argv(
            "feature-pipeline", ["backfill", "--start", "2013-01-01", "--end", "2013-03-31"]
        ),
        stack.env("feature-pipeline"),
    )
    assert backfill.returncode in (0, 3), backfill.stderr[-3000:]  # 3: rows quarantined
    summary = _last_json_line(backfill.stdout)
    assert summary["error"] is None
    config = stack.root / "training.toml"
    config.write_text(TRAINING_CONFIG)
    training = stack.run(
        "training",
        stack.argv("training", ["train", "--config", str(config), *WINDOWS]),
        stack.env("training", FTI_GIT_COMMIT="production-stack-test"),
        timeout=900,
    )
    assert training.returncode == 0, training.stderr[-3000:]
    outcome = _last_json_line(training.stdout)
    return str(outcome["version"])


@pytest.fixture(scope="module")
def service(stack: Stack, trained: str) -> str:
    """The online service as compose runs it (FTI_WORKERS=2, external Triton); its base URL."""
    env = stack.env("online", FTI_HOST="127.0.0.1", FTI_PORT=str(stack.ports["online"]))
    assert env["FTI_WORKERS"] == "2" and env["FTI_TRITON_MODE"] == "external"
    process = stack.start("online", stack.argv("online"), env)
    base = f"http://127.0.0.1:{stack.ports['online']}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, f"service exited {process.returncode}\n{stack.log('online')}"
        if stack.log("online").count("serving flight_delay version") >= 2:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"two workers did not start serving\n{stack.log('online')}")
    _wait_http(f"{base}/readyz", process, 60, "online service")
    # Each worker started once: none was killed by the supervisor during its start-up.
    assert " died" not in stack.log("online"), stack.log("online")
    return base


def _requests(day: date, count: int) -> list[dict[str, object]]:
    from feature_pipeline.extract import bundled_data_dir

    with zipfile.ZipFile(bundled_data_dir() / "flights.csv.zip") as archive:
        raw = archive.read("flights.csv")
    flights = (
        pl.read_csv(raw, infer_schema_length=0)
        .filter(
            (pl.col("year") == str(day.year))
            & (pl.col("month") == str(day.month))
            & (pl.col("day") == str(day.day))
            & pl.col("tailnum").is_not_null()
        )
        .head(count)
    )
    return [
        {
            "flight_date": day.isoformat(),
            "sched_dep_time": int(row["sched_dep_time"]),
            "carrier": row["carrier"],
            "flight": int(row["flight"]),
            "origin": row["origin"],
            "dest": row["dest"],
            "tailnum": row["tailnum"],
            "distance": int(row["distance"]),
            # T = departure - the default lead: the day's features, not today's (all stale).
            "as_of": as_of_before_departure(
                day, int(row["sched_dep_time"]), DEFAULT_LEAD_MINUTES
            ).isoformat(),
        }
        for row in flights.iter_rows(named=True)
    ]


def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def test_training_registers_through_the_tracking_server_on_postgresql(
    stack: Stack, trained: str
) -> None:
    import psycopg2

    connection = psycopg2.connect(**(PG_DSN | {"dbname": stack.database}))
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT version, source FROM model_versions WHERE name = %s", ("flight_delay",)
            )
            versions = {str(v): source for v, source in cursor.fetchall()}
            cursor.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
                ("flight_delay",),
            )
            aliases = {alias: str(version) for alias, version in cursor.fetchall()}
    finally:
        connection.close()
    assert trained in versions, versions
    assert aliases.get("champion") == trained, aliases
    # Artifacts went through the server (--serve-artifacts) into its destination, not to a
    # path the client chose.
    stored = list((stack.root / "artifacts").rglob("manifest.json"))
    assert stored, "no model artifacts in the server's artifact destination"
    assert not (stack.root / "data" / "mlartifacts").exists()


def test_two_workers_serve_predictions_through_the_shared_triton(
    stack: Stack, trained: str, service: str
) -> None:
    workers = _worker_pids(stack.processes["online"].pid)
    assert len(workers) == 2, workers
    ready = httpx.get(f"{service}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    flights = _requests(LAST_DAY, 6)
    headers = {"X-API-Key": API_KEY}
    answers = []
    for _ in range(8):  # several connections: both workers take some
        with httpx.Client(base_url=service, headers=headers, timeout=30) as client:
            response = client.post("/v1/predictions", json={"flights": flights})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    for body in answers:
        assert [p["model_version"] for p in body["predictions"]] == [trained] * len(flights)
        probabilities = [p["probability"] for p in body["predictions"]]
        assert all(0.0 < p < 1.0 for p in probabilities)
        assert probabilities == [p["probability"] for p in answers[0]["predictions"]]
    unauthenticated = httpx.post(f"{service}/v1/predictions", json={"flights": flights})
    assert unauthenticated.status_code == 401
    # Both workers published the same version into the repository they share with Triton:
    # one complete version directory, no staging leftovers, served by the one Triton.
    models = stack.root / "models" / "flight_delay"
    assert {p.name for p in models.iterdir()} == {"config.pbtxt", trained}
    triton = f"http://127.0.0.1:{stack.ports['triton_http']}"
    assert httpx.get(f"{triton}/v2/models/flight_delay/versions/{trained}/ready").status_code == 200
    # Both workers share the download folder: each its own locked sub-folder with the one
    # version it serves; neither swept the other's away at its start.
    owned = [folder for folder in _downloads(stack) if folder.is_dir()]
    assert len(owned) == 2, owned
    assert all(len([d for d in folder.iterdir() if d.is_dir()]) == 1 for folder in owned)


def test_batch_scores_a_day_through_the_same_triton(
    stack: Stack, trained: str, service: str
) -> None:
    batch = stack.run(
        "batch-scoring",
        stack.argv("batch-scoring", ["--date", LAST_DAY.isoformat(), "--model", "champion"]),
        stack.env("batch-scoring"),
    )
    assert batch.returncode == 0, batch.stderr[-3000:]
    summary = _last_json_line(batch.stdout)
    assert summary["model_version"] == trained
    assert summary["scorer"] == "Triton (external)"
    assert int(str(summary["flights"])) > 500  # every departure of the day
    again = stack.run(
        "batch-scoring-again",
        stack.argv("batch-scoring", ["--date", LAST_DAY.isoformat(), "--model", "champion"]),
        stack.env("batch-scoring"),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert _last_json_line(again.stdout)["inserted"] == 0  # idempotent


def test_monitoring_job_runs_on_the_stack(stack: Stack, trained: str, service: str) -> None:
    import importlib.util

    if importlib.util.find_spec("inference_pipeline.monitor") is None:
        pytest.skip("the monitoring package is not in this checkout yet")
    args = ["run", "--end", LAST_DAY.isoformat(), "--window-days", "7", "--source", "all"]
    args += ["--output-dir", str(stack.root / "reports")]
    monitor = stack.run("monitoring", stack.argv("monitoring", args), stack.env("monitoring"))
    assert monitor.returncode in (0, 3), monitor.stdout[-2000:] + monitor.stderr[-3000:]
    assert any((stack.root / "reports").iterdir())


def test_the_service_stops_cleanly_on_sigterm(stack: Stack, service: str) -> None:
    process = stack.processes["online"]
    workers = _worker_pids(process.pid)
    assert stack.stop("online", timeout=60) == 0, stack.log("online")
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} left running"
    assert _downloads(stack) == []  # each worker removed its model downloads on the way out


def _downloads(stack: Stack) -> list[Path]:
    artifacts = stack.root / "data" / "serving" / "artifacts"
    return sorted(artifacts.iterdir()) if artifacts.is_dir() else []


def _zombie(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" in status
