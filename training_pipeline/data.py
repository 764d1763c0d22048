"""Select, filter, join, split: the training data of one run, with its lineage.

One read of the feature view covers all three windows (pinned to the table versions current at
the start), cancelled flights are counted out (no departure, so no label), the rows are split by
local flight date, and the MDT is fitted on the training split only.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from shared.errors import ConfigurationError
from shared.feature_store import FeatureStore
from shared.feature_view import FeatureView, build_training_frame
from shared.transforms import FeatureMatrices, MDTState, apply_mdt, fit_mdt
from training_pipeline.config import MDTConfig, Window, Windows

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    name: str
    window: Window
    frame: pl.DataFrame  # entity columns, raw features, label
    features: FeatureMatrices  # after the MDT
    labels: np.ndarray  # float32 (rows,)

    @property
    def rows(self) -> int:
        return self.frame.height

    @property
    def base_rate(self) -> float:
        return float(self.labels.mean()) if self.rows else float("nan")


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

    def splits(self) -> tuple[Split, Split, Split]:
        return (self.train, self.validation, self.test)


def frame_sha256(frame: pl.DataFrame) -> str:
    """A content hash of the training data: same rows, columns and values -> same hash.

    CSV text (not Parquet/IPC bytes) so the hash does not depend on library versions' encoders.
    """
    digest = hashlib.sha256()
    digest.update(repr(list(frame.schema.items())).encode())
    for start in range(0, frame.height, 50_000):
        buffer = io.BytesIO()
        frame.slice(start, 50_000).write_csv(buffer, include_header=False)
        digest.update(buffer.getvalue())
    return digest.hexdigest()


def split_by_window(frame: pl.DataFrame, window: Window) -> pl.DataFrame:
    return frame.filter(
        (pl.col("flight_date") >= window.start) & (pl.col("flight_date") < window.end)
    )


def load_training_data(
    store: FeatureStore,
    view: FeatureView,
    windows: Windows,
    mdt_config: MDTConfig,
    *,
    versions: dict[str, int] | None = None,
) -> TrainingData:
    labeled = build_training_frame(
        store, view, windows.train.start, windows.test.end, versions=versions
    )
    log.info(
        "read %d flights, %d cancelled (no label) left out, table versions %s",
        labeled.rows_read,
        labeled.unlabeled,
        labeled.table_versions,
    )
    frames = {name: split_by_window(labeled.frame, getattr(windows, name)) for name in SPLITS}
    empty = [name for name, frame in frames.items() if frame.is_empty()]
    if empty:
        named = ", ".join(f"{name} {getattr(windows, name)}" for name in empty)
        raise ConfigurationError(
            f"no labeled flights in the {named} window{'s' if len(empty) > 1 else ''} (START:END, "
            "END exclusive); give windows the feature store holds (--train/--validation/--test) "
            "or backfill those days with the feature pipeline first"
        )
    # Fitted on the training split ONLY: validation and test statistics never leak into it.
    mdt = fit_mdt(
        frames["train"],
        view.numeric,
        view.categorical,
        min_frequency=mdt_config.min_frequency,
        max_vocabulary=mdt_config.max_vocabulary,
        clip=mdt_config.clip,
    )
    splits = {
        name: Split(
            name=name,
            window=getattr(windows, name),
            frame=frame,
            features=apply_mdt(frame, mdt),
            labels=frame[view.label].cast(pl.Float32).to_numpy(),
        )
        for name, frame in frames.items()
    }
    used = pl.concat([frames[name] for name in SPLITS])
    lineage = Lineage(
        feature_view=view.describe(),
        feature_group_versions={g.name: g.version for g in view.groups},
        table_versions=labeled.table_versions,
        rows_read=labeled.rows_read,
        cancelled=labeled.unlabeled,
        rows={name: split.rows for name, split in splits.items()},
        data_sha256=frame_sha256(used),
        windows={name: str(getattr(windows, name)) for name in SPLITS},
    )
    return TrainingData(**splits, mdt=mdt, lineage=lineage)
