"""`python -m feature_pipeline`: backfills, the daily run cron calls, the catalog, and the
real-time part: `schedule` (scheduled departures, ahead of their day), `replay-events`
(publish 2013's departures to the stream), `stream` (consume them into the stores), `compact`
(rewrite the streamed tables' small files).

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
from typing import Annotated
from wsgiref.simple_server import WSGIServer

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_pipeline.pipeline import run_backfill, run_schedule
from feature_pipeline.quarantine import QuarantineListing, list_quarantine
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.stream.metrics import StreamMetrics
from feature_pipeline.stream.processor import StreamSummary
from feature_pipeline.stream.run import (
    PublishSummary,
    Replay,
    parse_speed,
    publish_replay,
    run_stream,
    stream_metrics,
)
from feature_pipeline.stream.settings import Broker, StreamSettings
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
from shared.feature_definitions import FEATURE_GROUPS, QUARANTINE, STREAMED_GROUPS
from shared.feature_group import FeatureGroup
from shared.feature_store import GroupInfo, open_feature_store
from shared.feature_store.local import LocalFeatureStore
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
FirstDay = Annotated[str, typer.Option("--start", help="first local day, YYYY-MM-DD")]
LastDay = Annotated[str, typer.Option("--end", help="last local day (inclusive), YYYY-MM-DD")]
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
    start: FirstDay,
    end: LastDay,
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


@app.command()
def schedule(
    start: FirstDay,
    end: LastDay,
    source: SourceOpt = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Write the scheduled departures of days ahead (no outcomes), offline and online: the
    stream's pending counts need a day's schedule before the day."""
    _configure_logging(log_level)
    first, last = _day("--start", start), _day("--end", end)
    if last < first:
        raise typer.BadParameter(f"--end {end} is before --start {start}")
    settings = build_settings(FeaturePipelineSettings, data_root=data_root, source=source)
    _finish(run_schedule(settings, first, last))


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
StreamUrl = Annotated[str | None, setting_option(StreamSettings, "stream_url")]
StreamKey = Annotated[str | None, setting_option(StreamSettings, "stream_key")]
BrokerOpt = Annotated[Broker | None, setting_option(StreamSettings, "stream_broker", "--broker")]
ConsumerOpt = Annotated[str | None, setting_option(StreamSettings, "stream_consumer", "--consumer")]
MetricsPortOpt = Annotated[
    int | None, setting_option(StreamSettings, "stream_metrics_port", "--metrics-port")
]
_STREAM_FLAGS = {
    "stream_broker": "--broker",
    "stream_consumer": "--consumer",
    "stream_metrics_port": "--metrics-port",
}


def _replay(
    start: str | None, end: str | None, speed: str, heartbeat_s: float, max_events: int | None
) -> Replay | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise typer.BadParameter("give both --start and --end")
    first, last = _day("--start", start), _day("--end", end)
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


def _serve_metrics(metrics: StreamMetrics, port: int | None) -> WSGIServer | None:
    """Serve ``metrics`` on ``port`` (None: not served); a port that cannot be bound is one
    error line and exit 1, before anything is consumed."""
    if port is None:
        return None
    try:
        return metrics.serve(port)
    except OSError as exc:
        fail(
            f"stream cannot serve its metrics on port {port} (FTI_STREAM_METRICS_PORT): {exc}",
            ExitCode.failure,
        )


def _stop_on_signals() -> threading.Event:
    """SIGTERM (Kubernetes, compose) and SIGINT stop the loop; what was fetched is committed
    and acknowledged before exiting."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@app.command("replay-events")
def replay_events_command(
    start: FirstDay,
    end: LastDay,
    speed: Speed = "max",
    heartbeat_s: Heartbeat = 300.0,
    max_events: MaxEvents = None,
    source: SourceOpt = None,
    stream_url: StreamUrl = None,
    stream_key: StreamKey = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Publish the departures of the days --start to --end to the stream in event-time
    order, --speed times faster than real time (the upstream system's role, for 2013)."""
    _configure_logging(log_level)
    replay = _replay(start, end, speed, heartbeat_s, max_events)
    assert replay is not None
    settings = build_settings(
        StreamSettings,
        data_root=data_root,
        source=source,
        stream_url=stream_url,
        stream_key=stream_key,
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
            fail(str(exc), ExitCode.failure)
    console.print(
        f"published {summary.published:,} messages to {summary.stream} in {summary.seconds:.1f} s"
    )
    typer.echo(json.dumps(asdict(summary)))


@app.command()
def stream(
    broker: BrokerOpt = None,
    start: Start = None,
    end: End = None,
    speed: Speed = "max",
    heartbeat_s: Heartbeat = 300.0,
    max_events: MaxEvents = None,
    consumer: ConsumerOpt = None,
    max_messages: Annotated[
        int | None, typer.Option("--max-messages", help="stop after N messages", min=1)
    ] = None,
    metrics_port: MetricsPortOpt = None,
    source: SourceOpt = None,
    stream_url: StreamUrl = None,
    stream_key: StreamKey = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Consume departure events into the stores: online at once, offline in bounded commits,
    acknowledged once both hold them. With --broker embedded, replays the days --start to
    --end in this process instead of reading Redis. Prometheus metrics on --metrics-port."""
    _configure_logging(log_level)
    replay = _replay(start, end, speed, heartbeat_s, max_events)
    settings = build_settings(
        StreamSettings,
        _STREAM_FLAGS,
        stream_broker=broker,
        stream_consumer=consumer,
        stream_metrics_port=metrics_port,
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
        metrics = stream_metrics(settings)
    except FTIError as exc:
        fail(str(exc), ExitCode.failure)
    server = None
    try:
        server = _serve_metrics(metrics, settings.stream_metrics_port)
        summary = run_stream(
            settings,
            replay=replay,
            stop=stop,
            max_messages=max_messages,
            on_batch=show,
            metrics=metrics,
        )
    except FTIError as exc:
        fail(str(exc), ExitCode.failure)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        metrics.close()
    shown_columns = ("messages", "events", "heartbeats", "quarantined", "commits", "acked")
    table = Table(title=f"stream: {summary.source}")
    for column in (*shown_columns, "watermark", "seconds"):
        table.add_column(column)
    values = summary.as_dict()
    table.add_row(
        *(str(values[c]) for c in shown_columns),
        str(summary.watermark),
        f"{summary.seconds:.1f}",
    )
    console.print(table)
    typer.echo(json.dumps(values))
    if summary.error:
        fail(summary.error, ExitCode.failure)
    if summary.messages == 0 and replay is not None:
        fail("nothing was consumed", ExitCode.failure)
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
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Rewrite the small files of streamed offline tables into large ones (OPTIMIZE), and
    optionally VACUUM. Safe while the stream runs: a conflicting commit is retried."""
    _configure_logging(log_level)
    names = group or [g.name for g in STREAMED_GROUPS]
    known = {g.name: g for g in (*FEATURE_GROUPS.values(), *STREAMED_GROUPS)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown feature groups {unknown}; known: {sorted(known)}")
    settings = build_settings(FeaturePipelineSettings, data_root=data_root)
    store = open_feature_store(settings)
    try:
        if not isinstance(store, LocalFeatureStore):
            fail(
                "compaction is for the local Delta store; Hopsworks compacts its own tables",
                ExitCode.usage,
            )
        results = [store.compact(known[n], vacuum_hours=vacuum_hours) for n in names]
    except FTIError as exc:
        fail(str(exc), ExitCode.failure)
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
