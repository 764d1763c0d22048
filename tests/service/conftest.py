"""Fixtures of the service tests: a feature store filled with the real data (Jan 1 - Mar 10),
a small model trained on it and registered in MLflow as champion, and Triton / service
processes.

The model is trained here with the training pipeline's own pieces (feature view -> training
frame -> MDT -> TabularNet -> TorchScript) for one epoch, small enough for a test session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")

from feature_pipeline.pipeline import run_backfill  # noqa: E402
from feature_pipeline.settings import FeaturePipelineSettings  # noqa: E402
from inference_pipeline.triton_server import free_loopback_port  # noqa: E402
from shared.feature_store import open_feature_store  # noqa: E402
from shared.feature_view import FLIGHT_DELAY_VIEW  # noqa: E402
from shared.registry import ModelRegistry, RegistrySettings  # noqa: E402
from shared.triton_repository import ModelSignature, write_model_repository  # noqa: E402

LAST_FEATURE_DAY = date(2013, 3, 10)  # the store holds flights and weather up to this day
SCORED_DAY = date(2013, 3, 10)
MODEL_NAME = "flight_delay"
API_KEY = "test-api-key-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"


@dataclass(frozen=True)
class RegisteredModel:
    root: Path  # FTI_DATA_ROOT: offline + online store and MLflow
    version: str


def train_small_model(store, out_dir: Path, seed: int = 13):  # type: ignore[no-untyped-def]
    """One epoch on January, validated on February: the real training code paths, minutes->s."""
    from training_pipeline.config import MDTConfig, ModelConfig, Window, Windows
    from training_pipeline.data import load_training_data
    from training_pipeline.model import TabularNet, export_torchscript

    windows = Windows(
        train=Window(start=date(2013, 1, 1), end=date(2013, 2, 1)),
        validation=Window(start=date(2013, 2, 1), end=date(2013, 2, 15)),
        test=Window(start=date(2013, 2, 15), end=date(2013, 3, 1)),
    )
    data = load_training_data(store, FLIGHT_DELAY_VIEW, windows, MDTConfig())
    torch.manual_seed(seed)
    net = TabularNet.from_config(
        ModelConfig(hidden=(32,), dropout=0.0), data.mdt.n_numeric, data.mdt.cardinalities
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    numeric = torch.from_numpy(data.train.features.numeric)
    categorical = torch.from_numpy(data.train.features.categorical)
    labels = torch.from_numpy(data.train.labels).reshape(-1, 1)
    net.train()
    for start in range(0, len(labels), 1024):
        logits = net(numeric[start : start + 1024], categorical[start : start + 1024])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, labels[start : start + 1024]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    torchscript = export_torchscript(net, out_dir / "model.pt")
    (out_dir / "mdt_state.json").write_text(data.mdt.to_json())
    (out_dir / "feature_view.json").write_text(json.dumps(FLIGHT_DELAY_VIEW.describe()))
    signature = ModelSignature(n_numeric=data.mdt.n_numeric, n_categorical=data.mdt.n_categorical)
    write_model_repository(out_dir / "triton" / "cpu", MODEL_NAME, 1, torchscript, signature, "cpu")
    return data


def register(root: Path, model_dir: Path) -> str:
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL_NAME))
    with registry.run("service-test", tags={}) as run_id:
        version = registry.register(run_id, model_dir)
    return version.version


def train_with_training_pipeline(root: Path) -> str | None:
    """Train and register with the training pipeline's own entry function (small config);
    None when this checkout's training pipeline does not offer it yet."""
    try:
        from training_pipeline.config import TrainingConfig, TrainingSettings
        from training_pipeline.pipeline import run_training
    except ImportError:
        return None
    config = TrainingConfig.model_validate(
        {
            "windows": {
                "train": {"start": "2013-01-01", "end": "2013-02-01"},
                "validation": {"start": "2013-02-01", "end": "2013-02-15"},
                "test": {"start": "2013-02-15", "end": "2013-03-01"},
            },
            "model": {"hidden": [32], "dropout": 0.0, "max_embedding_dim": 4},
            "optim": {"epochs": 1, "batch_size": 1024, "warmup_steps": 5, "patience": 5},
            "baseline": {"enabled": False},
            "gates": {"min_roc_auc": 0.0},
        }
    )
    settings = TrainingSettings(
        data_root=root,
        model_name=MODEL_NAME,
        checkpoint_dir=root / "checkpoints",
        git_commit="service-tests",
        device="cpu",
    )
    outcome = run_training(settings, config)
    assert outcome is not None
    return outcome.version


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    root = tmp_path_factory.mktemp("service_root")
    summary = run_backfill(
        FeaturePipelineSettings(data_root=root), date(2013, 1, 1), LAST_FEATURE_DAY
    )
    assert summary.error is None, summary.error
    version = train_with_training_pipeline(root)
    if version is None:
        store = open_feature_store(FeaturePipelineSettings(data_root=root))
        try:
            model_dir = tmp_path_factory.mktemp("model_v1")
            train_small_model(store, model_dir)
        finally:
            store.close()
        version = register(root, model_dir)
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL_NAME))
    registry.promote(version)
    return RegisteredModel(root=root, version=version)


def service_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    env.update({"FTI_DATA_ROOT": str(root), "FTI_MODEL_NAME": MODEL_NAME, **extra})
    return env


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def drain_prediction_log(root: Path, **settings: object) -> int:
    """What the log writer process does, here and once: commit the prediction log's sealed
    spool segments under ``root`` to the predictions table. Returns the rows committed."""
    import threading

    from inference_pipeline.log_writer import LogWriter
    from inference_pipeline.prediction_sink.configured import open_source
    from inference_pipeline.settings import InferenceSettings

    values: dict[str, object] = {"data_root": root, "model_name": MODEL_NAME, **settings}
    config = InferenceSettings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]
    store = open_feature_store(config.store_settings())
    source = open_source(config)
    try:
        summary = LogWriter(store, source, config).run(threading.Event(), drain=True)
    finally:
        source.close()
        store.close()
    assert summary.error is None, summary.error
    return summary.rows


def start_log_writer(root: Path, log_path: Path, **env: str) -> ServiceProcess:
    """``python -m inference_pipeline log-writer`` (its url is unused)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_pipeline", "log-writer"],
            env=service_env(root, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(process, "", log_path)


def start_service(root: Path, log_path: Path, timeout_s: float = 120, **env: str) -> ServiceProcess:
    """``python -m inference_pipeline serve`` on a free loopback port; waits for /readyz."""
    port = free_loopback_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_pipeline", "serve", "--port", str(port)],
            env=service_env(root, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode}:\n{service.log()}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    service.stop()
    raise AssertionError(f"service not ready after {timeout_s} s:\n{service.log()}")


@pytest.fixture
def copy_root(registered_model: RegisteredModel, tmp_path: Path) -> Path:
    """A private copy of the data root, for tests that write or break it."""
    target = tmp_path / "root"
    shutil.copytree(registered_model.root, target, ignore=shutil.ignore_patterns("serving"))
    return target


@dataclass(frozen=True)
class SharedTriton:
    url: str
    repository: Path
    grpc_url: str | None = None


@pytest.fixture(scope="session")
def triton(
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedTriton]:
    """One Triton for the in-process service tests (external mode), the model published into
    its repository the way the service publishes it."""
    from inference_pipeline.model_artifact import load_serving_model, publish_for_triton
    from inference_pipeline.triton_server import TritonServer

    work = tmp_path_factory.mktemp("triton")
    registry = ModelRegistry(
        RegistrySettings(data_root=registered_model.root, model_name=MODEL_NAME)
    )
    model = load_serving_model(registry, "champion", work / "artifact")
    publish_for_triton(model, work / "repository", "cpu")
    with TritonServer.start_local(work / "repository", work / "runtime") as server:
        server.load_model(model.triton_name)
        yield SharedTriton(
            url=server.endpoints.http,
            repository=work / "repository",
            grpc_url=server.endpoints.grpc,
        )


def inference_settings(root: Path, triton: SharedTriton, tmp: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from inference_pipeline.settings import InferenceSettings

    values: dict[str, object] = {
        "data_root": root,
        "model_name": MODEL_NAME,
        "triton_mode": "external",
        "triton_url": triton.url,
        "triton_grpc_url": triton.grpc_url,
        "triton_model_repository": triton.repository,
        "triton_runtime_dir": tmp / "serving",
        "prediction_log_segment_s": 0.1,
        **overrides,
    }
    return InferenceSettings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


@dataclass
class RedisServer:
    """A redis-server of the test's own, to pause (SIGSTOP), kill or start again on its port."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, after a kill: empty, nothing is persisted) and wait until it
        answers."""
        import redis

        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=0.2).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = RedisServer(free_loopback_port(), tmp_path)
    server.start()
    yield server
    server.signal(signal.SIGCONT)  # a test that failed may leave it paused
    server.signal(signal.SIGTERM)
    assert server.process is not None
    server.process.wait()
