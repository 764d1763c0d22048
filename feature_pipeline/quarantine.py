"""Reading the quarantine back: which raw rows validation rejected, why, and since which run.

The feature pipeline writes rejected rows to the ``quarantine`` group (see
:mod:`feature_pipeline.validate`); an operator asks what is in it before deciding to fix the
source and re-run a window. ``python -m feature_pipeline quarantine`` calls :func:`list_quarantine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

import polars as pl

from shared.feature_definitions import QUARANTINE
from shared.feature_store import FeatureStore

COLUMNS = ["source", "rules", "first_run_id", "quarantined_at", "raw"]


@dataclass(frozen=True)
class QuarantineListing:
    rows: pl.DataFrame  # the newest matching rows first, at most ``limit``
    matching: int  # rows matching the filters
    total: int  # rows in the quarantine


def list_quarantine(
    store: FeatureStore,
    *,
    source: str | None = None,
    rule: str | None = None,
    run_id: str | None = None,
    since: date | None = None,
    limit: int = 20,
) -> QuarantineListing:
    """Quarantined rows matching every filter given: their source table, a text in their rules
    (case-insensitive), the run that first quarantined them, quarantined on or after a day (UTC).
    An empty or missing quarantine lists nothing."""
    if store.table_version(QUARANTINE) is None:
        return QuarantineListing(
            pl.DataFrame(schema=QUARANTINE.polars_schema).select(COLUMNS), 0, 0
        )
    every = store.read(QUARANTINE, columns=COLUMNS)
    matches = every.filter(*_filters(source, rule, run_id, since))
    newest = matches.sort(["quarantined_at", "source", "rules"], descending=[True, False, False])
    return QuarantineListing(newest.head(limit), matches.height, every.height)


def _filters(
    source: str | None, rule: str | None, run_id: str | None, since: date | None
) -> list[pl.Expr]:
    filters = [pl.lit(True)]
    if source is not None:
        filters.append(pl.col("source") == source)
    if rule is not None:
        filters.append(pl.col("rules").str.to_lowercase().str.contains(rule.lower(), literal=True))
    if run_id is not None:
        filters.append(pl.col("first_run_id") == run_id)
    if since is not None:
        filters.append(pl.col("quarantined_at") >= datetime.combine(since, time(0), tzinfo=UTC))
    return filters
