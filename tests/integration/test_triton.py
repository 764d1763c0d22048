"""The real Triton server (the `nvidia-pytriton` wheel's binary) serving a cpu-flavour repository
written by `shared.triton_repository`: HTTP and gRPC answers equal in-process PyTorch, versions
roll without a restart, and a tampered artifact is caught before it is served."""

from __future__ import annotations

import logging
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the test model is built with PyTorch")
pytest.importorskip("tritonclient", reason="needs the 'inference' extra")

import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inference_pipeline import triton_server
from inference_pipeline.triton_server import (
    TritonEndpoints,
    TritonServer,
    TritonServerError,
    find_tritonserver,
)
from shared.errors import ArtifactIntegrityError
from shared.triton_repository import (
    CATEGORICAL_INPUT,
    NUMERIC_INPUT,
    PROBABILITY_OUTPUT,
    ModelSignature,
    file_manifest,
    verify_manifest,
    write_model_repository,
)

if find_tritonserver() is None:
    pytest.skip(
        "tritonserver binary not found (install nvidia-pytriton: the 'inference' extra)",
        allow_module_level=True,
    )

pytestmark = [
    pytest.mark.integration,
    # TorchScript is what the LibTorch backend of the gpu flavour loads, deprecated or not.
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]
logger = logging.getLogger(__name__)

SIGNATURE = ModelSignature(n_numeric=5, n_categorical=3)
VOCABULARY = 11
BATCH = 64
MODEL = "flight_delay"


class TinyDelayModel(torch.nn.Module):
    """The model interface training exports: numeric and categorical in, probability out."""

    def __init__(self, n_numeric: int, n_categorical: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCABULARY, 4)
        self.hidden = torch.nn.Linear(n_numeric + 4 * n_categorical, 16)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        features = torch.cat([numeric, self.embedding(categorical).flatten(1)], dim=1)
        return torch.sigmoid(self.head(torch.relu(self.hidden(features))))


def build_torchscript(path: Path, seed: int) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    module = torch.jit.script(TinyDelayModel(SIGNATURE.n_numeric, SIGNATURE.n_categorical).eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(path))
    return module


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(BATCH, SIGNATURE.n_numeric)).astype(np.float32)
    categorical = rng.integers(0, VOCABULARY, size=(BATCH, SIGNATURE.n_categorical))
    return numeric, categorical.astype(np.int64)


def expected(module: torch.jit.ScriptModule, numeric: np.ndarray, cat: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(numeric), torch.from_numpy(cat)).numpy()


def infer_http(
    server: TritonServer, model: str, numeric: np.ndarray, cat: np.ndarray
) -> np.ndarray:
    inputs = [
        httpclient.InferInput(NUMERIC_INPUT, list(numeric.shape), "FP32"),
        httpclient.InferInput(CATEGORICAL_INPUT, list(cat.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(numeric)
    inputs[1].set_data_from_numpy(cat)
    outputs = [httpclient.InferRequestedOutput(PROBABILITY_OUTPUT)]
    result = server.http_client().infer(model, inputs, outputs=outputs)
    return np.asarray(result.as_numpy(PROBABILITY_OUTPUT))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_repository")


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    runtime = tmp_path_factory.mktemp("triton_runtime")
    with TritonServer.start_local(repository, runtime) as started:
        yield started


@pytest.fixture(scope="module")
def served(
    server: TritonServer, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> torch.jit.ScriptModule:
    """Version 1 of MODEL, loaded; returns the in-process module to compare with."""
    artifact = tmp_path_factory.mktemp("artifact") / "model.pt"
    module = build_torchscript(artifact, seed=1)
    write_model_repository(repository, MODEL, 1, artifact, SIGNATURE, "cpu")
    server.load_model(MODEL)
    return module


def test_http_inference_matches_in_process_torch(
    server: TritonServer, served: torch.jit.ScriptModule
) -> None:
    numeric, categorical = batch()

    probability = infer_http(server, MODEL, numeric, categorical)

    assert probability.shape == (BATCH, 1)
    assert probability.dtype == np.float32
    np.testing.assert_allclose(probability, expected(served, numeric, categorical), atol=1e-6)


def test_http_latency_is_logged(server: TritonServer, served: torch.jit.ScriptModule) -> None:
    """Not a benchmark: a sanity bound, and the number in the log for the record."""
    numeric, categorical = batch()
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        infer_http(server, MODEL, numeric, categorical)
        timings.append(time.perf_counter() - start)

    median_ms = statistics.median(timings) * 1e3
    logger.info("HTTP inference of %d rows: median %.2f ms over 30 requests", BATCH, median_ms)
    assert median_ms < 500


def test_a_bad_request_fails_alone(server: TritonServer, served: torch.jit.ScriptModule) -> None:
    numeric, categorical = batch()
    categorical[0, 0] = VOCABULARY + 5  # outside the embedding table

    with pytest.raises(InferenceServerException, match="index out of range"):
        infer_http(server, MODEL, numeric, categorical)

    categorical[0, 0] = 0
    np.testing.assert_allclose(
        infer_http(server, MODEL, numeric, categorical),
        expected(served, numeric, categorical),
        atol=1e-6,
    )


def test_grpc_inference_matches_in_process_torch(
    server: TritonServer, served: torch.jit.ScriptModule
) -> None:
    numeric, categorical = batch(seed=2)
    inputs = [
        grpcclient.InferInput(NUMERIC_INPUT, list(numeric.shape), "FP32"),
        grpcclient.InferInput(CATEGORICAL_INPUT, list(categorical.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(numeric)
    inputs[1].set_data_from_numpy(categorical)

    client = server.grpc_client()
    try:
        result = client.infer(MODEL, inputs)
    finally:
        client.close()

    probability = result.as_numpy(PROBABILITY_OUTPUT)
    np.testing.assert_allclose(probability, expected(served, numeric, categorical), atol=1e-6)


def test_new_version_loads_and_old_unloads_without_restart(
    server: TritonServer, repository: Path, tmp_path: Path
) -> None:
    name = "flight_delay_rollout"
    first = build_torchscript(tmp_path / "v1" / "model.pt", seed=1)
    second = build_torchscript(tmp_path / "v2" / "model.pt", seed=2)
    numeric, categorical = batch(seed=3)
    write_model_repository(repository, name, 1, tmp_path / "v1" / "model.pt", SIGNATURE, "cpu")
    server.load_model(name)
    np.testing.assert_allclose(
        infer_http(server, name, numeric, categorical),
        expected(first, numeric, categorical),
        atol=1e-6,
    )

    write_model_repository(repository, name, 2, tmp_path / "v2" / "model.pt", SIGNATURE, "cpu")
    server.load_model(name)

    assert server.is_model_ready(name, "2")
    assert not server.is_model_ready(name, "1")
    np.testing.assert_allclose(
        infer_http(server, name, numeric, categorical),
        expected(second, numeric, categorical),
        atol=1e-6,
    )
    server.unload_model(name)
    assert not server.is_model_ready(name)
    assert server.is_ready()  # same process throughout


def test_connect_uses_an_existing_server_without_owning_it(
    server: TritonServer, served: torch.jit.ScriptModule
) -> None:
    remote = TritonServer.connect(f"http://{server.endpoints.http}", server.endpoints.grpc)

    assert not remote.managed
    assert remote.is_model_ready(MODEL)
    remote.stop()
    assert server.is_ready()


def test_loading_an_unknown_model_is_a_clear_error(server: TritonServer) -> None:
    with pytest.raises(TritonServerError, match="could not load model 'no_such_model'"):
        server.load_model("no_such_model")


def test_a_server_that_dies_reports_its_log(repository: Path, tmp_path: Path) -> None:
    with pytest.raises(TritonServerError, match="exited with code") as caught:
        TritonServer.start_local(repository, tmp_path, extra_args=["--load-model=no_such_model"])

    assert "last lines of" in str(caught.value)
    assert "no_such_model" in str(caught.value)


def test_a_missing_repository_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(TritonServerError, match="not a directory"):
        TritonServer.start_local(tmp_path / "absent", tmp_path / "runtime")


def test_stop_kills_a_process_that_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stands in for a wedged server: SIGTERM is ignored, so stop must escalate to SIGKILL."""
    monkeypatch.setattr(triton_server, "_KILL_GRACE_S", 0.1)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", stubborn],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stdout.readline()  # SIGTERM now ignored
    wedged = TritonServer(TritonEndpoints(http="127.0.0.1:9"), process=process, stop_timeout_s=0.1)

    wedged.stop()

    assert process.returncode == -signal.SIGKILL


def test_tampered_artifact_fails_verification(
    served: torch.jit.ScriptModule, repository: Path, tmp_path: Path
) -> None:
    """The manifest recorded at registration catches a changed file in the served model."""
    manifest = file_manifest(repository / MODEL)
    copy = shutil.copytree(repository / MODEL, tmp_path / MODEL)
    verify_manifest(copy, manifest)
    with (copy / "1" / "model.pt").open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(ArtifactIntegrityError, match=re.escape("1/model.pt")) as caught:
        verify_manifest(copy, manifest)

    assert caught.value.changed == ["1/model.pt"]


def test_gpu_flavour_serves_the_same_artifact(
    served: torch.jit.ScriptModule, repository: Path, tmp_path: Path
) -> None:
    """No GPU here: check what the official container's LibTorch backend will read."""
    artifact = repository / MODEL / "1" / "model.pt"

    model_dir = write_model_repository(tmp_path, MODEL, 1, artifact, SIGNATURE, "gpu")

    config = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in config
    assert "kind: KIND_GPU" in config
    assert 'name: "NUMERIC" data_type: TYPE_FP32 dims: [5]' in config
    assert 'name: "CATEGORICAL" data_type: TYPE_INT64 dims: [3]' in config
    assert 'name: "PROBABILITY" data_type: TYPE_FP32 dims: [1]' in config
    assert config.index('"NUMERIC"') < config.index('"CATEGORICAL"')  # forward's order
    assert sorted(file_manifest(model_dir)) == ["1/model.pt", "config.pbtxt"]
    assert (model_dir / "1" / "model.pt").read_bytes() == artifact.read_bytes()
