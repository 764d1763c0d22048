"""A data root's feature tables as frames, for tests that compare two roots (incremental,
parallel and full runs must end with equal tables)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feature_pipeline.settings import FeaturePipelineSettings
from shared.feature_group import FeatureGroup
from shared.feature_store import OnlineLookup, open_feature_store
from shared.feature_store.online_codec import storable, storable_schema

RUN_METADATA = ["first_run_id", "quarantined_at"]  # differ between runs by design


def offline_table(root: Path, group: FeatureGroup) -> pl.DataFrame:
    """The group's offline table, sorted by key and event time, without per-run metadata."""
    frame = pl.read_delta(str(root / "offline" / group.table_name))
    frame = frame.drop([c for c in RUN_METADATA if c in frame.columns])
    return frame.sort([*group.primary_key, group.event_time])


def online_table(root: Path, group: FeatureGroup) -> pl.DataFrame:
    """What the online store serves for every key of the group's offline table: its newest
    row, then the row it serves as of every offline event time of the key (the history it
    keeps; nulls where that is older than the kept history), in the offline table's order."""
    offline = offline_table(root, group)
    keys = offline.select(group.primary_key).unique().sort(group.primary_key)
    times = offline.get_column(group.event_time).dt.epoch("us").to_list()
    store = open_feature_store(FeaturePipelineSettings(data_root=root))
    try:
        newest = store.get_online_features(group, keys)
        lookup = OnlineLookup(group, offline.select(group.primary_key).rows(), times)
        [served] = store.get_online_rows([lookup])
    finally:
        store.close()
    as_of = pl.DataFrame([row or {} for row in served], schema=storable_schema(group))
    return pl.concat([storable(group, newest), as_of])
