"""DistributedDataParallel: 2 gloo CPU processes under torchrun give the 1-process model.

With dropout off, each of the 2 processes takes half of every global batch and DDP averages the
two half-batch gradients, which is the full-batch gradient: the models agree to float tolerance.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared.feature_store import open_feature_store
from shared.feature_view import FLIGHT_DELAY_VIEW
from shared.registry import ModelRegistry
from tests.training_fixtures import PYTHON, SMALL, small_config, training_env, training_settings
from training_pipeline.champion import score_version
from training_pipeline.data import load_training_data

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _train(year_root: Path, root: Path, config_file: Path, nproc: int) -> dict[str, object]:
    launcher = (
        [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [PYTHON]
    )
    proc = subprocess.run(
        [*launcher, "-m", "training_pipeline", "train", "--config", str(config_file)],
        cwd=REPO,
        env=training_env(year_root, root, FTI_DEVICE="cpu", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def test_two_gloo_processes_train_the_same_model_as_one(year_root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "small.json"
    config_file.write_text(json.dumps(SMALL | {"optim": SMALL["optim"] | {"epochs": 2}}))
    one = _train(year_root, tmp_path / "one", config_file, nproc=1)
    two = _train(year_root, tmp_path / "two", config_file, nproc=2)
    assert one["data_sha256"] == two["data_sha256"]

    config = small_config()
    settings = training_settings(year_root, tmp_path / "one")
    store = open_feature_store(settings.store_settings())
    test = load_training_data(store, FLIGHT_DELAY_VIEW, config.windows, config.mdt).test
    probs = []
    for name, summary in (("one", one), ("two", two)):
        registry = ModelRegistry(training_settings(year_root, tmp_path / name).registry_settings())
        probs.append(score_version(registry.load(str(summary["version"])), test.frame))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)  # seen: 1.2e-7
    assert abs(one["network"]["roc_auc"] - two["network"]["roc_auc"]) < 1e-3  # type: ignore[index]
