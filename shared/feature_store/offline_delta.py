"""Offline store: one Delta Lake table per feature group version, under a folder or s3:// root.

Every insert is one Delta MERGE keyed on primary key + event time, i.e. one atomic commit: a
process killed mid-write leaves the previous table version intact (its half-written Parquet files
are unreferenced and removed by VACUUM), and re-inserting identical rows commits nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, Schema, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from shared.errors import FeatureGroupNotFound, SchemaMismatch, StoreUnavailable
from shared.feature_group import FeatureGroup, columns_to_add, schema_differences
from shared.feature_store.commit_retry import CommitRetry, retry_commit
from shared.feature_store.protocol import CompactResult, WriteResult

log = logging.getLogger(__name__)


def _quote(name: str) -> str:
    return f"`{name}`"


def _literal(value: object) -> str:
    if isinstance(value, datetime):
        return f"CAST('{value.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}' AS TIMESTAMP)"
    if isinstance(value, date):
        return f"CAST('{value.isoformat()}' AS DATE)"
    raise TypeError(f"event time of type {type(value).__name__} is not supported")


def _bound(column: str, first: object, last: object) -> str:
    return f"{column} >= {_literal(first)} AND {column} <= {_literal(last)}"


class DeltaOfflineStore:
    def __init__(
        self,
        root: str,
        storage_options: dict[str, str] | None = None,
        *,
        commit_retry: CommitRetry | None = None,
    ) -> None:
        self.root = root.rstrip("/")
        self.storage_options = storage_options or None
        self.commit_retry = commit_retry or CommitRetry()

    def uri(self, group: FeatureGroup) -> str:
        return f"{self.root}/{group.table_name}"

    def _table(self, group: FeatureGroup, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(
                self.uri(group), version=version, storage_options=self.storage_options
            )
        except TableNotFoundError as exc:
            raise FeatureGroupNotFound(
                f"feature group {group.table_name} has no offline table at {self.uri(group)}; "
                "run the feature pipeline (backfill) first"
            ) from exc
        except OSError as exc:
            raise StoreUnavailable(f"offline store {self.root} unreachable: {exc}") from exc

    def exists(self, group: FeatureGroup) -> bool:
        try:
            self._table(group)
        except FeatureGroupNotFound:
            return False
        return True

    # -- definition -------------------------------------------------------------------------

    def stored_metadata(self, group: FeatureGroup) -> dict[str, Any]:
        description = self._table(group).metadata().description or "{}"
        return dict(json.loads(description))

    def register(self, group: FeatureGroup) -> None:
        """Create the group's table, or check that the existing one has the same schema.

        Safe when several processes register at once (parallel backfill windows on a fresh
        root): the one that loses the creation race finds the table and checks it."""
        if not self.exists(group):
            try:
                self._create(group)
                return
            except DeltaError:
                if not self.exists(group):
                    raise
                log.info("offline table %s was created by a concurrent writer", self.uri(group))
        stored = self.stored_metadata(group)
        diffs = schema_differences(stored, group)
        if diffs:
            raise SchemaMismatch(
                f"feature group {group.table_name} exists with a different schema: "
                + "; ".join(diffs)
                + f". Bump the version of {group.name!r} instead of changing it in place."
            )
        if columns_to_add(stored.get("columns", {}), group):
            retry_commit(
                f"adding columns to {group.table_name}",
                lambda: self._add_columns(group),
                self.commit_retry,
            )

    def _add_columns(self, group: FeatureGroup) -> None:
        """Add the group's new nullable columns to its table (old rows read null), and record
        the definition that has them; a concurrent registration may have done it already."""
        table = self._table(group)
        new = columns_to_add(table.schema().to_arrow().names, group)
        if new:
            arrow = pl.DataFrame(schema={c: group.polars_schema[c] for c in new}).to_arrow()
            table.alter.add_columns(list(Schema.from_arrow(arrow.schema).fields))
            log.info("added columns %s to offline table %s", new, self.uri(group))
        if columns_to_add(self.stored_metadata(group).get("columns", {}), group):
            self._table(group).alter.set_table_description(group.metadata_json())

    def _create(self, group: FeatureGroup) -> None:
        empty = pl.DataFrame(schema=group.polars_schema)
        write_deltalake(
            self.uri(group),
            empty.to_arrow(),
            mode="error",
            name=group.table_name,
            description=group.metadata_json(),
            # The change data feed lets materialization find only the keys that changed.
            configuration={"delta.enableChangeDataFeed": "true"},
            storage_options=self.storage_options,
        )
        log.info("created offline table %s", self.uri(group))

    # -- writes ----------------------------------------------------------------------------

    def insert(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        """Upsert ``rows``: one MERGE, one commit; retried whole if a concurrent writer won."""
        rows = group.conform_for_write(rows, "inserting")
        if rows.is_empty():
            return WriteResult(group.table_name, 0, 0, 0, self._table(group).version())
        result = retry_commit(
            f"upsert into {group.table_name}", lambda: self._merge(group, rows), self.commit_retry
        )
        log.info("upserted %s", result)
        return result

    def _merge(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        keys = [*group.primary_key, group.event_time]
        table = self._table(group)  # the newest version: a retry merges against what won
        on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
        # The key equality already implies the target row lies in the new rows' event-time
        # range; saying so on the target side lets the merge skip files outside it, so its time
        # and memory follow the size of the batch, not of the whole table.
        first, last = rows[group.event_time].min(), rows[group.event_time].max()
        on += f" AND {_bound('t.' + _quote(group.event_time), first, last)}"
        merge = table.merge(
            rows.to_arrow(),
            predicate=on,
            source_alias="s",
            target_alias="t",
            # One commit; a conflicting concurrent writer makes it fail (CommitFailedError),
            # never interleave: `insert` then runs the whole merge again.
            merge_schema=False,
        )
        values = [c for c in group.columns if c not in keys]
        if values:
            changed = " OR ".join(f"(t.{_quote(c)} IS DISTINCT FROM s.{_quote(c)})" for c in values)
            merge = merge.when_matched_update_all(predicate=changed)
        metrics = merge.when_not_matched_insert_all().execute()
        return WriteResult(
            group=group.table_name,
            rows_in=rows.height,
            inserted=int(metrics["num_target_rows_inserted"]),
            updated=int(metrics["num_target_rows_updated"]),
            table_version=table.version(),
        )

    def append(self, group: FeatureGroup, rows: pl.DataFrame) -> WriteResult:
        """One commit adding ``rows`` (keys unique within the batch; new by the caller's word)."""
        rows = group.conform_for_write(rows, "appending")
        if rows.is_empty():
            return WriteResult(group.table_name, 0, 0, 0, self._table(group).version())

        def attempt() -> WriteResult:
            table = self._table(group)
            write_deltalake(table, rows.to_arrow(), mode="append")
            return WriteResult(group.table_name, rows.height, rows.height, 0, table.version())

        result = retry_commit(f"append to {group.table_name}", attempt, self.commit_retry)
        log.info("appended %s", result)
        return result

    def compact(self, group: FeatureGroup, *, vacuum_hours: int | None = None) -> CompactResult:
        """Rewrite the table's small files into large ones (``OPTIMIZE``): a streaming writer
        commits a file or two per micro-batch, and reads slow down with their number. One more
        commit with the same rows; earlier versions stay readable (time travel, pinned training
        versions) until ``vacuum_hours`` (None: no vacuum) removes files unreferenced for that
        long (delta-rs refuses less than its 168-hour default retention)."""

        def attempt() -> dict[str, Any]:
            return dict(self._table(group).optimize.compact())

        metrics = retry_commit(f"compaction of {group.table_name}", attempt, self.commit_retry)
        vacuumed: list[str] = []
        if vacuum_hours is not None:
            vacuumed = self._table(group).vacuum(retention_hours=vacuum_hours, dry_run=False)
        result = CompactResult(
            group=group.table_name,
            files_removed=int(metrics.get("numFilesRemoved", 0)),
            files_added=int(metrics.get("numFilesAdded", 0)),
            files_vacuumed=len(vacuumed),
            table_version=self._table(group).version(),
        )
        log.info("compacted %s", result)
        return result

    # -- reads -----------------------------------------------------------------------------

    def read(
        self,
        group: FeatureGroup,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        table = self._table(group, version)
        frame = pl.scan_delta(table)
        absent = columns_to_add(frame.collect_schema().names(), group)
        if absent:  # a table (or version) from before these columns: they read null
            frame = frame.with_columns(
                pl.lit(None, dtype=group.polars_schema[c]).alias(c) for c in absent
            )
        if start is not None:
            frame = frame.filter(pl.col(group.event_time) >= start)
        if end is not None:
            frame = frame.filter(pl.col(group.event_time) < end)
        if columns is not None:
            frame = frame.select(columns)
        return frame.collect()

    def version(self, group: FeatureGroup) -> int | None:
        try:
            return self._table(group).version()
        except FeatureGroupNotFound:
            return None

    def changed_keys(self, group: FeatureGroup, after_version: int) -> pl.DataFrame:
        """Primary keys touched by commits after ``after_version`` (from the change data feed)."""
        table = self._table(group)
        if table.version() <= after_version:
            return pl.DataFrame(schema={k: group.polars_schema[k] for k in group.primary_key})
        feed = table.load_cdf(starting_version=after_version + 1, columns=list(group.primary_key))
        changes = pl.DataFrame(feed.read_all())
        return changes.select(group.primary_key).unique()

    def list_tables(self) -> list[dict[str, Any]]:
        """Stored metadata of every feature group table under the root (for the catalog)."""
        try:
            fs, base = pafs.FileSystem.from_uri(self.root)
            entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise StoreUnavailable(f"cannot list offline root {self.root}: {exc}") from exc
        found = []
        for entry in sorted(entries, key=lambda e: e.base_name):
            if entry.type != pafs.FileType.Directory:
                continue
            try:
                table = DeltaTable(
                    f"{self.root}/{entry.base_name}", storage_options=self.storage_options
                )
            except TableNotFoundError:
                continue
            meta = json.loads(table.metadata().description or "{}")
            if "primary_key" in meta:
                rows = pl.scan_delta(table).select(pl.len()).collect().item()
                found.append(
                    meta
                    | {
                        "table_name": entry.base_name,
                        "rows": int(rows),
                        "table_version": table.version(),
                    }
                )
        return found
