"""The training loop: pure schedule, deterministic sharded batches, exported interface, resume."""

from __future__ import annotations

import itertools
import signal
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.errors import CheckpointError
from shared.feature_store import open_feature_store
from shared.feature_view import FLIGHT_DELAY_VIEW
from shared.registry import ModelRegistry
from shared.transforms import FeatureMatrices
from tests.training_fixtures import PYTHON, small_config, training_env, training_settings
from training_pipeline.champion import score_version
from training_pipeline.data import load_training_data
from training_pipeline.distributed import DistContext
from training_pipeline.loop import (
    CHECKPOINT_FILE,
    Batch,
    BatchPlan,
    EpochRecord,
    Tensors,
    TrainSteps,
    epoch_batches,
    fit,
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


CARDS = [5, 3, 11]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@dataclass(frozen=True)
class Optim:
    """The loop's optimisation settings (``OptimConfig``'s fields), small."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 5
    weight_decay: float = 0.01
    patience: int = 10
    eval_batch_size: int = 256


def synthetic(rows: int, seed: int = 0) -> Tensors:
    """A learnable problem: the label depends on two numeric columns and one category."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 3)).astype(np.float32)
    missing = rng.random((rows, 3)) < 0.1
    categorical = np.stack([rng.integers(0, c, rows) for c in CARDS], axis=1)
    logit = values[:, 0] - values[:, 1] + (categorical[:, 2] % 3 == 0)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    features = FeatureMatrices(values, missing, categorical)
    return Tensors.from_split(features, labels, torch.device("cpu"))


def new_net(dropout: float = 0.2) -> TabularNet:
    torch.manual_seed(7)
    return TabularNet(n_numeric=6, cardinalities=CARDS, hidden=(16, 8), dropout=dropout)


class RecordingTensors(Tensors):
    """Tensors that remember which rows each step gathered."""

    def rows(self, index: torch.Tensor) -> Batch:
        self.__dict__.setdefault("seen", []).append(index.tolist())
        return super().rows(index)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rows", "batch", "world"), [(1000, 64, 1), (1000, 64, 2), (1000, 60, 3), (50, 64, 2)]
)
def test_device_steps_gather_exactly_the_rows_of_epoch_batches(
    rows: int, batch: int, world: int
) -> None:
    data = synthetic(rows)
    for rank in range(world):
        train = RecordingTensors(data.values, data.missing, data.categorical, data.labels)
        plan = BatchPlan.of(rows, batch, rank=rank, world_size=world)
        net = new_net()
        TrainSteps(net, net, train, Optim(), plan).run_epoch(seed=4, epoch=2, first_step=0)
        expected = epoch_batches(rows, batch, seed=4, epoch=2, rank=rank, world_size=world)
        assert train.__dict__["seen"] == [index.tolist() for index in expected]


def previous_loop(net: TabularNet, train: Tensors, optim: Optim, *, seed: int) -> None:
    """The loop these steps replaced: host-built batches, one AdamW step per batch."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    batches = [epoch_batches(len(train), optim.batch_size, seed=seed, epoch=e) for e in (1, 2, 3)]
    total = sum(len(b) for b in batches)
    step = 0
    for epoch, indices in enumerate(batches, start=1):
        torch.manual_seed(seed * 100_003 + epoch * 101)
        for index in indices:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(
                    step,
                    total_steps=total,
                    base_lr=optim.lr,
                    warmup=optim.warmup_steps,
                    min_ratio=optim.min_lr_ratio,
                )
            batch = train.rows(index)
            loss = F.binary_cross_entropy_with_logits(
                net(batch.numeric, batch.categorical).squeeze(1), batch.labels
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


@pytest.mark.unit
def test_on_cpu_the_device_loop_trains_exactly_as_the_previous_loop(tmp_path: Path) -> None:
    train, validation = synthetic(1500), synthetic(300, seed=1)
    before = new_net()
    previous_loop(before, train, Optim(), seed=3)
    after = new_net()
    result = fit(
        after, train, validation, Optim(), seed=3, ctx=CPU, checkpoint_dir=tmp_path, fingerprint="f"
    )
    assert result.state.epoch == 3 and not result.cuda_graph
    for name, value in before.state_dict().items():
        torch.testing.assert_close(after.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.unit
def test_undoing_warm_up_steps_leaves_training_unchanged() -> None:
    """What CUDA graph capture relies on: the eager warm-up steps before capture are undone in
    place, so the run trains as if they never happened (checked here on CPU)."""
    train = synthetic(1000)
    plan = BatchPlan.of(len(train), 64)
    fresh_net, warmed_net = new_net(), new_net()
    fresh = TrainSteps(fresh_net, fresh_net, train, Optim(), plan)
    warmed = TrainSteps(warmed_net, warmed_net, train, Optim(), plan)
    snapshot = warmed._snapshot()
    for _ in range(3):
        warmed._step()
    assert not torch.equal(warmed_net.mlp[0].weight, fresh_net.mlp[0].weight)
    warmed._restore(snapshot)
    for steps in (fresh, warmed):
        torch.manual_seed(1)
        steps.run_epoch(seed=5, epoch=1, first_step=0)
    for name, value in fresh_net.state_dict().items():
        torch.testing.assert_close(warmed_net.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.unit
def test_resumed_fit_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    train, validation = synthetic(1200), synthetic(300, seed=1)
    straight = new_net()
    fit(
        straight,
        train,
        validation,
        Optim(epochs=4),
        seed=2,
        ctx=CPU,
        checkpoint_dir=tmp_path / "a",
        fingerprint="f",
    )

    def stop_after_two(record: EpochRecord) -> bool:
        return record.epoch == 2

    interrupted = new_net()
    first = fit(
        interrupted,
        train,
        validation,
        Optim(epochs=4),
        seed=2,
        ctx=CPU,
        checkpoint_dir=tmp_path / "b",
        fingerprint="f",
        on_epoch_end=stop_after_two,
    )
    assert first.stopped_by_callback and first.state.epoch == 2 and not first.stopped_early
    resumed = new_net()
    second = fit(
        resumed,
        train,
        validation,
        Optim(epochs=4),
        seed=2,
        ctx=CPU,
        checkpoint_dir=tmp_path / "b",
        fingerprint="f",
        resume=True,
    )
    assert second.resumed_from_epoch == 2 and second.state.epoch == 4
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.unit
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_captured_cuda_steps_learn_as_the_eager_ones(tmp_path: Path) -> None:
    cuda = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))

    def on_gpu(data: Tensors) -> Tensors:
        parts = (data.values, data.missing, data.categorical, data.labels)
        return Tensors(*(t.to(cuda.device) for t in parts))

    train, validation = on_gpu(synthetic(20_000)), on_gpu(synthetic(4000, seed=1))
    aucs = {}
    for graphs in (False, True):
        net = new_net().to(cuda.device)
        result = fit(
            net,
            train,
            validation,
            Optim(epochs=4, batch_size=512),
            seed=3,
            ctx=cuda,
            checkpoint_dir=tmp_path / str(graphs),
            fingerprint="f",
            cuda_graphs=graphs,
        )
        assert result.cuda_graph is graphs
        aucs[graphs] = result.state.best_val_auc
    assert aucs[True] > 0.7 and abs(aucs[True] - aucs[False]) < 0.01


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
