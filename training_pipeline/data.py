"""Select, filter, join, split: the training data of one run, with its lineage, in bounded memory.

The feature view is read for the run's date range ``chunk_days`` at a time (every chunk pinned to
the table versions current at the start); cancelled flights are counted out (no departure, so no
label); each chunk's rows are split by local flight date and written to Parquet files in a
temporary folder, which the splits keep (and delete once nothing refers to them). The MDT is then
fitted on the training split only, reading one column at a time, and the model's matrices are
filled block by block. So memory holds one chunk's joined frame, or the matrices plus one chunk
file: with the default view (61 numeric features, their missing indicators as bytes, 8 category
indices) about 375 bytes a row, so 100x the 2013 flights (33.7M) builds in under 16 GiB. The
result does not depend on ``chunk_days``: the same rows in the same order, the same MDT, the same
``data_sha256`` as one read of the whole range.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shared.errors import ConfigurationError
from shared.feature_store import FeatureStore, open_feature_store
from shared.feature_view import (
    FLIGHT_DELAY_VIEW,
    FeatureView,
    build_training_frame,
    pinned_versions,
)
from shared.transforms import FeatureMatrices, MDTState, apply_mdt, fit_mdt
from training_pipeline.config import (
    MDTConfig,
    TrainingConfig,
    TrainingSettings,
    Window,
    Windows,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SEARCH_SPLITS = ("train", "validation")  # what a hyperparameter search reads
DEFAULT_CHUNK_DAYS = 31
BLOCK_ROWS = 262_144  # rows turned into matrices at a time


class SpillFolder:
    """A temporary folder of Parquet files, deleted when the last object using it is gone."""

    def __init__(self, parent: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="fti-training-data-", dir=parent))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def write(self, frame: pl.DataFrame, name: str) -> Path:
        path = self.path / f"{name}.parquet"
        frame.write_parquet(path, compression="lz4", statistics=False)
        return path


@dataclass(frozen=True)
class Split:
    name: str
    window: Window
    # The split's rows (entity columns, raw features, label) in order, one file per chunk.
    files: tuple[Path, ...]
    rows: int
    features: FeatureMatrices  # after the MDT
    labels: np.ndarray  # float32 (rows,)
    spill: SpillFolder = field(repr=False, compare=False)  # keeps ``files`` alive

    @property
    def base_rate(self) -> float:
        return float(self.labels.mean()) if self.rows else float("nan")

    def scan(self) -> pl.LazyFrame:
        return pl.scan_parquet(list(self.files))

    @property
    def frame(self) -> pl.DataFrame:
        """Every row and column in memory: for small windows. At scale read :meth:`column`,
        :meth:`frames` (a chunk at a time) or :meth:`sample`."""
        return pl.read_parquet(list(self.files))

    def column(self, name: str) -> pl.Series:
        return self.scan().select(name).collect().to_series()

    def frames(self, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        """The rows one chunk at a time, in order."""
        for path in self.files:
            yield pl.read_parquet(path, columns=columns)

    def sample(
        self, size: int, *, seed: int, columns: list[str] | None = None
    ) -> tuple[np.ndarray, pl.DataFrame]:
        """(row indices, rows) of a uniform sample of ``size`` rows in row order; every row when
        the split has no more than ``size``."""
        if self.rows <= size:
            return np.arange(self.rows), pl.concat(list(self.frames(columns)))
        picked = np.sort(np.random.default_rng(seed).choice(self.rows, size, replace=False))
        parts, offset = [], 0
        for frame in self.frames(columns):
            local = picked[(picked >= offset) & (picked < offset + frame.height)] - offset
            parts.append(frame[local])
            offset += frame.height
        return picked, pl.concat(parts)


@dataclass(frozen=True)
class Lineage:
    """What the model was trained on, precisely enough to read it back and retrain."""

    feature_view: dict[str, Any]
    feature_group_versions: dict[str, int]
    table_versions: dict[str, int]
    rows_read: int
    cancelled: int
    rows: dict[str, int]
    data_sha256: str
    windows: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Flat string tags for the MLflow run and model version."""
        return {
            "data_sha256": self.data_sha256,
            "feature_view": f"{self.feature_view['name']}_v{self.feature_view['version']}",
            **{f"table_version.{g}": str(v) for g, v in sorted(self.table_versions.items())},
            **{
                f"feature_group_version.{g}": str(v)
                for g, v in sorted(self.feature_group_versions.items())
            },
            **{f"rows.{s}": str(n) for s, n in self.rows.items()},
            "rows.cancelled": str(self.cancelled),
            **{f"window.{s}": w for s, w in self.windows.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_view": self.feature_view,
            "feature_group_versions": self.feature_group_versions,
            "table_versions": self.table_versions,
            "rows_read": self.rows_read,
            "cancelled": self.cancelled,
            "rows": self.rows,
            "data_sha256": self.data_sha256,
            "windows": self.windows,
        }


@dataclass(frozen=True)
class TrainingData:
    train: Split
    validation: Split
    test: Split
    mdt: MDTState
    lineage: Lineage
    # Wall seconds of each step of the build: join (feature view + spill), mdt_fit, matrices.
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    def splits(self) -> tuple[Split, Split, Split]:
        return (self.train, self.validation, self.test)


@dataclass(frozen=True)
class SearchData:
    """What a hyperparameter search trains and scores on: no test split at all."""

    train: Split
    validation: Split
    mdt: MDTState
    lineage: Lineage
    seconds: dict[str, float] = field(default_factory=dict, compare=False)


class FrameDigest:
    """A content hash of the training data: same columns, rows and values in the same order ->
    same hash, however the rows arrive in chunks.

    Rows are hashed in blocks of ``BLOCK_ROWS`` counted from the first row (a chunk's tail waits
    for the next chunk), each block column by column in a canonical form that no library encoder
    decides: the null mask, then the values as little-endian fixed-width numbers (dates and
    times as their integer counts; nulls as 0), or for text the UTF-8 byte lengths and bytes.
    (Format 2; format 1 hashed CSV text, which cost more than the rest of the data build.)
    """

    FORMAT = "fti-data-hash/2"
    BLOCK_ROWS = 65_536

    def __init__(self) -> None:
        self._digest = hashlib.sha256(self.FORMAT.encode())
        self._schema: list[tuple[str, pl.DataType]] | None = None
        self._tail: pl.DataFrame | None = None

    def update(self, frame: pl.DataFrame) -> None:
        schema = list(frame.schema.items())
        if self._schema is None:
            self._schema = schema
            self._digest.update(repr(schema).encode())
        elif schema != self._schema:
            raise ValueError(f"chunk schema {schema} differs from the first chunk's")
        rows = frame if self._tail is None else pl.concat([self._tail, frame])
        whole = rows.height - rows.height % self.BLOCK_ROWS
        for start in range(0, whole, self.BLOCK_ROWS):
            _hash_block(self._digest, rows.slice(start, self.BLOCK_ROWS))
        self._tail = rows.slice(whole)

    def hexdigest(self) -> str:
        digest = self._digest.copy()
        if self._tail is not None and self._tail.height:
            _hash_block(digest, self._tail)
        return digest.hexdigest()


def _hash_block(digest: Any, block: pl.DataFrame) -> None:
    for series in block.get_columns():
        digest.update(series.is_null().to_numpy().tobytes())
        dtype = series.dtype
        if dtype == pl.String:
            text = series.fill_null("")
            digest.update(text.str.len_bytes().to_numpy().astype("<u4").tobytes())
            digest.update("".join(text.to_list()).encode())
        elif dtype.is_numeric() or dtype == pl.Boolean:
            values = series.fill_null(0).to_numpy()
            digest.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
        elif dtype.is_temporal():
            values = series.to_physical().fill_null(0).to_numpy()
            digest.update(values.astype("<i8").tobytes())
        else:  # no such column in the feature view today; CSV text keeps it well defined
            buffer = io.BytesIO()
            series.to_frame().write_csv(buffer, include_header=False)
            digest.update(buffer.getvalue())


def frame_sha256(frame: pl.DataFrame) -> str:
    digest = FrameDigest()
    digest.update(frame)
    return digest.hexdigest()


def split_by_window(frame: pl.DataFrame, window: Window) -> pl.DataFrame:
    return frame.filter(
        (pl.col("flight_date") >= window.start) & (pl.col("flight_date") < window.end)
    )


def date_chunks(start: date, end: date, days: int) -> Iterator[tuple[date, date]]:
    """[start, end) in consecutive windows of ``days`` days (the last one shorter)."""
    while start < end:
        stop = min(end, start + timedelta(days=days))
        yield start, stop
        start = stop


@dataclass
class _Spilled:
    """What the join pass leaves: per split its files and row count, and the counts."""

    files: dict[str, list[Path]]
    rows: dict[str, int]
    rows_read: int = 0
    unlabeled: int = 0


def _join_and_spill(
    store: FeatureStore,
    view: FeatureView,
    windows: Windows,
    pinned: Mapping[str, int],
    spill: SpillFolder,
    digest: FrameDigest,
    chunk_days: int,
    names: tuple[str, ...] = SPLITS,
) -> _Spilled:
    """Pass 1: the feature view a chunk at a time; each chunk's split rows to Parquet."""
    out = _Spilled(files={n: [] for n in names}, rows=dict.fromkeys(names, 0))
    # Read up to the end of the last split asked for: a search never reads the test window.
    last: Window = getattr(windows, names[-1])
    chunks = list(date_chunks(windows.train.start, last.end, chunk_days))
    for i, (start, end) in enumerate(chunks):
        labeled = build_training_frame(store, view, start, end, versions=pinned)
        out.rows_read += labeled.rows_read
        out.unlabeled += labeled.unlabeled
        for name in names:  # splits run forward in time, so this order is the frame's order
            part = split_by_window(labeled.frame, getattr(windows, name))
            if part.is_empty():
                continue
            digest.update(part)
            out.files[name].append(spill.write(part, f"{name}-{i:04d}"))
            out.rows[name] += part.height
        log.info("training data: chunk %d/%d (%s..%s) joined", i + 1, len(chunks), start, end)
    return out


def _blocks(files: list[Path], columns: list[str]) -> Iterator[pl.DataFrame]:
    for path in files:
        yield from pl.read_parquet(path, columns=columns).iter_slices(BLOCK_ROWS)


def _matrices(files: list[Path], rows: int, mdt: MDTState, label: str) -> tuple[
    FeatureMatrices, np.ndarray
]:  # fmt: skip
    """Pass 2: the MDT applied block by block into preallocated matrices."""
    width = len(mdt.numeric)
    values = np.empty((rows, width), dtype=np.float32)
    missing = np.empty((rows, width), dtype=bool)
    categorical = np.empty((rows, mdt.n_categorical), dtype=np.int64)
    labels = np.empty(rows, dtype=np.float32)
    at = 0
    for block in _blocks(files, [*mdt.input_features, label]):
        matrices = apply_mdt(block, mdt)
        stop = at + block.height
        values[at:stop] = matrices.values
        missing[at:stop] = matrices.missing
        categorical[at:stop] = matrices.categorical
        labels[at:stop] = block[label].cast(pl.Float32).to_numpy()
        at = stop
        # A block is a view of its whole chunk file: let go of it before the next file is read,
        # or two chunks' frames are held at once.
        del block, matrices
    return FeatureMatrices(values, missing, categorical), labels


def load_training_data(
    store: FeatureStore,
    view: FeatureView,
    windows: Windows,
    mdt_config: MDTConfig,
    *,
    versions: dict[str, int] | None = None,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
    spill_parent: Path | None = None,
) -> TrainingData:
    """The run's splits, MDT and lineage; ``chunk_days`` bounds memory, not the result."""
    built = _build_splits(
        store, view, windows, mdt_config, SPLITS, versions, chunk_days, spill_parent
    )
    return TrainingData(**built.splits, mdt=built.mdt, lineage=built.lineage, seconds=built.seconds)


def load_search_data(
    store: FeatureStore,
    view: FeatureView,
    windows: Windows,
    mdt_config: MDTConfig,
    *,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
) -> SearchData:
    """The training and validation splits only, for a hyperparameter search: the feature store
    is never read for the test window, so no trial can be chosen by it."""
    built = _build_splits(store, view, windows, mdt_config, SEARCH_SPLITS, None, chunk_days, None)
    return SearchData(**built.splits, mdt=built.mdt, lineage=built.lineage, seconds=built.seconds)


@dataclass(frozen=True)
class _Built:
    splits: dict[str, Split]
    mdt: MDTState
    lineage: Lineage
    seconds: dict[str, float]


def _build_splits(
    store: FeatureStore,
    view: FeatureView,
    windows: Windows,
    mdt_config: MDTConfig,
    names: tuple[str, ...],
    versions: dict[str, int] | None,
    chunk_days: int,
    spill_parent: Path | None,
) -> _Built:
    """The splits ``names`` (from train on, in time order), the MDT fitted on train, lineage."""
    started = time.perf_counter()
    pinned = dict(versions) if versions is not None else pinned_versions(store, view)
    spill = SpillFolder(spill_parent)
    digest = FrameDigest()
    spilled = _join_and_spill(store, view, windows, pinned, spill, digest, chunk_days, names)
    log.info(
        "read %d flights, %d cancelled (no label) left out, table versions %s",
        spilled.rows_read,
        spilled.unlabeled,
        pinned,
    )
    empty = [name for name in names if not spilled.rows[name]]
    if empty:
        named = ", ".join(f"{name} {getattr(windows, name)}" for name in empty)
        raise ConfigurationError(
            f"no labeled flights in the {named} window{'s' if len(empty) > 1 else ''} (START:END, "
            "END exclusive); give windows the feature store holds (--train/--validation/--test) "
            "or backfill those days with the feature pipeline first"
        )
    seconds = {"join": time.perf_counter() - started}
    started = time.perf_counter()
    # Fitted on the training split ONLY: validation and test statistics never leak into it.
    mdt = fit_mdt(
        pl.scan_parquet(spilled.files["train"]),
        view.numeric,
        view.categorical,
        min_frequency=mdt_config.min_frequency,
        max_vocabulary=mdt_config.max_vocabulary,
        clip=mdt_config.clip,
    )
    seconds["mdt_fit"] = time.perf_counter() - started
    started = time.perf_counter()
    splits = {}
    for name in names:
        features, labels = _matrices(spilled.files[name], spilled.rows[name], mdt, view.label)
        splits[name] = Split(
            name=name,
            window=getattr(windows, name),
            files=tuple(spilled.files[name]),
            rows=spilled.rows[name],
            features=features,
            labels=labels,
            spill=spill,
        )
    seconds["matrices"] = time.perf_counter() - started
    log.info(
        "training data: %s rows; join %.1f s, MDT fit %.1f s, matrices %.1f s",
        spilled.rows,
        *seconds.values(),
    )
    lineage = Lineage(
        feature_view=view.describe(),
        feature_group_versions={g.name: g.version for g in view.groups},
        table_versions=pinned,
        rows_read=spilled.rows_read,
        cancelled=spilled.unlabeled,
        rows=dict(spilled.rows),
        data_sha256=digest.hexdigest(),
        windows={name: str(getattr(windows, name)) for name in names},
    )
    return _Built(splits, mdt, lineage, seconds)


def training_view(view: FeatureView, config: TrainingConfig) -> FeatureView:
    """The view ``config`` trains: every row as of departure - its lead, with or without the
    fresh window features (``fresh_features``)."""
    view = view.with_lead(config.lead_minutes)
    return view if config.fresh_features else view.without_fresh()


def read_training_data(
    settings: TrainingSettings, config: TrainingConfig, view: FeatureView = FLIGHT_DELAY_VIEW
) -> TrainingData:
    """A run's training data as ``train`` reads it: :func:`training_view` of ``view`` (as of the
    scheduled departure minus ``config.lead_minutes``, fresh features as configured), from the
    store of ``settings``, built ``training_chunk_days`` at a time. Whatever trains or exports
    matrices reads them here, so they cannot drift apart."""
    store = open_feature_store(settings.store_settings())
    try:
        return load_training_data(
            store,
            training_view(view, config),
            config.windows,
            config.mdt,
            chunk_days=settings.training_chunk_days,
        )
    finally:
        store.close()
