"""A model version as an MLflow model (pyfunc flavour): feature rows in, probabilities out.

Beside the Triton repositories and inside the same sha256 manifest, every version carries an
``MLmodel`` at its root, so the MLflow tools work on it as on any MLflow model:
``mlflow.pyfunc.load_model("models:/flight_delay@champion")``, ``mlflow models serve -m
models:/flight_delay@champion --env-manager local``, a signature and an input example in the UI.

The pyfunc takes the feature view's raw feature columns (what the point-in-time join and the
on-demand features give: ``distance``, ``route_delay_rate_7d``, ``carrier``, ``sched_hour``, ...,
nulls where a feature is missing), applies the version's MDT state with the one implementation
of :mod:`shared.transforms`, and runs the version's TorchScript file, the one Triton serves: its
probabilities equal Triton's.

It is logged as *code* (MLflow's "models from code": :mod:`shared.flight_delay_pyfunc` is copied
into the version and run at load), not pickled. Loading needs this project's ``shared`` package
and the pinned libraries of ``requirements.txt``: serve from the project's environment
(``--env-manager local``) or from one of its images. Saving resolves nothing over the network:
the requirements are the installed versions, written out explicitly.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import polars as pl
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from shared.transforms import MDTState, apply_mdt

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

TORCHSCRIPT_ARTIFACT = "torchscript"
MDT_ARTIFACT = "mdt_state"
PROBABILITY = "probability"
# The libraries the pyfunc imports when it loads and predicts (pinned to the installed versions).
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "polars", "pyarrow")
_CODE = Path(__file__).with_name("flight_delay_pyfunc.py")


class FlightDelayModel(PythonModel):
    """Raw feature rows -> MDT -> TorchScript -> probability of a departure delay > 15 min."""

    def load_context(self, context: PythonModelContext) -> None:
        import torch

        self.mdt = MDTState.from_json(Path(context.artifacts[MDT_ARTIFACT]).read_text())
        self.module = torch.jit.load(context.artifacts[TORCHSCRIPT_ARTIFACT], map_location="cpu")
        self.module.eval()

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        import torch

        matrices = apply_mdt(pl.from_pandas(model_input), self.mdt)
        with torch.inference_mode():
            probabilities = self.module(
                torch.from_numpy(matrices.numeric), torch.from_numpy(matrices.categorical)
            )
        return pd.DataFrame({PROBABILITY: probabilities.numpy().reshape(-1)})


def _column_type(dtype: pl.DataType) -> str:
    """The MLflow column type of a raw categorical feature (numeric ones are all double)."""
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_integer():
        return "long"
    return "string"


def model_signature(mdt: MDTState, dtypes: Mapping[str, pl.DataType]) -> ModelSignature:
    """Inputs: every raw feature the MDT reads, numeric ones as double (NaN: missing, imputed),
    categorical ones as their feature view type. Output: the probability."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs: list[Any] = [ColSpec("double", name) for name in mdt.numeric_features]
    inputs += [ColSpec(_column_type(dtypes[name]), name) for name in mdt.categorical_features]
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([ColSpec("float", PROBABILITY)]),
    )


def pyfunc_input(frame: pl.DataFrame, mdt: MDTState) -> pd.DataFrame:
    """The pyfunc's input for feature rows (a feature view frame): the MDT's columns, typed as
    :func:`model_signature` declares them."""
    numeric = [pl.col(name).cast(pl.Float64) for name in mdt.numeric_features]
    categorical = [
        pl.col(name)
        if frame.schema[name].is_integer() or frame.schema[name] == pl.Boolean
        # Categorical or Enum features travel as plain text.
        else pl.col(name).cast(pl.String)
        for name in mdt.categorical_features
    ]
    return frame.select(*numeric, *categorical).to_pandas()


def pip_requirements() -> list[str]:
    """The installed versions of what the pyfunc imports (no resolution, no network)."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def save_pyfunc(target: Path, torchscript: Path, mdt: MDTState, example: pl.DataFrame) -> list[str]:
    """Write the MLflow model files of this version into ``target`` (a version's directory,
    already holding other files); returns the names written. ``example`` holds feature rows
    (a few of the test window): the input example, and the feature types of the signature."""
    with tempfile.TemporaryDirectory(prefix="fti-pyfunc-") as tmp:
        state = Path(tmp) / "mdt_state.json"
        state.write_text(mdt.to_json())
        staged = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(staged),
            python_model=str(_CODE),
            artifacts={TORCHSCRIPT_ARTIFACT: str(torchscript), MDT_ARTIFACT: str(state)},
            signature=model_signature(mdt, example.schema),
            input_example=pyfunc_input(example, mdt),
            pip_requirements=pip_requirements(),
            metadata={"inputs": "raw feature rows of the model's feature view (see MDT state)"},
        )
        # Loading the code to check the example compiles it: no bytecode in the artifact.
        for cache in staged.rglob("__pycache__"):
            shutil.rmtree(cache)
        names = sorted(p.name for p in staged.iterdir())
        clashes = [n for n in names if (target / n).exists()]
        if clashes:
            raise FileExistsError(f"MLflow model files {clashes} would replace files of {target}")
        for name in names:
            shutil.move(staged / name, target / name)
    return names


def predict_probabilities(model: Any, frame: pl.DataFrame, mdt: MDTState) -> np.ndarray:
    """Probabilities of a loaded pyfunc (``mlflow.pyfunc.load_model``) for feature rows."""
    answer = model.predict(pyfunc_input(frame, mdt))
    return np.asarray(answer[PROBABILITY], dtype=np.float32)
