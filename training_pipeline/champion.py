"""Score deployable models as inference runs them: TorchScript loaded on CPU, float32.

Both sides of every gate are scored this way: this run's candidate from the ``model.pt`` it
exports (so the recorded test metrics are those of the model Triton will serve, not of the bf16
network that trained on a GPU), and the champion with its OWN artifacts - its TorchScript file
and its MDT state - so the comparison is between the two deployable models.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from shared.registry import LoadedVersion
from shared.transforms import FeatureMatrices, MDTState, apply_mdt

log = logging.getLogger(__name__)


def load_exported(path: Path) -> torch.jit.ScriptModule:
    """The TorchScript file as Triton's Python backend loads it (on CPU)."""
    with warnings.catch_warnings():  # TorchScript is the fixed serving format (see model.py)
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated")
        return torch.jit.load(str(path), map_location="cpu").eval()


def score_exported(
    model_file: Path, features: FeatureMatrices, batch_size: int = 16384
) -> np.ndarray:
    """Float32 probabilities of the exported model ``model_file`` for the MDT matrices."""
    module = load_exported(model_file)
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            part = features.rows(start, start + batch_size)
            numeric = torch.from_numpy(part.numeric)
            categorical = torch.from_numpy(part.categorical)
            out.append(module(numeric, categorical).squeeze(1).numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


def score_version(
    loaded: LoadedVersion, frame: pl.DataFrame, batch_size: int = 16384
) -> np.ndarray:
    """Probabilities of ``loaded`` for the rows of ``frame`` (raw features)."""
    state = MDTState.from_json(loaded.file("mdt_state.json").read_text())
    missing = [c for c in state.input_features if c not in frame.columns]
    if missing:
        raise ValueError(f"version {loaded.version.version} needs features {missing}")
    return score_exported(loaded.file("model.pt"), apply_mdt(frame, state), batch_size)
