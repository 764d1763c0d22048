"""The Delta offline store: versioned definitions, atomic idempotent upserts, time travel."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandera.polars as pa
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from shared.errors import FeatureGroupNotFound, SchemaMismatch
from shared.feature_definitions import PLANES
from shared.feature_store.offline_delta import DeltaOfflineStore

pytestmark = pytest.mark.integration
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _planes(n: int, seats: int = 100) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "tailnum": [f"N{i}" for i in range(n)],
            "valid_from": [EPOCH] * n,
            "year_built": [2000] * n,
            "seats": [seats] * n,
            "engines": [2] * n,
            "plane_type": ["jet"] * n,
            "manufacturer": ["BOEING"] * n,
            "engine": ["Turbo-fan"] * n,
        }
    )


@pytest.fixture
def offline(tmp_path: Path) -> DeltaOfflineStore:
    store = DeltaOfflineStore(str(tmp_path / "offline"))
    store.register(PLANES)
    return store


def test_changed_schema_is_refused_with_the_differences(offline: DeltaOfflineStore) -> None:
    columns = dict(PLANES.schema.columns)
    columns["seats"] = pa.Column(pl.Int32, nullable=True)
    del columns["engine"]
    changed = replace(PLANES, schema=pa.DataFrameSchema(columns))
    with pytest.raises(SchemaMismatch) as error:
        offline.register(changed)
    message = str(error.value)
    assert "column 'seats': stored Int16, defined Int32" in message
    assert "column 'engine' was removed" in message
    assert "Bump the version" in message
    offline.register(replace(changed, version=2))  # a new version is a new table
    assert offline.version(replace(changed, version=2)) == 0


def test_added_columns_evolve_the_table_in_place(offline: DeltaOfflineStore) -> None:
    """A nullable column added to a group's definition (`FeatureGroup.added_columns`) is added
    to its existing table on registration, by concurrent registrations too: rows written
    before read null, every version is readable with the new definition, and writers of the
    new definition write it. Anything else new is still refused."""
    import threading

    offline.insert(PLANES, _planes(3))
    before = offline.version(PLANES)
    columns = dict(PLANES.schema.columns)
    columns["retired"] = pa.Column(pl.Boolean, nullable=True)
    evolved = replace(PLANES, schema=pa.DataFrameSchema(columns), added_columns=("retired",))
    with pytest.raises(SchemaMismatch, match="'retired' \\(Boolean\\) is new"):
        offline.register(replace(evolved, added_columns=()))

    errors: list[BaseException] = []

    def register() -> None:
        try:
            DeltaOfflineStore(offline.root).register(evolved)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    offline.register(evolved)  # again: nothing left to add
    assert offline.stored_metadata(evolved)["columns"]["retired"] == "Boolean"

    offline.append(evolved, _planes(5).tail(2).with_columns(retired=pl.lit(True)))
    rows = offline.read(evolved).sort("tailnum")
    assert rows["retired"].to_list() == [None, None, None, True, True]
    old = offline.read(evolved, version=before, columns=["tailnum", "retired"])
    assert old.height == 3 and old["retired"].null_count() == 3
    assert old.schema["retired"] == pl.Boolean


def test_upsert_is_idempotent_and_updates_only_changed_rows(offline: DeltaOfflineStore) -> None:
    first = offline.insert(PLANES, _planes(5))
    assert (first.inserted, first.updated, first.table_version) == (5, 0, 1)
    again = offline.insert(PLANES, _planes(5))
    assert (again.inserted, again.updated, again.table_version) == (0, 0, 1)  # no new version
    changed = _planes(6).with_columns(
        pl.when(pl.col("tailnum") == "N0")
        .then(150)
        .otherwise(pl.col("seats"))
        .cast(pl.Int16)
        .alias("seats")
    )
    third = offline.insert(PLANES, changed)
    assert (third.inserted, third.updated, third.table_version) == (1, 1, 2)
    assert offline.read(PLANES).height == 6


def test_time_travel_reads_a_past_version(offline: DeltaOfflineStore) -> None:
    offline.insert(PLANES, _planes(3, seats=100))
    offline.insert(PLANES, _planes(3, seats=120))
    assert offline.read(PLANES, version=1)["seats"].to_list() == [100, 100, 100]
    assert sorted(offline.read(PLANES)["seats"].to_list()) == [120, 120, 120]
    assert offline.changed_keys(PLANES, after_version=1).height == 3


def test_duplicate_keys_in_one_insert_are_refused(offline: DeltaOfflineStore) -> None:
    with pytest.raises(ValueError, match="share a primary key"):
        offline.insert(PLANES, pl.concat([_planes(2), _planes(1)]))
    assert offline.version(PLANES) == 0  # nothing committed


def test_append_adds_new_rows_in_one_commit_without_reading_the_table(
    offline: DeltaOfflineStore,
) -> None:
    first = offline.append(PLANES, _planes(3))
    assert (first.inserted, first.updated, first.table_version) == (3, 0, 1)
    later = _planes(5).filter(pl.col("tailnum").is_in(["N3", "N4"]))
    second = offline.append(PLANES, later)
    assert (second.inserted, second.table_version) == (2, 2)
    assert sorted(offline.read(PLANES)["tailnum"].to_list()) == ["N0", "N1", "N2", "N3", "N4"]
    assert offline.append(PLANES, _planes(0)).table_version == 2  # nothing: no commit
    with pytest.raises(ValueError, match="share a primary key"):
        offline.append(PLANES, pl.concat([_planes(2), _planes(1)]))
    assert offline.version(PLANES) == 2


def test_reading_a_group_that_was_never_written_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FeatureGroupNotFound, match="run the feature pipeline"):
        DeltaOfflineStore(str(tmp_path)).read(PLANES)


def test_read_by_event_time_range(offline: DeltaOfflineStore) -> None:
    rows = _planes(2).with_columns(
        pl.Series("valid_from", [EPOCH, datetime(2000, 1, 1, tzinfo=UTC)])
    )
    offline.insert(PLANES, rows)
    window = offline.read(
        PLANES, start=datetime(1999, 1, 1, tzinfo=UTC), end=datetime(2001, 1, 1, tzinfo=UTC)
    )
    assert_frame_equal(window.select("tailnum"), pl.DataFrame({"tailnum": ["N1"]}))
