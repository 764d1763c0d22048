"""The MLflow model files of a version: written with no network access, pinned requirements,
a signature of the raw features, and a pyfunc that equals the TorchScript model after the MDT.
(Against the real Triton and `mlflow models serve`: tests/service/test_mlflow_model.py.)"""

from __future__ import annotations

import socket
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

from shared.mlflow_model import (  # noqa: E402
    PROBABILITY,
    REQUIREMENTS,
    predict_probabilities,
    pyfunc_input,
    save_pyfunc,
)
from shared.transforms import apply_mdt, fit_mdt  # noqa: E402
from training_pipeline.config import ModelConfig  # noqa: E402
from training_pipeline.model import TabularNet, export_torchscript  # noqa: E402

pytestmark = pytest.mark.unit

NUMERIC = ["distance", "route_delay_rate_7d"]
CATEGORICAL = ["carrier", "sched_hour"]


def feature_rows(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "distance": pl.Series(rng.integers(100, 3000, n), dtype=pl.Int16),
            "route_delay_rate_7d": pl.Series(
                [None if i % 7 == 0 else float(v) for i, v in enumerate(rng.random(n))],
                dtype=pl.Float32,
            ),
            "carrier": [["UA", "AA", "DL", None][i % 4] for i in range(n)],
            "sched_hour": pl.Series(rng.integers(5, 23, n), dtype=pl.Int8),
        }
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """A version's directory holding the MLflow model files, saved with every non-loopback
    connection refused (no requirement resolution, no hub)."""
    work = tmp_path_factory.mktemp("pyfunc")
    mdt = fit_mdt(feature_rows(400, 1), NUMERIC, CATEGORICAL)
    torch.manual_seed(3)
    net = TabularNet.from_config(ModelConfig(hidden=(8,)), mdt.n_numeric, mdt.cardinalities)
    torchscript = export_torchscript(net.eval(), work / "export" / "model.pt")
    version = work / "version"
    version.mkdir()
    (version / "model.pt").write_bytes(torchscript.read_bytes())  # a file of the version
    real_connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else "unix"
        if host not in ("127.0.0.1", "::1", "localhost", "unix"):
            raise OSError(f"network access attempted during save: {address}")
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", loopback_only)
        names = save_pyfunc(version, torchscript, mdt, feature_rows(5, 2))
    assert "MLmodel" in names and "model.pt" not in names  # beside the version's own files
    return version, mdt, torchscript


def test_requirements_are_the_installed_versions(saved: tuple[Path, Any, Any]) -> None:
    version, _, _ = saved
    pinned = (version / "requirements.txt").read_text().split()
    assert pinned == [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]
    assert not list(version.rglob("__pycache__"))  # nothing compiled left in the artifact


def test_signature_names_every_raw_feature_with_its_type(saved: tuple[Path, Any, Any]) -> None:
    version, _, _ = saved
    signature = mlflow.models.Model.load(str(version / "MLmodel")).signature
    assert signature is not None
    types = {c.name: c.type.name for c in signature.inputs.inputs}
    expected = {"distance": "double", "route_delay_rate_7d": "double"}
    assert types == expected | {"carrier": "string", "sched_hour": "long"}
    assert signature.outputs.input_names() == [PROBABILITY]


def test_pyfunc_equals_the_torchscript_model_after_the_mdt(saved: tuple[Path, Any, Any]) -> None:
    version, mdt, torchscript = saved
    rows = feature_rows(300, 9)
    pyfunc = mlflow.pyfunc.load_model(str(version))
    ours = predict_probabilities(pyfunc, rows, mdt)
    matrices = apply_mdt(rows, mdt)
    with torch.inference_mode():
        module = torch.jit.load(str(torchscript))
        direct = module(torch.from_numpy(matrices.numeric), torch.from_numpy(matrices.categorical))
    np.testing.assert_allclose(ours, direct.numpy().reshape(-1), rtol=0, atol=1e-7)
    # JSON clients send what the signature says: the example round-trips through it.
    example = pyfunc_input(rows.head(3), mdt)
    assert list(pyfunc.predict(example).columns) == [PROBABILITY]


def test_a_version_file_in_the_way_is_an_error(saved: tuple[Path, Any, Any]) -> None:
    version, mdt, torchscript = saved
    with pytest.raises(FileExistsError, match="MLmodel"):
        save_pyfunc(version, torchscript, mdt, feature_rows(5, 2))
