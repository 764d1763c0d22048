"""The training loop: batches, one optimisation step, evaluation, early stopping, checkpoints.

It reads like the algorithm (nanoGPT style): for each epoch, a seeded permutation of the
training rows is cut into global batches; each process takes its share of every batch; one
``train_step`` per batch at the learning rate of the pure schedule :func:`lr_at`; then
``evaluate`` on the validation split, early stopping on its log loss, and a checkpoint (rank 0).

Determinism: the permutation of epoch ``e`` and every process's dropout seed depend only on
(seed, epoch, rank), so a run resumed from the checkpoint of epoch ``e`` continues exactly as if
it had never stopped, and with dropout off, 2 processes x batch/2 give the same gradients as
1 process x batch (DDP averages the two half-batch means).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shared.errors import CheckpointError
from shared.transforms import FeatureMatrices
from training_pipeline.config import OptimConfig
from training_pipeline.distributed import DistContext

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


@dataclass(frozen=True)
class Tensors:
    numeric: torch.Tensor
    categorical: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_split(
        cls, features: FeatureMatrices, labels: np.ndarray, device: torch.device
    ) -> Tensors:
        return cls(
            numeric=torch.from_numpy(features.numeric).to(device),
            categorical=torch.from_numpy(features.categorical).to(device),
            labels=torch.tensor(labels, dtype=torch.float32, device=device),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, index: torch.Tensor) -> Tensors:
        index = index.to(self.labels.device)
        return Tensors(self.numeric[index], self.categorical[index], self.labels[index])


def lr_at(step: int, *, total_steps: int, base_lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base_lr`` at ``total_steps``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The one mixed-precision context: bf16 autocast on GPU, full float32 on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_batches(
    n_rows: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This process's row indices for every global batch of ``epoch`` (last partial dropped)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_rows, generator=generator)
    per_batch = max(world_size, batch_size - batch_size % world_size)
    n_batches = max(1, n_rows // per_batch)
    return [order[b * per_batch : (b + 1) * per_batch][rank::world_size] for b in range(n_batches)]


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: Tensors, lr: float
) -> torch.Tensor:
    """One optimisation step on one batch; returns the (detached) mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(batch.labels.device):
        logits = model(batch.numeric, batch.categorical).squeeze(1)
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def predict(model: nn.Module, data: Tensors, batch_size: int) -> torch.Tensor:
    """Probabilities (float32, on the data's device) in row order."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        with autocast(data.labels.device):
            logits = model(
                data.numeric[start : start + batch_size],
                data.categorical[start : start + batch_size],
            )
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
    stopped_early: bool

    @property
    def rows_per_s(self) -> float:
        rates = [r.rows_per_s for r in self.state.history]
        return float(np.median(rates)) if rates else float("nan")


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
    optim: OptimConfig,
    *,
    seed: int,
    ctx: DistContext,
    checkpoint_dir: Path,
    fingerprint: str,
    resume: bool = False,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> FitResult:
    """Train ``net`` (already on ``ctx.device``) with early stopping; rank 0 checkpoints.

    ``fingerprint`` identifies config + data: a checkpoint only resumes under the same one.
    ``on_epoch_end`` runs on rank 0 after each checkpoint (progress, live metrics).
    """
    model = ctx.wrap(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    state = LoopState()
    best_state = _cpu_state(net)
    path = checkpoint_dir / CHECKPOINT_FILE
    resumed_from = None
    if resume:
        payload = load_checkpoint(path, fingerprint=fingerprint)
        net.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        state = LoopState(**payload["loop"])
        state.history = [EpochRecord(**r) for r in payload["loop"]["history"]]
        best_state = payload["best_model"]
        resumed_from = state.epoch
        log.info("resumed from %s after epoch %d", path, state.epoch)

    batches_per_epoch = len(
        epoch_batches(len(train), optim.batch_size, seed=seed, epoch=0, world_size=ctx.world_size)
    )
    total_steps = optim.epochs * batches_per_epoch
    while state.epoch < optim.epochs and state.bad_epochs < optim.patience:
        epoch = state.epoch + 1
        torch.manual_seed(seed * 100_003 + epoch * 101 + ctx.rank)  # dropout of this epoch
        started = time.perf_counter()
        model.train()
        losses = []
        batches = epoch_batches(
            len(train),
            optim.batch_size,
            seed=seed,
            epoch=epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        lr = optim.lr
        for index in batches:
            lr = lr_at(
                state.step,
                total_steps=total_steps,
                base_lr=optim.lr,
                warmup=optim.warmup_steps,
                min_ratio=optim.min_lr_ratio,
            )
            losses.append(train_step(model, optimizer, train.rows(index), lr))
            state.step += 1
        local_loss = float(torch.stack(losses).sum()) if losses else 0.0
        train_seconds = time.perf_counter() - started
        loss_sum, n_batches, rows = ctx.all_reduce_sum(
            [local_loss, float(len(losses)), float(sum(len(i) for i in batches))]
        )
        val_loss, val_auc = evaluate(model, validation, optim.eval_batch_size)
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_sum / max(n_batches, 1.0),
            val_loss=val_loss,
            val_roc_auc=val_auc,
            lr=lr,
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
            lr,
            record.rows_per_s,
        )
        if ctx.is_main:
            save_checkpoint(path, _checkpoint(net, optimizer, state, best_state, fingerprint))
            if on_epoch_end is not None:
                on_epoch_end(record)
        ctx.barrier()
    return FitResult(
        best_state=best_state,
        state=state,
        resumed_from_epoch=resumed_from,
        stopped_early=state.bad_epochs >= optim.patience,
    )


def _checkpoint(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: LoopState,
    best_state: dict[str, torch.Tensor],
    fingerprint: str,
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "model": _cpu_state(net),
        "optimizer": optimizer.state_dict(),
        "best_model": best_state,
        "loop": asdict(state),
    }
