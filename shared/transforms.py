"""Model-dependent transforms (MDT): imputation, scaling and category vocabularies.

The ONE implementation used by training, the batch job and the online service. :func:`fit_mdt`
learns a small JSON-serialisable :class:`MDTState` from the training split only; the state is
stored with the model version, and :func:`apply_mdt` turns any feature frame into the two
matrices the model takes (:attr:`FeatureMatrices.numeric` and ``categorical``):

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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
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
    def index(self) -> dict[str, int]:
        """Value -> vocabulary index (built once per state: the online path looks it up)."""
        found: dict[str, int] | None = self.__dict__.get("_index")
        if found is None:
            found = {v: i + 1 for i, v in enumerate(self.vocabulary)}
            object.__setattr__(self, "_index", found)
        return found

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

    @cached_property
    def numeric_names(self) -> tuple[str, ...]:
        """`numeric_features`, built once per state (the online path reads it per request)."""
        return tuple(self.numeric_features)

    @cached_property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(self.categorical_features)

    @cached_property
    def _scaling(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fill, mean, std) of the numeric features, built once per state: the online path
        applies the MDT per request, where rebuilding them was a fifth of the transform's cost."""
        return (
            np.array([s.fill for s in self.numeric]),
            np.array([s.mean for s in self.numeric]),
            np.array([s.std for s in self.numeric]),
        )

    @cached_property
    def _input_set(self) -> frozenset[str]:
        return frozenset(self.input_features)

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
    """The MDT's output, held as the model's inputs in parts.

    The missing-value indicators are kept as ``bool`` beside the scaled values rather than as
    float32 columns of one matrix: a byte instead of four per feature and row, which is what
    keeps the training matrices of 100x the 2013 flights (33M rows, 61 numeric features) in
    memory. :attr:`numeric` builds the model's float32 input on access, so take rows first
    (:meth:`rows`, :meth:`take`) and build it per batch, never for a whole split.
    """

    values: np.ndarray  # float32 (rows, numeric features): imputed, scaled, clipped
    missing: np.ndarray  # bool (rows, numeric features): the value was imputed
    categorical: np.ndarray  # int64 (rows, categorical features)

    def __post_init__(self) -> None:
        if self.values.shape != self.missing.shape:
            raise ValueError(
                f"values {self.values.shape} and missing indicators {self.missing.shape} "
                "must have the same shape: one indicator per numeric feature and row"
            )

    @property
    def numeric(self) -> np.ndarray:
        """The model's numeric input, float32 (rows, 2 x numeric features): the values, then the
        indicators as 0/1. A new array on every access."""
        rows, width = self.values.shape
        out = np.empty((rows, 2 * width), dtype=np.float32)
        out[:, :width] = self.values
        out[:, width:] = self.missing
        return out

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.missing.nbytes + self.categorical.nbytes)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def rows(self, start: int, stop: int) -> FeatureMatrices:
        """Rows ``start:stop`` (views, no copy)."""
        return FeatureMatrices(
            self.values[start:stop], self.missing[start:stop], self.categorical[start:stop]
        )

    def take(self, index: np.ndarray) -> FeatureMatrices:
        """The rows at ``index`` (copies)."""
        return FeatureMatrices(self.values[index], self.missing[index], self.categorical[index])


# What the fit reads: a frame in memory, or a lazy scan (e.g. Parquet files of a training split too
# large for memory: each statistic then reads only its own column).
TrainFrame = pl.DataFrame | pl.LazyFrame


def _collected(frame: TrainFrame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def _as_float(name: str, schema: pl.Schema) -> pl.Expr:
    """The column as Float64 with NaN treated as missing."""
    col = pl.col(name).cast(pl.Float64)
    return col.fill_nan(None) if schema[name].is_float() else col


def category_text(value: object) -> str | None:
    """The vocabulary key of one value, whatever its type (hour 5 -> "5", True -> "true").

    The ONE rule for both fitting and applying, written as Polars' cast to String spells
    values, so vocabularies fitted before it existed still match."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fit_numeric(frame: TrainFrame, name: str) -> NumericState:
    # One contiguous column: a sum over several chunks (one per file of a scan) rounds
    # differently, and the state must not depend on how the split was stored.
    values = _collected(frame.select(_as_float(name, frame.collect_schema()))).rechunk()
    stats = values.select(
        pl.col(name).median().alias("median"),
        pl.col(name).mean().alias("mean"),
        pl.col(name).std(ddof=0).alias("std"),
    ).row(0)
    median, mean, std = (None if v is None or math.isnan(v) else float(v) for v in stats)
    return NumericState(
        name=name,
        fill=median if median is not None else 0.0,
        mean=mean if mean is not None else 0.0,
        std=std if std is not None and std > 1e-12 else 1.0,
    )


def fit_vocabulary(
    frame: TrainFrame, name: str, *, min_frequency: int = 1, max_size: int | None = None
) -> CategoricalState:
    """Values by descending training frequency (ties by value), so the order is deterministic."""
    counts: dict[str, int] = {}
    for value, count in _collected(frame.group_by(name).len().drop_nulls(name)).iter_rows():
        text = category_text(value)
        assert text is not None
        counts[text] = counts.get(text, 0) + count
    ranked = sorted(
        (text for text, count in counts.items() if count >= min_frequency),
        key=lambda text: (-counts[text], text),
    )
    return CategoricalState(name, tuple(ranked[:max_size] if max_size else ranked))


def fit_mdt(
    train: TrainFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    min_frequency: int = 1,
    max_vocabulary: int | None = None,
    clip: float = 8.0,
) -> MDTState:
    """Fit on the TRAINING split only: validation and test rows must never reach this."""
    columns = train.collect_schema().names()
    missing = [c for c in (*numeric, *categorical) if c not in columns]
    if missing:
        raise ValueError(f"cannot fit transforms: columns {missing} are missing")
    return MDTState(
        numeric=tuple(fit_numeric(train, n) for n in numeric),
        categorical=tuple(
            fit_vocabulary(train, c, min_frequency=min_frequency, max_size=max_vocabulary)
            for c in categorical
        ),
        clip=clip,
        fitted_rows=int(_collected(train.select(pl.len())).item()),
    )


# The inputs of :func:`apply_mdt_columns`: per feature, one value per row - numbers with None or
# NaN for missing (numeric), plain values with None for missing (categorical) - as a list, a
# numpy array or a Polars series.
FeatureColumns = Mapping[str, Any]


def scale_numeric(values: np.ndarray, state: MDTState) -> tuple[np.ndarray, np.ndarray]:
    """(rows, numeric features) float64 with NaN for missing -> (scaled float32 values, missing
    bool), both (rows, numeric features)."""
    fill, mean, std = state._scaling
    missing = np.isnan(values)
    scaled = np.where(missing, fill, values)
    scaled -= mean
    scaled /= std
    np.clip(scaled, -state.clip, state.clip, out=scaled)
    return scaled.astype(np.float32), missing


def category_indices(values: Sequence[object] | pl.Series, state: CategoricalState) -> np.ndarray:
    """Vocabulary index per value; unknown and missing values get the OOV index 0.

    A long column (a Polars series) is mapped through its distinct values, so the per-value
    rule above runs once per distinct value, not once per row."""
    index = state.index
    if isinstance(values, pl.Series):
        distinct = values.unique()
        codes = category_indices(distinct.to_list(), state)
        mapped = values.replace_strict(distinct, codes, default=OOV_INDEX, return_dtype=pl.Int64)
        return mapped.fill_null(OOV_INDEX).to_numpy()
    texts = (category_text(v) for v in values)
    return np.fromiter(
        (OOV_INDEX if t is None else index.get(t, OOV_INDEX) for t in texts), np.int64, len(values)
    )


def apply_mdt_columns(columns: FeatureColumns, rows: int, state: MDTState) -> FeatureMatrices:
    """Feature columns -> the model's input matrices, row order kept."""
    if not state._input_set.issubset(columns):
        absent = [c for c in state.input_features if c not in columns]
        raise ValueError(f"features {absent} that the MDT state needs are missing")
    names = state.numeric_names
    if names:  # one conversion for all columns (None -> NaN): a third of a per-column loop
        numeric = np.array([columns[n] for n in names], dtype=np.float64).T
    else:
        numeric = np.empty((rows, 0), dtype=np.float64)
    categorical = np.empty((rows, len(state.categorical)), dtype=np.int64)
    for j, c in enumerate(state.categorical):
        categorical[:, j] = category_indices(columns[c.name], c)
    values, missing = scale_numeric(numeric, state)
    return FeatureMatrices(values, missing, categorical)


def frame_columns(frame: pl.DataFrame, state: MDTState) -> dict[str, Any]:
    """The MDT's inputs from a frame: numeric as float64 arrays (null and NaN -> NaN),
    categorical as the frame's series."""
    missing = [c for c in state.input_features if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks features {missing} that the MDT state needs")
    columns: dict[str, Any] = {
        n: frame[n].cast(pl.Float64).fill_null(np.nan).to_numpy() for n in state.numeric_features
    }
    columns |= {c: frame[c] for c in state.categorical_features}
    return columns


def apply_mdt(frame: pl.DataFrame, state: MDTState) -> FeatureMatrices:
    """Frame -> the model's input matrices, row order kept."""
    return apply_mdt_columns(frame_columns(frame, state), frame.height, state)
