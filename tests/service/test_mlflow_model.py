"""The registered champion as an MLflow model, against the real Triton serving the same version:
``mlflow.pyfunc.load_model("models:/flight_delay@champion")`` answers feature rows with Triton's
probabilities (to 1e-6), and ``mlflow models serve`` serves it over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import polars as pl
import pytest

from inference_pipeline.batch import scoring_frame
from inference_pipeline.model_artifact import ServingModel, load_serving_model
from inference_pipeline.scoring import score_with_triton, transform
from inference_pipeline.triton_server import TritonServer, free_loopback_port
from shared.feature_store import open_feature_store
from shared.mlflow_model import PROBABILITY, predict_probabilities, pyfunc_input
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    MODEL_NAME,
    SCORED_DAY,
    RegisteredModel,
    SharedTriton,
)

pytestmark = pytest.mark.integration

CHAMPION_URI = f"models:/{MODEL_NAME}@champion"


@pytest.fixture(scope="module")
def champion(  # type: ignore[no-untyped-def]
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ServingModel, pl.DataFrame, str]:
    """The champion as the service loads it, the day's feature rows (offline, point in time)
    and the registry's tracking URI."""
    settings = RegistrySettings(data_root=registered_model.root, model_name=MODEL_NAME)
    model = load_serving_model(
        ModelRegistry(settings), "champion", tmp_path_factory.mktemp("pyfunc") / "artifact"
    )
    store = open_feature_store(FeatureStoreSettings(data_root=registered_model.root))
    try:
        frame, _ = scoring_frame(store, model, SCORED_DAY)
    finally:
        store.close()
    assert frame.height > 500
    return model, frame, settings.tracking_uri


def test_pyfunc_from_the_registry_answers_as_triton(  # type: ignore[no-untyped-def]
    champion, triton: SharedTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, frame, tracking_uri = champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(CHAMPION_URI)
    assert pyfunc.metadata.get_model_info().signature is not None

    ours = predict_probabilities(pyfunc, frame, model.mdt)
    server = TritonServer.connect(triton.url)
    with server:
        served = score_with_triton(
            server.http_client(), model.triton_name, model.version, transform(frame, model.mdt), 256
        )
    assert ours.shape == served.shape == (frame.height,)
    np.testing.assert_allclose(ours, served, rtol=0, atol=1e-6)
    # Missing features (planes unknown to the store, no gust reported) are imputed alike.
    assert frame.select(pl.col(model.mdt.input_features).null_count()).sum_horizontal().item()


@pytest.fixture
def mlflow_models_serve(champion) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """``mlflow models serve`` of the champion, from this environment, on a free port."""
    _, _, tracking_uri = champion
    port = free_loopback_port()
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri}
    command = [
        mlflow_cli, "models", "serve", "-m", CHAMPION_URI,
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"mlflow models serve exited {process.returncode}: {process.stdout}")
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 120 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_mlflow_models_serve_answers_feature_rows(  # type: ignore[no-untyped-def]
    champion, mlflow_models_serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, frame, tracking_uri = champion
    rows = frame.head(64)
    body = pyfunc_input(rows, model.mdt).to_json(orient="split", index=False)
    response = httpx.post(
        f"{mlflow_models_serve}/invocations",
        content=f'{{"dataframe_split": {body}}}',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    served = np.array([p[PROBABILITY] for p in response.json()["predictions"]], np.float32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    local = predict_probabilities(mlflow.pyfunc.load_model(CHAMPION_URI), rows, model.mdt)
    np.testing.assert_allclose(served, local, rtol=0, atol=1e-6)
