"""A data root's feature tables as frames, for tests that compare two roots (incremental,
parallel and full runs must end with equal tables)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feature_pipeline.settings import FeaturePipelineSettings
from shared.feature_group import FeatureGroup
from shared.feature_store import open_feature_store

RUN_METADATA = ["first_run_id", "quarantined_at"]  # differ between runs by design


def offline_table(root: Path, group: FeatureGroup) -> pl.DataFrame:
    """The group's offline table, sorted by key and event time, without per-run metadata."""
    frame = pl.read_delta(str(root / "offline" / group.table_name))
    frame = frame.drop([c for c in RUN_METADATA if c in frame.columns])
    return frame.sort([*group.primary_key, group.event_time])


def online_table(root: Path, group: FeatureGroup) -> pl.DataFrame:
    """What the online store serves for every key of the group's offline table."""
    keys = offline_table(root, group).select(group.primary_key).unique().sort(group.primary_key)
    store = open_feature_store(FeaturePipelineSettings(data_root=root))
    try:
        return store.get_online_features(group, keys)
    finally:
        store.close()
