"""The training loop: device-resident batches, one optimisation step, evaluation, early stopping,
checkpoints.

It reads like the algorithm (nanoGPT style): for each epoch, a seeded permutation of the
training rows is cut into global batches of one size (the rows after the last full batch wait for
another epoch); each process takes its share of every batch; one step per batch at the learning
rate of the pure schedule :func:`lr_at`; then ``evaluate`` on the validation split, early stopping
on its ROC AUC, and a checkpoint (rank 0).

Everything a step reads lives on the training device (:class:`TrainSteps`): the whole split, the
epoch's permutation (``randperm`` on the device), the batch and step counters and, on CUDA, the
learning-rate schedule. A step is a fixed sequence of device operations with fixed shapes and no
host synchronisation, so the same Python runs eagerly (CPU, DDP) and, on one CUDA GPU, is
recorded once as a CUDA graph and replayed: one launch per step instead of about a hundred, each
of which had cost more host time than the GPU spent on it. The optimiser is AdamW, ``fused`` on
CUDA (one kernel for all parameters), ``foreach`` on CPU.

Determinism: the permutation of epoch ``e`` and every process's dropout seed depend only on
(seed, epoch, rank), so a run resumed from the checkpoint of epoch ``e`` continues exactly as if
it had never stopped, and with dropout off, 2 processes x batch/2 give the same gradients as
1 process x batch (DDP averages the two half-batch means). On CPU the batches are exactly those of
:func:`epoch_batches`; a CUDA generator draws other (equally random) permutations.

This module imports neither pydantic nor polars (the config and the feature matrices are only
type hints): ``benchmarks/gpu_check.py`` runs it on GPU boxes without the store's packages.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shared.errors import CheckpointError
from training_pipeline.distributed import DistContext

if TYPE_CHECKING:
    from shared.transforms import FeatureMatrices

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
# Eager steps before a CUDA graph capture: they create the optimiser state, cuBLAS workspaces and
# autograd's buffers, which must exist before capture. Their effect is undone (TrainSteps.capture).
WARMUP_STEPS = 3


class Optimisation(Protocol):
    """What the loop reads of ``training_pipeline.config.OptimConfig``."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def min_lr_ratio(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def patience(self) -> int: ...
    @property
    def eval_batch_size(self) -> int: ...


@dataclass(frozen=True)
class Batch:
    """Rows as the model takes them."""

    numeric: torch.Tensor  # float32 (rows, 2 x numeric features): values, then indicators
    categorical: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class Tensors:
    """A split's matrices on the training device, the indicators kept as bool (see
    ``shared.transforms.FeatureMatrices``); :meth:`rows` and :meth:`slice` build model batches."""

    values: torch.Tensor
    missing: torch.Tensor
    categorical: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_split(
        cls, features: FeatureMatrices, labels: np.ndarray, device: torch.device
    ) -> Tensors:
        """The whole split on ``device``, once (no copy on CPU)."""
        return cls(
            values=torch.from_numpy(features.values).to(device),
            missing=torch.from_numpy(features.missing).to(device),
            categorical=torch.from_numpy(features.categorical).to(device),
            labels=torch.tensor(labels, dtype=torch.float32, device=device),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, index: torch.Tensor) -> Batch:
        """The rows at ``index`` (a tensor on the data's device), gathered on the device."""
        return self._batch(
            self.values.index_select(0, index),
            self.missing.index_select(0, index),
            self.categorical.index_select(0, index),
            self.labels.index_select(0, index),
        )

    def slice(self, start: int, stop: int) -> Batch:
        return self._batch(
            self.values[start:stop],
            self.missing[start:stop],
            self.categorical[start:stop],
            self.labels[start:stop],
        )

    @staticmethod
    def _batch(
        values: torch.Tensor, missing: torch.Tensor, categorical: torch.Tensor, labels: torch.Tensor
    ) -> Batch:
        numeric = torch.cat([values, missing.to(values.dtype)], dim=1)
        return Batch(numeric, categorical, labels)


def lr_at(step: int, *, total_steps: int, base_lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base_lr`` at ``total_steps``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The one mixed-precision context: bf16 autocast on GPU, full float32 on CPU.

    Without autocast's weight-cast cache: a CUDA graph must not capture cached casts (and a
    30k-parameter network gains nothing from them)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random source of epoch ``epoch``'s permutation."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


@dataclass(frozen=True)
class BatchPlan:
    """How every epoch is cut: ``batches`` global batches of ``per_batch`` rows, in permutation
    order; the rows after the last full batch are left out of the epoch, so every step has the
    same shape. Process ``rank`` takes positions rank, rank + world_size, ... of each batch."""

    rows: int
    per_batch: int
    batches: int
    rank: int = 0
    world_size: int = 1

    @classmethod
    def of(cls, rows: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> BatchPlan:
        per_batch = max(world_size, batch_size - batch_size % world_size)
        batches = max(1, rows // per_batch)
        return cls(rows, min(per_batch, rows), batches, rank, world_size)

    @property
    def local_rows(self) -> int:
        """Rows this process trains on per batch."""
        return len(range(self.rank, self.per_batch, self.world_size))


def epoch_batches(
    n_rows: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This process's row indices for every global batch of ``epoch``: the rule
    :class:`TrainSteps` follows on the device, written out on the host."""
    plan = BatchPlan.of(n_rows, batch_size, rank=rank, world_size=world_size)
    order = torch.randperm(n_rows, generator=epoch_generator(seed, epoch))
    size = plan.per_batch
    return [order[b * size : (b + 1) * size][rank::world_size] for b in range(plan.batches)]


def make_optimizer(
    net: nn.Module, optim: Optimisation, device: torch.device, *, capturable: bool
) -> tuple[torch.optim.AdamW, torch.Tensor | None]:
    """AdamW, and the learning rate as a device tensor on CUDA (``None`` on CPU).

    CUDA: ``fused`` (one kernel updates every parameter), reading its learning rate from a tensor
    that the step itself sets, so a captured step needs nothing from the host; ``capturable``
    when the step will be captured. CPU: ``foreach`` with the learning rate set per step."""
    if device.type == "cuda":
        lr = torch.tensor(optim.lr, dtype=torch.float32, device=device)
        optimizer = torch.optim.AdamW(
            net.parameters(),
            lr=lr,
            weight_decay=optim.weight_decay,
            fused=True,
            capturable=capturable,
        )
        return optimizer, lr
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, foreach=True
    )
    return optimizer, None


Snapshot = tuple[dict[str, torch.Tensor], dict[torch.Tensor, dict[str, torch.Tensor]]]


class TrainSteps:
    """The optimisation steps of one process over device-resident data.

    Every tensor a step reads or writes is on the training device and keeps its address: the
    epoch's permutation, the positions of this process's rows in a batch, the batch and step
    counters, the loss sum and (CUDA) the learning-rate schedule. :meth:`_step` is therefore the
    same device work every time, with fixed shapes and no host synchronisation: it runs eagerly,
    or as one replayed CUDA graph once :meth:`capture` has recorded it.
    """

    def __init__(
        self,
        model: nn.Module,
        net: nn.Module,
        train: Tensors,
        optim: Optimisation,
        plan: BatchPlan,
        *,
        capturable: bool = False,
    ) -> None:
        device = train.labels.device
        self.model, self.net, self.train, self.plan, self.device = model, net, train, plan, device
        total = optim.epochs * plan.batches
        self.schedule = [
            lr_at(
                s,
                total_steps=total,
                base_lr=optim.lr,
                warmup=optim.warmup_steps,
                min_ratio=optim.min_lr_ratio,
            )
            for s in range(total)
        ]
        self.optimizer, self.device_lr = make_optimizer(net, optim, device, capturable=capturable)
        self.device_schedule = torch.tensor(self.schedule, dtype=torch.float32, device=device)
        self.perm = torch.arange(plan.rows, device=device)  # valid indices before any shuffle
        self.positions = torch.arange(plan.rank, plan.per_batch, plan.world_size, device=device)
        self.batch_no = torch.zeros((), dtype=torch.int64, device=device)
        self.step_no = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _step(self) -> None:
        """One optimisation step on batch ``batch_no`` at global step ``step_no``."""
        index = self.perm.index_select(0, self.positions + self.batch_no * self.plan.per_batch)
        batch = self.train.rows(index)
        if self.device_lr is not None:
            self.device_lr.copy_(self.device_schedule.index_select(0, self.step_no.view(1))[0])
        with autocast(self.device):
            logits = self.model(batch.numeric, batch.categorical).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach())
        self.batch_no.add_(1)
        self.step_no.add_(1)

    def run_epoch(self, seed: int, epoch: int, first_step: int) -> float:
        """Train one epoch starting at global step ``first_step``; the sum of its batch losses."""
        if first_step + self.plan.batches > len(self.schedule):
            raise ValueError(f"steps {first_step}.. run past the schedule's {len(self.schedule)}")
        order = torch.randperm(
            self.plan.rows, generator=epoch_generator(seed, epoch, self.device), device=self.device
        )
        self.perm.copy_(order)  # in place: a captured step reads this very tensor
        self.batch_no.zero_()
        self.step_no.fill_(first_step)
        self.loss_sum.zero_()
        for b in range(self.plan.batches):
            if self.graph is not None:
                self.graph.replay()
                continue
            if self.device_lr is None:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.schedule[first_step + b]
            self._step()
        return float(self.loss_sum)  # the epoch's only wait for the device

    def capture(self) -> bool:
        """Record :meth:`_step` as a CUDA graph; from now on each step is one replay.

        Capture needs a few eager steps first, on a side stream; they move the weights and the
        optimiser state, so both are put back in place afterwards (a fresh AdamW state is all
        zeros), and the run trains exactly as if they had never happened. If capture fails the
        loop stays eager (logged) rather than failing the run."""
        snapshot = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # eager on purpose
            for _ in range(WARMUP_STEPS):
                self.batch_no.zero_()
                self.step_no.zero_()
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snapshot)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates grads in the graph pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed; training without it: %s", exc)
            torch.cuda.synchronize(self.device)
            self._restore(snapshot)
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.graph = graph
        return True

    def _snapshot(self) -> Snapshot:
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        state = {
            p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
            for p, s in self.optimizer.state.items()
        }
        return weights, state

    @torch.no_grad()
    def _restore(self, snapshot: Snapshot) -> None:
        """Weights and optimiser state as in ``snapshot``, written in place (a captured graph
        holds their addresses); state created since then is reset to AdamW's initial zeros."""
        weights, state = snapshot
        for name, value in self.net.state_dict().items():
            value.copy_(weights[name])
        for param, param_state in self.optimizer.state.items():
            before = state.get(param, {})
            for key, value in param_state.items():
                if torch.is_tensor(value):
                    value.copy_(before[key]) if key in before else value.zero_()

    def optimizer_state(self) -> dict[str, Any]:
        """The optimiser state for a checkpoint, resumable on any device (lr as a number)."""
        saved = self.optimizer.state_dict()
        saved["param_groups"] = [{**g, "lr": float(g["lr"])} for g in saved["param_groups"]]
        return saved

    def load_optimizer_state(self, saved: dict[str, Any]) -> None:
        """Adopt a checkpoint's optimiser state, keeping this device's optimiser flags."""
        kept = [
            {k: g[k] for k in ("lr", "foreach", "fused", "capturable")}
            for g in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(saved)
        for group, flags in zip(self.optimizer.param_groups, kept, strict=True):
            group.update(flags)
        for param, param_state in self.optimizer.state.items():
            # fused/capturable AdamW counts steps on the parameter's device, the others on CPU
            where = param.device if self.device_lr is not None else torch.device("cpu")
            param_state["step"] = param_state["step"].to(device=where, dtype=torch.float32)


@torch.no_grad()
def predict(model: nn.Module, data: Tensors, batch_size: int) -> torch.Tensor:
    """Probabilities (float32, on the data's device) in row order."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.slice(start, start + batch_size)
        with autocast(data.labels.device):
            logits = model(batch.numeric, batch.categorical)
        out.append(torch.sigmoid(logits.float().squeeze(1)))
    return torch.cat(out) if out else torch.empty(0, device=data.labels.device)


def evaluate(model: nn.Module, data: Tensors, batch_size: int) -> tuple[float, float]:
    """(mean log loss, ROC AUC) over all of ``data``.

    Every process scores the whole (small) validation split with the same weights, so all ranks
    reach the same early-stopping decision without exchanging predictions.
    """
    probs = predict(model, data, batch_size).clamp(1e-7, 1 - 1e-7)
    loss = float(F.binary_cross_entropy(probs, data.labels))
    labels = data.labels.cpu().numpy()
    if labels.min() == labels.max():
        return loss, float("nan")
    return loss, float(roc_auc_score(labels, probs.float().cpu().numpy()))


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_roc_auc: float
    lr: float
    rows_per_s: float
    seconds: float


@dataclass
class LoopState:
    """Everything a resumed run needs (saved every epoch by rank 0)."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_val_auc: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[EpochRecord] = field(default_factory=list)


@dataclass(frozen=True)
class FitResult:
    best_state: dict[str, torch.Tensor]
    state: LoopState
    resumed_from_epoch: int | None
    stopped_early: bool  # patience ran out
    stopped_by_callback: bool = False  # ``on_epoch_end`` asked to stop (e.g. a pruned trial)
    cuda_graph: bool = False  # the steps ran as a replayed CUDA graph

    @property
    def rows_per_s(self) -> float:
        rates = [r.rows_per_s for r in self.state.history]
        return float(np.median(rates)) if rates else float("nan")


# Runs on rank 0 after each epoch's checkpoint (progress, live metrics, a tuner's pruning);
# returning True stops training after this epoch, on every rank.
EpochCallback = Callable[[EpochRecord], bool | None]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, staged)
    os.replace(staged, path)


def load_checkpoint(path: Path, *, fingerprint: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint at {path}")
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"cannot resume from {path}: it was written for another config or training data "
            "(run without --resume to start over)"
        )
    return payload


def fit(
    net: nn.Module,
    train: Tensors,
    validation: Tensors,
    optim: Optimisation,
    *,
    seed: int,
    ctx: DistContext,
    checkpoint_dir: Path,
    fingerprint: str,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    cuda_graphs: bool = True,
) -> FitResult:
    """Train ``net`` (already on ``ctx.device``) with early stopping; rank 0 checkpoints.

    ``fingerprint`` identifies config + data: a checkpoint only resumes under the same one.
    ``cuda_graphs``: capture the step as a CUDA graph when training on one CUDA device
    (``FTI_CUDA_GRAPHS``); CPU and DDP runs always step eagerly.
    """
    model = ctx.wrap(net)
    plan = BatchPlan.of(len(train), optim.batch_size, rank=ctx.rank, world_size=ctx.world_size)
    capture = cuda_graphs and ctx.device.type == "cuda" and not ctx.distributed
    steps = TrainSteps(model, net, train, optim, plan, capturable=capture)
    state = LoopState()
    best_state = _cpu_state(net)
    path = checkpoint_dir / CHECKPOINT_FILE
    resumed_from = None
    if resume:
        payload = load_checkpoint(path, fingerprint=fingerprint)
        net.load_state_dict(payload["model"])
        steps.load_optimizer_state(payload["optimizer"])
        state = LoopState(**payload["loop"])
        state.history = [EpochRecord(**r) for r in payload["loop"]["history"]]
        best_state = payload["best_model"]
        resumed_from = state.epoch
        log.info("resumed from %s after epoch %d", path, state.epoch)
    captured = capture and steps.capture()

    stop = False
    while state.epoch < optim.epochs and state.bad_epochs < optim.patience and not stop:
        epoch = state.epoch + 1
        torch.manual_seed(seed * 100_003 + epoch * 101 + ctx.rank)  # dropout of this epoch
        started = time.perf_counter()
        model.train()
        local_loss = steps.run_epoch(seed, epoch, state.step)
        state.step += plan.batches
        train_seconds = time.perf_counter() - started
        loss_sum, n_batches, rows = ctx.all_reduce_sum(
            [local_loss, float(plan.batches), float(plan.batches * plan.local_rows)]
        )
        val_loss, val_auc = evaluate(model, validation, optim.eval_batch_size)
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_sum / max(n_batches, 1.0),
            val_loss=val_loss,
            val_roc_auc=val_auc,
            lr=steps.schedule[state.step - 1],
            rows_per_s=rows / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - started,
        )
        state.epoch = epoch
        state.history.append(record)
        # Early stopping on validation ROC AUC: the ranking the gates judge. The validation
        # month's base rate differs from training's, so its log loss mostly measures that shift.
        if val_auc > state.best_val_auc + 1e-5:
            state.best_val_auc, state.best_epoch, state.bad_epochs = val_auc, epoch, 0
            best_state = _cpu_state(net)
        else:
            state.bad_epochs += 1
        log.info(
            "epoch %d  train loss %.4f  val loss %.4f  val auc %.4f  lr %.2e  %.0f rows/s",
            epoch,
            record.train_loss,
            val_loss,
            val_auc,
            record.lr,
            record.rows_per_s,
        )
        wants_stop = False
        if ctx.is_main:
            save_checkpoint(path, _checkpoint(net, steps, state, best_state, fingerprint))
            if on_epoch_end is not None:
                wants_stop = bool(on_epoch_end(record))
        stop = ctx.all_reduce_sum([float(wants_stop)])[0] > 0  # every rank stops together
        ctx.barrier()
    return FitResult(
        best_state=best_state,
        state=state,
        resumed_from_epoch=resumed_from,
        stopped_early=state.bad_epochs >= optim.patience,
        stopped_by_callback=stop,
        cuda_graph=captured,
    )


def _checkpoint(
    net: nn.Module,
    steps: TrainSteps,
    state: LoopState,
    best_state: dict[str, torch.Tensor],
    fingerprint: str,
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "model": _cpu_state(net),
        "optimizer": steps.optimizer_state(),
        "best_model": best_state,
        "loop": asdict(state),
    }
