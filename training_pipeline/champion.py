"""Score a registered model version on this run's test window (for the no-regression gate).

The version is scored with its OWN artifacts - its TorchScript file and its MDT state - exactly
as inference would run it, so the comparison is between the two deployable models.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import polars as pl
import torch

from shared.registry import LoadedVersion
from shared.transforms import MDTState, apply_mdt

log = logging.getLogger(__name__)


def score_version(
    loaded: LoadedVersion, frame: pl.DataFrame, batch_size: int = 16384
) -> np.ndarray:
    """Probabilities of ``loaded`` for the rows of ``frame`` (raw features)."""
    state = MDTState.from_json(loaded.file("mdt_state.json").read_text())
    missing = [c for c in state.input_features if c not in frame.columns]
    if missing:
        raise ValueError(f"version {loaded.version.version} needs features {missing}")
    matrices = apply_mdt(frame, state)
    with warnings.catch_warnings():  # TorchScript is the fixed serving format (see model.py)
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated")
        module = torch.jit.load(str(loaded.file("model.pt")), map_location="cpu").eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(matrices), batch_size):
            numeric = torch.from_numpy(matrices.numeric[start : start + batch_size])
            categorical = torch.from_numpy(matrices.categorical[start : start + batch_size])
            out.append(module(numeric, categorical).squeeze(1).numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)
