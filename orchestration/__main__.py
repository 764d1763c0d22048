"""``python -m orchestration``: run days of the daily Dagster job here, without a daemon.

    python -m orchestration run --date 2013-07-04
    python -m orchestration backfill --start 2013-07-01 --end 2013-07-07

Exit codes: 0 every day succeeded (partial feature runs, drift and refused challengers are
answers, not failures), 1 a day failed (a backfill stops there: fix it and re-run from that day;
every task is idempotent), 2 bad command line or settings. One JSON line per day on stdout.
Settings: ``FTI_DAG_*`` (orchestration/settings.py); the pipelines read their own ``FTI_*``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import date
from enum import StrEnum
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orchestration.daily import TASKS
from orchestration.runs import DayRun, run_days
from orchestration.settings import DagSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__.split("\n\n")[0],
    epilog="Settings: FTI_DAG_* environment variables (docs/operations.md, the daily DAG); "
    "DAGSTER_HOME: the Dagster instance that records the runs (default: none, in memory).",
)
err = Console(stderr=True)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _day(option: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(f"{option} {value!r} is not a YYYY-MM-DD date", EXIT_USAGE)


def _settings() -> DagSettings:
    try:
        return DagSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FTI_DAG_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}", EXIT_USAGE)


def _report(run: DayRun) -> None:
    table = Table(title=f"{run.day} ({'ok' if run.success else 'FAILED'})")
    for column in ("task", "result", "exit", "seconds"):
        table.add_column(column)
    for name in TASKS:
        task = run.tasks.get(name)
        if task is not None:
            outcome = f"not run: {task.skipped}" if task.skipped else task.meaning
            code = "-" if task.exit_code is None else str(task.exit_code)
            table.add_row(name, outcome, code, f"{task.seconds:.1f}")
        elif name in run.failures:
            table.add_row(name, f"[red]failed[/]: {run.failures[name]}", "", "")
        else:
            table.add_row(name, "[yellow]not run[/] (an upstream task failed)", "", "")
    err.print(table)
    sys.stdout.write(json.dumps(run.to_dict(), sort_keys=True) + "\n")


# The --log-level every CLI of the project takes (shared/command_line.py, which the
# orchestrator may not import: its image carries none of the pipelines' code).
class LogLevel(StrEnum):
    debug = "DEBUG"
    info = "INFO"
    warning = "WARNING"
    error = "ERROR"


LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        envvar="FTI_LOG_LEVEL",
        show_envvar=True,
        case_sensitive=False,
        help="how much to log on stderr",
    ),
]


def _execute(start: date, end: date, log_level: LogLevel) -> None:
    logging.basicConfig(level=log_level.value, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings()
    runs = run_days(settings, start, end, on_day=_report)
    failed = next((r for r in runs if not r.success), None)
    if failed is not None:
        _fail(
            f"{failed.day} failed ({'; '.join(failed.failures.values()) or 'see the run'}); "
            f"later days not run: fix and re-run from {failed.day}",
            EXIT_FAILED,
        )


@app.command()
def run(
    day: Annotated[str, typer.Option("--date", help="partition day D, YYYY-MM-DD")],
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Run one day: feature run D, batch scoring D+1, monitoring D, retraining, shadow."""
    the_day = _day("--date", day)
    _execute(the_day, the_day, log_level)


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="first partition day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last partition day (inclusive)")],
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Run partitions start..end in order; stop at the first day that fails."""
    first, last = _day("--start", start), _day("--end", end)
    if last < first:
        _fail(f"--end {end} is before --start {start}", EXIT_USAGE)
    _execute(first, last, log_level)


if __name__ == "__main__":
    app()
