"""The training loop: pure schedule, deterministic sharded batches, exported interface, resume."""

from __future__ import annotations

import itertools
import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import CheckpointError
from shared.feature_store import open_feature_store
from shared.feature_view import FLIGHT_DELAY_VIEW
from shared.registry import ModelRegistry
from tests.training_fixtures import PYTHON, small_config, training_env, training_settings
from training_pipeline.champion import score_version
from training_pipeline.data import load_training_data
from training_pipeline.loop import (
    CHECKPOINT_FILE,
    epoch_batches,
    load_checkpoint,
    lr_at,
    save_checkpoint,
)
from training_pipeline.model import TabularNet, export_torchscript
from training_pipeline.pipeline import run_training

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    lrs = [lr_at(s, total_steps=100, base_lr=1.0, warmup=10, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[100] == pytest.approx(0.1)


@pytest.mark.unit
def test_process_shards_of_a_batch_are_the_global_batch() -> None:
    one = epoch_batches(1000, 64, seed=1, epoch=3)
    two = [epoch_batches(1000, 64, seed=1, epoch=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 1000 // 64
    for whole, a, b in zip(one, two[0], two[1], strict=True):
        assert len(a) == len(b) == 32
        assert sorted(torch.cat([a, b]).tolist()) == sorted(whole.tolist())
    again = epoch_batches(1000, 64, seed=1, epoch=3)
    assert all(torch.equal(x, y) for x, y in zip(one, again, strict=True))
    assert not torch.equal(one[0], epoch_batches(1000, 64, seed=1, epoch=4)[0])


@pytest.mark.unit
def test_exported_torchscript_has_the_fixed_interface(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TabularNet(n_numeric=6, cardinalities=[4, 9], hidden=(8,), dropout=0.5).eval()
    module = torch.jit.load(str(export_torchscript(net, tmp_path / "model.pt")))
    numeric = torch.randn(5, 6, dtype=torch.float32)
    categorical = torch.tensor([[0, 8], [3, 1], [1, 0], [2, 2], [3, 3]], dtype=torch.int64)
    probs = module(numeric, categorical)
    assert probs.shape == (5, 1) and probs.dtype == torch.float32
    assert bool(((probs > 0) & (probs < 1)).all())
    with torch.no_grad():
        expected = torch.sigmoid(net(numeric, categorical))
    torch.testing.assert_close(probs, expected)


KILL_AT_EPOCH_2 = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tests.training_fixtures import small_config, training_settings
    from training_pipeline.pipeline import run_training

    def die(record):
        if record.epoch == 2:  # right after the epoch-2 checkpoint, like a preempted node
            os.kill(os.getpid(), signal.SIGKILL)

    run_training(
        training_settings(Path(sys.argv[1]), Path(sys.argv[2])),
        small_config(**{"optim.epochs": 4, "model.dropout": 0.2}),
        on_epoch_end=die,
    )
    """
)


@pytest.mark.slow
@pytest.mark.integration
def test_resume_after_a_killed_run_continues_from_its_checkpoint(
    year_root: Path, tmp_path: Path
) -> None:
    config = small_config(**{"optim.epochs": 4, "model.dropout": 0.2})
    killed_root = tmp_path / "killed"
    proc = subprocess.run(
        [PYTHON, "-c", KILL_AT_EPOCH_2, str(year_root), str(killed_root)],
        cwd=REPO,
        env=training_env(year_root, killed_root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    checkpoint = torch.load(killed_root / "checkpoints" / CHECKPOINT_FILE, weights_only=False)
    assert checkpoint["loop"]["epoch"] == 2

    settings = training_settings(year_root, killed_root)
    resumed = run_training(settings, config, resume=True)
    assert resumed is not None
    assert resumed.resumed_from_epoch == 2 and resumed.epochs == 4

    straight_root = tmp_path / "straight"
    straight = run_training(training_settings(year_root, straight_root), config)
    assert straight is not None and straight.resumed_from_epoch is None
    assert resumed.lineage["data_sha256"] == straight.lineage["data_sha256"]

    store = open_feature_store(settings.store_settings())
    test = load_training_data(store, FLIGHT_DELAY_VIEW, config.windows, config.mdt).test
    p_resumed = score_version(
        ModelRegistry(settings.registry_settings()).load(resumed.version), test.frame
    )
    straight_settings = training_settings(year_root, straight_root)
    p_straight = score_version(
        ModelRegistry(straight_settings.registry_settings()).load(straight.version), test.frame
    )
    np.testing.assert_allclose(p_resumed, p_straight, atol=1e-6)


@pytest.mark.unit
def test_resume_without_a_checkpoint_is_a_typed_error(year_root: Path, tmp_path: Path) -> None:
    settings = training_settings(year_root, tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_training(settings, small_config(), resume=True)


@pytest.mark.unit
def test_resume_refuses_a_checkpoint_of_another_config_or_data(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / CHECKPOINT_FILE, {"fingerprint": "config-a:data-a"})
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE, fingerprint="config-a:data-a")
    with pytest.raises(CheckpointError, match="another config or training data"):
        load_checkpoint(tmp_path / CHECKPOINT_FILE, fingerprint="config-a:data-b")
