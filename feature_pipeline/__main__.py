"""`python -m feature_pipeline`: backfills, the daily run cron calls, and the catalog.

Exit codes: 0 success, 3 partial (written, some input rows quarantined), 1 failure (nothing of
the failing chunk written), 2 bad command line or setting.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.quarantine import QuarantineListing, list_quarantine
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.summary import ExitCode, RunSummary
from shared.command_line import (
    CommandLine,
    DataRootOption,
    LogLevel,
    LogLevelOption,
    build_settings,
    fail,
    setting_option,
)
from shared.errors import FTIError
from shared.feature_definitions import FEATURE_GROUPS, QUARANTINE
from shared.feature_group import FeatureGroup
from shared.feature_store import GroupInfo, open_feature_store
from shared.prediction_log import PREDICTIONS

app = CommandLine(
    name="feature-pipeline",
    help="Feature pipeline: raw flights, weather and planes -> validated features in the store.",
    no_args_is_help=True,
)
console = Console(stderr=True)

SourceOpt = Annotated[str | None, setting_option(FeaturePipelineSettings, "source")]
MaxBad = Annotated[float | None, setting_option(FeaturePipelineSettings, "max_bad_share")]
ChunkDays = Annotated[int | None, setting_option(FeaturePipelineSettings, "chunk_days")]
# The groups this code defines, for the catalog's descriptions.
KNOWN_GROUPS: dict[tuple[str, int], FeatureGroup] = {
    (g.name, g.version): g for g in (*FEATURE_GROUPS.values(), QUARANTINE, PREDICTIONS)
}


def _day(option: str, value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError as exc:
        raise typer.BadParameter(f"{option} {value!r} is not a date; use YYYY-MM-DD") from exc


def _configure_logging(level: LogLevel) -> None:
    logging.basicConfig(
        level=level.value,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _finish(summary: RunSummary) -> None:
    summary.render(console)
    typer.echo(summary.to_json())  # the one machine-readable line, on stdout
    raise typer.Exit(summary.exit_code)


def _run(command: str, start: date, end: date, settings: FeaturePipelineSettings) -> RunSummary:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        return run_backfill(settings, start, end, command=command, progress=progress)


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="first local day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last local day, YYYY-MM-DD (inclusive)")],
    source: SourceOpt = None,
    max_bad_share: MaxBad = None,
    chunk_days: ChunkDays = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Backfill any window (the whole year included). Idempotent: re-running changes nothing."""
    _configure_logging(log_level)
    first, last = _day("--start", start), _day("--end", end)
    if last < first:
        raise typer.BadParameter(f"--end {end} is before --start {start}")
    settings = build_settings(
        FeaturePipelineSettings,
        data_root=data_root,
        source=source,
        max_bad_share=max_bad_share,
        chunk_days=chunk_days,
    )
    _finish(_run("backfill", first, last, settings))


@app.command()
def run(
    day: Annotated[str, typer.Option("--date", help="the local day to ingest, YYYY-MM-DD")],
    source: SourceOpt = None,
    max_bad_share: MaxBad = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """The incremental daily run cron calls: one day's flights and weather, tomorrow's stats."""
    _configure_logging(log_level)
    the_day = _day("--date", day)
    settings = build_settings(
        FeaturePipelineSettings, data_root=data_root, source=source, max_bad_share=max_bad_share
    )
    _finish(_run("run", the_day, the_day, settings))


@app.command()
def catalog(data_root: DataRootOption = None, log_level: LogLevelOption = LogLevel.warning) -> None:
    """List feature groups: versions, keys, row counts, table and online versions, and each
    group's columns with their types and descriptions."""
    _configure_logging(log_level)
    settings = build_settings(FeaturePipelineSettings, data_root=data_root)
    try:
        store = open_feature_store(settings)
        infos = store.catalog()
        store.close()
    except FTIError as exc:
        fail(str(exc), ExitCode.failure)
    out = Console()
    table = Table(title=f"feature groups in {settings.resolved_offline_root}")
    for column in (
        "group",
        "v",
        "primary key",
        "event time",
        "online",
        "rows",
        "table v",
        "online v",
    ):
        table.add_column(column)
    for info in infos:
        table.add_row(
            info.name,
            str(info.version),
            ", ".join(info.primary_key),
            info.event_time,
            "yes" if info.online else "no",
            f"{info.rows:,}",
            str(info.table_version),
            "-"
            if info.online_materialized_version is None
            else str(info.online_materialized_version),
        )
    out.print(table)
    for info in infos:
        out.print(_columns_table(info))


def _columns_table(info: GroupInfo) -> Table:
    """A group's columns, types and descriptions: the store's own descriptions (Hopsworks
    keeps them), else those of the code's definition of the same group and version."""
    definition = KNOWN_GROUPS.get((info.name, info.version))
    described = info.descriptions or (definition.descriptions() if definition else {})
    title = f"{info.name}_v{info.version}"
    if definition is not None:
        title += f": {definition.description}"
    table = Table(title=title, title_justify="left")
    for column in ("column", "type", "description"):
        table.add_column(column)
    # In the definition's order (the store keeps its columns sorted by name).
    order = [c for c in (definition.columns if definition else []) if c in info.columns]
    for name in [*order, *(c for c in info.columns if c not in order)]:
        table.add_row(name, info.columns[name], described.get(name, ""))
    return table


@app.command()
def quarantine(
    source: Annotated[
        str | None,
        typer.Option("--source", help="only rows of this raw table: flights, weather or planes"),
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option("--rule", help="only rows whose broken rules contain this text, any case"),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", help="only rows first quarantined by this run id")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="only rows quarantined on or after this day (UTC), YYYY-MM-DD"
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="show at most this many rows, newest first")
    ] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per row on stdout instead of a table")
    ] = False,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Show quarantined raw rows: their source table, every rule they broke, the run that first
    quarantined them, and the raw row as read."""
    _configure_logging(log_level)
    first_day = None if since is None else _day("--since", since)
    settings = build_settings(FeaturePipelineSettings, data_root=data_root)
    try:
        store = open_feature_store(settings)
        try:
            listing = list_quarantine(
                store, source=source, rule=rule, run_id=run_id, since=first_day, limit=limit
            )
        finally:
            store.close()
    except FTIError as exc:
        fail(str(exc), ExitCode.failure)
    if as_json:
        for row in listing.rows.iter_rows(named=True):
            typer.echo(json.dumps(row, default=str))
    else:
        Console().print(_quarantine_table(listing, settings.resolved_offline_root))
    shown = listing.rows.height
    console.print(
        f"{shown:,} shown of {listing.matching:,} matching, {listing.total:,} quarantined in all"
    )


def _quarantine_table(listing: QuarantineListing, root: str) -> Table:
    table = Table(title=f"quarantined rows in {root}")
    for column in ("source", "rules broken", "first run", "quarantined at (UTC)", "raw row"):
        table.add_column(column, overflow="fold")
    for row in listing.rows.iter_rows(named=True):
        table.add_row(
            row["source"],
            row["rules"].replace("; ", "\n"),
            row["first_run_id"],
            row["quarantined_at"].strftime("%Y-%m-%d %H:%M:%S"),
            row["raw"],
        )
    return table


if __name__ == "__main__":
    app()
