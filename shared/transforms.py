"""Model-dependent transforms (MDT): imputation, scaling and category vocabularies.

The ONE implementation used by training, the batch job and the online service. :func:`fit_mdt`
learns a small JSON-serialisable :class:`MDTState` from the training split only; the state is
stored with the model version, and :func:`apply_mdt` turns any feature frame into the two
matrices the model takes:

- ``numeric`` float32 (rows, 2 x numeric features): each feature imputed with its training median,
  standardised with its training mean and standard deviation and clipped to +-``clip``, followed
  by one missing-value indicator per feature (online lookups can miss any feature, so every
  feature has one, whether or not it was missing in training);
- ``categorical`` int64 (rows, categorical features): the index of the value in the feature's
  vocabulary, 1..n; index 0 is out-of-vocabulary and missing. Values seen fewer than
  ``min_frequency`` times in training map to 0 too, so the model learns what "unknown" means.

Both functions are pure and deterministic: no clock, no randomness, no global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

FORMAT = "fti-mdt/1"
OOV_INDEX = 0


@dataclass(frozen=True)
class NumericState:
    name: str
    fill: float  # training median, used for missing values
    mean: float
    std: float  # 1.0 when the training column is constant


@dataclass(frozen=True)
class CategoricalState:
    name: str
    vocabulary: tuple[str, ...]  # position i has index i + 1; OOV/missing is 0

    @property
    def cardinality(self) -> int:
        """Embedding rows needed: the vocabulary plus the OOV index."""
        return len(self.vocabulary) + 1


@dataclass(frozen=True)
class MDTState:
    numeric: tuple[NumericState, ...]
    categorical: tuple[CategoricalState, ...]
    clip: float = 8.0
    fitted_rows: int = 0
    format: str = field(default=FORMAT)

    @property
    def numeric_features(self) -> list[str]:
        return [s.name for s in self.numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [s.name for s in self.categorical]

    @property
    def input_features(self) -> list[str]:
        """Feature columns a frame must have for :func:`apply_mdt`."""
        return [*self.numeric_features, *self.categorical_features]

    @property
    def numeric_columns(self) -> list[str]:
        """Names of the numeric matrix's columns, in order."""
        return [*self.numeric_features, *(f"{n}__missing" for n in self.numeric_features)]

    @property
    def n_numeric(self) -> int:
        return 2 * len(self.numeric)

    @property
    def n_categorical(self) -> int:
        return len(self.categorical)

    @property
    def cardinalities(self) -> list[int]:
        return [s.cardinality for s in self.categorical]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MDTState:
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported MDT state format {data.get('format')!r}, want {FORMAT}")
        return cls(
            numeric=tuple(NumericState(**n) for n in data["numeric"]),
            categorical=tuple(
                CategoricalState(c["name"], tuple(c["vocabulary"])) for c in data["categorical"]
            ),
            clip=float(data["clip"]),
            fitted_rows=int(data["fitted_rows"]),
        )

    @classmethod
    def from_json(cls, text: str) -> MDTState:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class FeatureMatrices:
    numeric: np.ndarray  # float32 (rows, n_numeric)
    categorical: np.ndarray  # int64 (rows, n_categorical)

    def __len__(self) -> int:
        return int(self.numeric.shape[0])


def _as_float(name: str, frame: pl.DataFrame) -> pl.Expr:
    """The column as Float64 with NaN treated as missing."""
    col = pl.col(name).cast(pl.Float64)
    return col.fill_nan(None) if frame.schema[name].is_float() else col


def _category_text(name: str) -> pl.Expr:
    """Vocabulary keys are strings whatever the column type (hour 5 -> "5")."""
    return pl.col(name).cast(pl.String)


def fit_numeric(frame: pl.DataFrame, name: str) -> NumericState:
    stats = frame.select(
        _as_float(name, frame).median().alias("median"),
        _as_float(name, frame).mean().alias("mean"),
        _as_float(name, frame).std(ddof=0).alias("std"),
    ).row(0)
    median, mean, std = (None if v is None or math.isnan(v) else float(v) for v in stats)
    return NumericState(
        name=name,
        fill=median if median is not None else 0.0,
        mean=mean if mean is not None else 0.0,
        std=std if std is not None and std > 1e-12 else 1.0,
    )


def fit_vocabulary(
    frame: pl.DataFrame, name: str, *, min_frequency: int = 1, max_size: int | None = None
) -> CategoricalState:
    """Values by descending training frequency (ties by value), so the order is deterministic."""
    counts = (
        frame.select(_category_text(name).alias("value"))
        .drop_nulls()
        .group_by("value")
        .len()
        .filter(pl.col("len") >= min_frequency)
        .sort(["len", "value"], descending=[True, False])
    )
    values = counts["value"].to_list()
    return CategoricalState(name, tuple(values[:max_size] if max_size else values))


def fit_mdt(
    train: pl.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    min_frequency: int = 1,
    max_vocabulary: int | None = None,
    clip: float = 8.0,
) -> MDTState:
    """Fit on the TRAINING split only: validation and test rows must never reach this."""
    missing = [c for c in (*numeric, *categorical) if c not in train.columns]
    if missing:
        raise ValueError(f"cannot fit transforms: columns {missing} are missing")
    return MDTState(
        numeric=tuple(fit_numeric(train, n) for n in numeric),
        categorical=tuple(
            fit_vocabulary(train, c, min_frequency=min_frequency, max_size=max_vocabulary)
            for c in categorical
        ),
        clip=clip,
        fitted_rows=train.height,
    )


def numeric_expressions(state: MDTState, frame: pl.DataFrame) -> list[pl.Expr]:
    scaled = [
        ((_as_float(s.name, frame).fill_null(s.fill) - s.mean) / s.std)
        .clip(-state.clip, state.clip)
        .cast(pl.Float32)
        .alias(s.name)
        for s in state.numeric
    ]
    indicators = [
        _as_float(s.name, frame).is_null().cast(pl.Float32).alias(f"{s.name}__missing")
        for s in state.numeric
    ]
    return [*scaled, *indicators]


def categorical_expressions(state: MDTState) -> list[pl.Expr]:
    return [
        _category_text(s.name)
        .replace_strict(
            list(s.vocabulary),
            list(range(1, s.cardinality)),
            default=OOV_INDEX,
            return_dtype=pl.Int64,
        )
        .fill_null(OOV_INDEX)
        .alias(s.name)
        for s in state.categorical
    ]


def transform_frame(frame: pl.DataFrame, state: MDTState) -> pl.DataFrame:
    """The transformed features as a frame (numeric columns, then categorical indices)."""
    missing = [c for c in state.input_features if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks features {missing} that the MDT state needs")
    return frame.select([*numeric_expressions(state, frame), *categorical_expressions(state)])


def apply_mdt(frame: pl.DataFrame, state: MDTState) -> FeatureMatrices:
    """Frame -> (numeric float32, categorical int64) matrices, row order kept."""
    out = transform_frame(frame, state)
    numeric = out.select(state.numeric_columns).to_numpy()
    categorical = out.select(state.categorical_features).to_numpy()
    return FeatureMatrices(
        numeric=np.ascontiguousarray(numeric, dtype=np.float32).reshape(frame.height, -1),
        categorical=np.ascontiguousarray(categorical, dtype=np.int64).reshape(frame.height, -1),
    )
