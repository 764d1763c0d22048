"""Helpers for the training pipeline's tests: small windows on the real 2013 backfill.

Training reads the session's read-only full-year store (``year_root`` in tests/conftest.py)
and writes MLflow, artifacts and checkpoints under its own temporary data root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from training_pipeline.config import TrainingConfig, TrainingSettings, Window, Windows

SMALL_WINDOWS = Windows(
    train=Window.parse("2013-01-01:2013-01-22"),
    validation=Window.parse("2013-01-22:2013-01-29"),
    test=Window.parse("2013-01-29:2013-02-12"),
)

SMALL = {
    "windows": SMALL_WINDOWS.model_dump(mode="json"),
    "model": {"hidden": [32], "dropout": 0.0, "max_embedding_dim": 4},
    "optim": {"epochs": 3, "batch_size": 512, "lr": 3e-3, "warmup_steps": 5, "patience": 10},
    "baseline": {"enabled": False},
    "gates": {"min_roc_auc": 0.5},
}


def small_config(**overrides: Any) -> TrainingConfig:
    """Fast to train (seconds), still learns something on real January data."""
    return TrainingConfig.model_validate(SMALL).with_overrides(**overrides)


def training_settings(year_root: Path, root: Path, **overrides: Any) -> TrainingSettings:
    return TrainingSettings(
        data_root=root,
        offline_root=str(year_root / "offline"),
        checkpoint_dir=root / "checkpoints",
        git_commit="test-commit",
        **overrides,
    )


def training_env(year_root: Path, root: Path, **extra: str) -> dict[str, str]:
    """Environment for a training subprocess (CLI or torchrun) with the same settings."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    return keep | {
        "FTI_DATA_ROOT": str(root),
        "FTI_OFFLINE_ROOT": str(year_root / "offline"),
        "FTI_CHECKPOINT_DIR": str(root / "checkpoints"),
        "FTI_GIT_COMMIT": "test-commit",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        **extra,
    }


PYTHON = sys.executable
