"""The model version's files: everything inference needs to rebuild the model from it alone.

::

    model.pt              TorchScript: forward(numeric f32 [B,n], categorical i64 [B,m]) -> [B,1]
    signature.json        input widths, column names, vocabulary sizes
    mdt_state.json        fitted model-dependent transforms (shared.transforms)
    feature_view.json     which features to read and how (shared.feature_view)
    reference_stats.json  training-data statistics for drift monitoring
    config.json           the resolved training config
    lineage.json          table versions, row counts, data hash, git commit
    metrics.json          test metrics (network, baseline, per origin) and the gate decision
    reliability.png       calibration of network and baseline on the test window
    triton/cpu/<model>/   Triton repository, Python backend (the CPU server we run locally)
    triton/gpu/<model>/   Triton repository, LibTorch backend on GPU (the official container)
    MLmodel               the version as an MLflow model (pyfunc: raw feature rows in,
                          probabilities out; shared.mlflow_model), with its signature,
    flight_delay_pyfunc.py  the pyfunc's code, artifacts/ (its copies of model.pt and the MDT
                          state), input_example.json, serving_input_example.json,
                          requirements.txt, python_env.yaml, conda.yaml
    manifest.json         sha256 of every file above (its own hash is a tag of the version)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from shared.mlflow_model import save_pyfunc
from shared.transforms import MDTState
from shared.triton_repository import ModelSignature, write_model_repository

TRITON_FLAVOURS = ("cpu", "gpu")


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    return path


def signature_of(mdt: MDTState) -> dict[str, Any]:
    return {
        "n_numeric": mdt.n_numeric,
        "n_categorical": mdt.n_categorical,
        "numeric_columns": mdt.numeric_columns,
        "categorical_columns": mdt.categorical_features,
        "cardinalities": mdt.cardinalities,
        "output": "probability of a departure delay > 15 min, float32 (B, 1)",
    }


def build_model_package(
    target: Path,
    *,
    torchscript: Path,
    mdt: MDTState,
    model_name: str,
    version: int,
    documents: dict[str, Any],
    images: list[Path],
    example: pl.DataFrame,
) -> Path:
    """Write the version's files into ``target`` (emptied first); returns ``target``.
    ``example``: a few feature rows, the MLflow model's input example."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(torchscript, target / "model.pt")
    (target / "mdt_state.json").write_text(mdt.to_json())
    write_json(target / "signature.json", signature_of(mdt))
    for name, data in documents.items():
        write_json(target / f"{name}.json", data)
    for image in images:
        shutil.copyfile(image, target / image.name)
    signature = ModelSignature(n_numeric=mdt.n_numeric, n_categorical=mdt.n_categorical)
    for flavour in TRITON_FLAVOURS:
        write_model_repository(
            target / "triton" / flavour,
            model_name,
            version,
            target / "model.pt",
            signature,
            flavour,  # type: ignore[arg-type]
        )
    save_pyfunc(target, target / "model.pt", mdt, example)
    return target
