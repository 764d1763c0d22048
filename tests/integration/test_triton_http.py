"""The online service's Triton client (`inference_pipeline.scoring.AsyncTritonClient`, over
HTTP: ``tritonclient.http.aio``) against the real server: the same answers as in-process
PyTorch, readiness, clear errors for an unknown model, a bad input and an unreachable server,
concurrent calls, and HTTP inference that keeps flowing while a model version loads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the test model is built with PyTorch")
pytest.importorskip("tritonclient", reason="needs the 'inference' extra")

import torch

from inference_pipeline.scoring import AsyncTritonClient
from inference_pipeline.triton_server import TritonServer, find_tritonserver
from shared.errors import ModelServerUnavailable
from shared.transforms import FeatureMatrices
from shared.triton_repository import ModelSignature, write_model_repository

if find_tritonserver() is None:
    pytest.skip("tritonserver binary not found (the 'inference' extra)", allow_module_level=True)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

SIGNATURE = ModelSignature(n_numeric=4, n_categorical=2)
MODEL = "http_client"


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(7, 3)
        self.head = torch.nn.Linear(4 + 6, 1)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        features = torch.cat([numeric, self.embedding(categorical).flatten(1)], dim=1)
        return torch.sigmoid(self.head(features))


def torchscript(path: Path, seed: int) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    module = torch.jit.script(Tiny().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(path))
    return module


def tensors(rows: int, seed: int = 0) -> FeatureMatrices:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, SIGNATURE.n_numeric // 2)).astype(np.float32)
    missing = rng.random((rows, SIGNATURE.n_numeric // 2)) < 0.2
    categorical = rng.integers(0, 7, size=(rows, SIGNATURE.n_categorical)).astype(np.int64)
    return FeatureMatrices(values, missing, categorical)


def expected(module: torch.jit.ScriptModule, inputs: FeatureMatrices) -> np.ndarray:
    with torch.inference_mode():
        numeric, categorical = (
            torch.from_numpy(inputs.numeric),
            torch.from_numpy(inputs.categorical),
        )
        return module(numeric, categorical).numpy().reshape(-1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path, object]]:
    repository = tmp_path_factory.mktemp("repository")
    artifact = tmp_path_factory.mktemp("artifact") / "model.pt"
    module = torchscript(artifact, seed=1)
    write_model_repository(repository, MODEL, 1, artifact, SIGNATURE, "cpu")
    with TritonServer.start_local(repository, tmp_path_factory.mktemp("runtime")) as server:
        server.load_model(MODEL)
        yield server, repository, module


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_answers_equal_in_process_torch_for_one_and_many_rows(served) -> None:  # type: ignore[no-untyped-def]
    server, _, module = served

    async def scenario() -> list[tuple[np.ndarray, np.ndarray]]:
        client = AsyncTritonClient(server.endpoints.http, 10.0)
        try:
            out = []
            for rows in (1, 3, 257):
                inputs = tensors(rows, seed=rows)
                got = await client.infer(MODEL, "1", inputs)
                out.append((got, expected(module, inputs)))
            return out
        finally:
            await client.close()

    for got, want in run(scenario()):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_readiness_and_clear_errors(served) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served

    async def scenario() -> None:
        client = AsyncTritonClient(server.endpoints.http, 10.0)
        try:
            assert await client.model_ready(MODEL, "1")
            assert not await client.model_ready(MODEL, "9")
            assert not await client.model_ready("nosuch", "1")
            with pytest.raises(ModelServerUnavailable, match="nosuch"):
                await client.infer("nosuch", "1", tensors(1))
            six = np.zeros((1, 3), np.float32), np.zeros((1, 3), bool)  # 6 numeric inputs, not 4
            wrong = FeatureMatrices(*six, tensors(1).categorical)
            with pytest.raises(ModelServerUnavailable, match="inference on http_client v1"):
                await client.infer(MODEL, "1", wrong)
            # The client stays usable after a refused request.
            assert (await client.infer(MODEL, "1", tensors(2))).shape == (2,)
        finally:
            await client.close()

    run(scenario())


def test_an_unreachable_server_is_model_server_unavailable() -> None:
    async def scenario() -> None:
        client = AsyncTritonClient("127.0.0.1:9", 1.0)  # the discard port: closed
        try:
            with pytest.raises(ModelServerUnavailable, match=r"Triton at 127\.0\.0\.1:9"):
                await client.infer(MODEL, "1", tensors(1))
            with pytest.raises(ModelServerUnavailable):
                await client.model_ready(MODEL, "1")
        finally:
            await client.close()

    run(scenario())


def test_concurrent_calls_get_their_own_answers(served) -> None:  # type: ignore[no-untyped-def]
    server, _, module = served

    async def scenario() -> list[np.ndarray]:
        client = AsyncTritonClient(server.endpoints.http, 10.0)
        try:
            return await asyncio.gather(
                *(client.infer(MODEL, "1", tensors(2, s)) for s in range(32))
            )
        finally:
            await client.close()

    for seed, got in enumerate(run(scenario())):
        np.testing.assert_allclose(got, expected(module, tensors(2, seed)), atol=1e-6)


def test_http_inference_keeps_flowing_while_a_version_loads(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Triton's HTTP frontend answers no HTTP inference while it handles an HTTP load request
    (seconds for a Python-backend model); `TritonServer` controls models over gRPC, so the
    service's HTTP inference goes on during a rollout."""
    server, repository, _ = served
    assert server.endpoints.grpc is not None
    loads: list[float] = []

    def load_new_versions() -> None:
        for version in (2, 3):
            artifact = tmp_path / f"v{version}" / "model.pt"
            torchscript(artifact, seed=version)
            write_model_repository(repository, MODEL, version, artifact, SIGNATURE, "cpu")
            began = time.monotonic()
            server.load_model(MODEL)
            loads.append(time.monotonic() - began)

    async def scenario() -> float:
        client = AsyncTritonClient(server.endpoints.http, 30.0)
        loader = threading.Thread(target=load_new_versions)
        worst = 0.0
        try:
            loader.start()
            while loader.is_alive():
                began = time.monotonic()
                await client.infer(MODEL, "", tensors(1))
                worst = max(worst, time.monotonic() - began)
            return worst
        finally:
            loader.join()
            await client.close()

    worst = run(scenario())
    assert len(loads) == 2
    # A stalled frontend would hold a call for a whole load (about 2 s here).
    assert worst < max(0.5, min(loads) / 2), (worst, loads)
