"""The network: numeric features + one embedding per categorical feature -> MLP -> logit.

Training works on logits (numerically stable BCE); the exported TorchScript module wraps the
network in :class:`ProbabilityModel`, the FIXED interface the whole system relies on::

    forward(numeric: float32 (B, n_numeric), categorical: int64 (B, n_categorical))
        -> float32 (B, 1) probabilities
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the config module needs pydantic; the GPU check imports this without it
    from training_pipeline.config import ModelConfig


def embedding_dim(cardinality: int, max_dim: int) -> int:
    """fastai's rule of thumb, capped: 1.6 * n^0.56."""
    return max(1, min(max_dim, round(1.6 * cardinality**0.56)))


class TabularNet(nn.Module):
    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        max_embedding_dim: int = 16,
    ) -> None:
        super().__init__()
        dims = [embedding_dim(n, max_embedding_dim) for n in cardinalities]
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(cardinalities, dims, strict=True)
        )
        width = n_numeric + sum(dims)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.SiLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @classmethod
    def from_config(
        cls, config: ModelConfig, n_numeric: int, cardinalities: Sequence[int]
    ) -> TabularNet:
        return cls(
            n_numeric,
            cardinalities,
            hidden=config.hidden,
            dropout=config.dropout,
            max_embedding_dim=config.max_embedding_dim,
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1)."""
        parts = [numeric]
        for i, embedding in enumerate(self.embeddings):
            parts.append(embedding(categorical[:, i]))
        return self.mlp(torch.cat(parts, dim=1))


class ProbabilityModel(nn.Module):
    """The served interface: probabilities in float32, whatever precision the net ran in."""

    def __init__(self, net: TabularNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(numeric, categorical).float())


def export_torchscript(net: TabularNet, path: Path) -> Path:
    """Save a CPU, eval-mode TorchScript copy of ``net`` wrapped in :class:`ProbabilityModel`."""
    module = ProbabilityModel(copy.deepcopy(net).cpu()).eval()
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but is the format Triton's LibTorch backend and
        # our Python backend load; the interface is fixed by the serving side.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated")
        scripted = torch.jit.script(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return path
