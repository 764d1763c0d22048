"""The feature pipeline run: E -> V -> MIT -> A -> C -> write, chunk by chunk, then materialize.

All I/O happens here; the steps are pure functions over Polars frames. Each chunk of the window is
validated completely before any of it is written, and every write is one atomic upsert per
feature group, so a run killed at any point leaves every table at a consistent version and
re-running the window completes it without duplicates.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pandera.polars as pa
import polars as pl
from rich.progress import Progress, TaskID

from feature_pipeline import lookback
from feature_pipeline.compress import compress
from feature_pipeline.extract import Source, Window
from feature_pipeline.features.daily_stats import LOOKBACK_DAYS, rolling_stats
from feature_pipeline.features.departures import (
    departure_event_rows,
    departure_schedule,
    events_from_flights,
)
from feature_pipeline.features.flights import FLIGHT_RAW_COLUMNS, typed_flights
from feature_pipeline.features.planes import PLANE_RAW_COLUMNS, typed_planes
from feature_pipeline.features.weather import WEATHER_RAW_COLUMNS, typed_weather
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.summary import RunSummary
from feature_pipeline.validate import Validated, split_valid, stamp_quarantine
from shared.errors import FTIError, HistoryMissing, SourceError, ValidationFailed
from shared.feature_definitions import (
    AIRPORT_WEATHER,
    CARRIER_STATS,
    DEPARTURE_EVENTS,
    DEPARTURE_SCHEDULE,
    DEPARTURES_STREAM,
    FLIGHTS,
    PLANES,
    QUARANTINE,
    ROUTE_STATS,
    STREAM_PROGRESS,
)
from shared.feature_group import FeatureGroup
from shared.feature_store import FeatureStore, open_feature_store
from shared.feature_view import local_day_start_utc

log = logging.getLogger(__name__)

WRITE_ORDER: tuple[FeatureGroup, ...] = (
    FLIGHTS,
    AIRPORT_WEATHER,
    PLANES,
    ROUTE_STATS,
    CARRIER_STATS,
    DEPARTURE_EVENTS,
    DEPARTURE_SCHEDULE,
    STREAM_PROGRESS,
)
ONLINE_GROUPS = tuple(g for g in WRITE_ORDER if g.online)


@dataclass(frozen=True)
class ChunkResult:
    """Everything one chunk will write: feature rows per group and the quarantined rows."""

    window: Window
    validated: tuple[Validated, ...]
    features: dict[str, pl.DataFrame]


# -- validation ------------------------------------------------------------------------------


def flights_schema(airports: set[str]) -> pa.DataFrameSchema:
    """The flights group's contract plus: destinations must be known airports."""
    known = sorted(airports)
    known_airport = pa.Check(
        lambda data: data.lazyframe.select(pl.col(data.key).is_in(known)),
        name="known_airport",  # recorded as the rule in quarantine: dest not a known FAA code
    )
    return FLIGHTS.schema.update_column(
        "dest", checks=[*FLIGHTS.schema.columns["dest"].checks, known_airport]
    )


def validate_flights(raw: pl.DataFrame, airports: set[str]) -> Validated:
    return split_valid(
        "flights",
        typed_flights(raw),
        flights_schema(airports),
        FLIGHT_RAW_COLUMNS,
        key=list(FLIGHTS.primary_key),
    )


def validate_weather(raw: pl.DataFrame) -> Validated:
    return split_valid(
        "weather",
        typed_weather(raw),
        AIRPORT_WEATHER.schema,
        WEATHER_RAW_COLUMNS,
        key=[*AIRPORT_WEATHER.primary_key, AIRPORT_WEATHER.event_time],
    )


def validate_planes(raw: pl.DataFrame) -> Validated:
    return split_valid(
        "planes", typed_planes(raw), PLANES.schema, PLANE_RAW_COLUMNS, key=list(PLANES.primary_key)
    )


def enforce_bad_share(validated: Validated, max_share: float) -> None:
    if validated.bad_share <= max_share:
        return
    top = validated.quarantine["rules"].str.split("; ").explode().value_counts(sort=True).head(3)
    common = ", ".join(f"{r} ({n:,})" for r, n in top.iter_rows())
    raise ValidationFailed(
        f"{validated.source}: {validated.quarantine.height:,} of {validated.rows_read:,} rows "
        f"({validated.bad_share:.1%}) broke the data contract, above the allowed "
        f"{max_share:.1%}; most common: {common}. Nothing was written; fix the input or raise "
        "FTI_MAX_BAD_SHARE.",
        bad_rows=validated.quarantine.height,
        total_rows=validated.rows_read,
    )


# -- one chunk -------------------------------------------------------------------------------


def build_chunk(
    source: Source,
    window: Window,
    airports: set[str],
    history: pl.DataFrame,
    *,
    with_planes: bool,
    max_bad_share: float,
) -> ChunkResult:
    """Extract, validate, transform and aggregate one window; nothing is written here.

    ``history`` holds the outcomes (`lookback.outcomes`) of at least the LOOKBACK_DAYS before
    the window: from the source and the store before the run's window, from the run's own
    earlier chunks inside it.
    """
    flights = validate_flights(source.flights(window), airports)
    weather = validate_weather(source.weather(window))
    validated = [flights, weather]
    if with_planes:
        validated.append(validate_planes(source.planes()))
    for v in validated:
        enforce_bad_share(v, max_bad_share)

    outcomes = pl.concat([history, lookback.outcomes(flights.valid)])
    last_day = window.end + timedelta(days=1)  # tomorrow's stats describe today: serve them next
    features = {
        FLIGHTS.name: flights.valid,
        AIRPORT_WEATHER.name: weather.valid,
        ROUTE_STATS.name: rolling_stats(outcomes, ["origin", "dest"], window.start, last_day),
        CARRIER_STATS.name: rolling_stats(outcomes, ["carrier"], window.start, last_day),
        **departures(flights.valid, window),
    }
    if with_planes:
        features[PLANES.name] = validated[2].valid
    return ChunkResult(window, tuple(validated), {n: f for n, f in features.items() if f.height})


def departures(flights: pl.DataFrame, window: Window) -> dict[str, pl.DataFrame]:
    """The window's departure events (from the outcomes, with the function the stream runs),
    its schedule, and the progress row saying the events are complete up to the end of the
    window. (The flights extract of a day carries its schedule; a schedule feed known days
    ahead would write `departure_schedule` the same way, before the day.)"""
    events, broken = departure_event_rows(events_from_flights(flights))
    if broken.height:  # the flights contract implies every event rule: a bug, not bad input
        raise ValueError(f"{broken.height} valid flights made invalid events: {broken.head(3)}")
    complete_until = local_day_start_utc(window.end + timedelta(days=1))
    progress = pl.DataFrame(
        {
            "stream": [DEPARTURES_STREAM],
            "watermark": [complete_until],
            "committed_at": [complete_until],  # not the wall clock: a re-run writes the same row
            "events": [events.height],
        }
    )
    return {
        DEPARTURE_EVENTS.name: events,
        DEPARTURE_SCHEDULE.name: departure_schedule(flights),
        STREAM_PROGRESS.name: STREAM_PROGRESS.conform(progress),
    }


def history_after(history: pl.DataFrame, chunk: ChunkResult, next_start: date) -> pl.DataFrame:
    """The history the next chunk needs: this chunk's flights added, days too old dropped."""
    flights = chunk.features.get(FLIGHTS.name)
    frames = [history] if flights is None else [history, lookback.outcomes(flights)]
    first = lookback.lookback_window(Window(next_start, next_start)).start
    return pl.concat(frames).filter(pl.col("flight_date") >= first)


# -- what the run reads before it writes -----------------------------------------------------


@dataclass(frozen=True)
class History:
    """Outcomes of the lookback before a run's window, and where its days came from."""

    outcomes: pl.DataFrame
    days_from_source: int
    days_from_store: int


def check_window_has_flights(source: Source, window: Window) -> None:
    """A window the source holds no flights for is a wrong or empty extract, never success."""
    if source.flight_rows_in(window) == 0:
        raise SourceError(
            f"{source.description} holds no flights for {window.start}..{window.end}: an empty "
            "file or an extract of another day? Nothing was written; give the window's data."
        )


def lookback_history(
    source: Source, store: FeatureStore, window: Window, airports: set[str]
) -> History:
    """The outcomes of the LOOKBACK_DAYS before ``window``: the source's days, the store's for
    the days the source does not hold; fails, naming them, on days neither holds."""
    before = lookback.lookback_window(window)
    in_lookback = pl.col("flight_date").is_between(before.start, before.end)
    from_source = lookback.outcomes(
        validate_flights(source.flights(before), airports).valid.filter(in_lookback)
    )
    source_days = lookback.days_held(from_source)
    from_store = from_source.clear()
    if len(source_days) < before.days and store.table_version(FLIGHTS) is not None:
        stored = store.read(
            FLIGHTS,
            local_day_start_utc(before.start),
            local_day_start_utc(window.start),
            columns=list(lookback.OUTCOME_COLUMNS),
        )
        from_store = lookback.outcomes(stored).filter(
            in_lookback & ~pl.col("flight_date").is_in(sorted(source_days))
        )
    store_days = lookback.days_held(from_store)
    unheld = lookback.unheld_days(before, source_days, store_days)
    if unheld:
        begins = history_begins(source, store, before, source_days | store_days)
        missing = lookback.missing_days(unheld, begins)
        if missing:
            raise HistoryMissing(
                f"no flights for {lookback.describe_days(missing)} in {source.description} or "
                f"the store: the statistics from {window.start} on sum the {LOOKBACK_DAYS} days "
                "before each day. Nothing was written; backfill those days (or give a source "
                "that holds them) first.",
                days=list(missing),
            )
        log.warning(
            "history begins on %s: no flights before it in the source or the store, so the "
            "statistics of the following %d days sum fewer days",
            begins,
            LOOKBACK_DAYS,
        )
    return History(pl.concat([from_source, from_store]), len(source_days), len(store_days))


def history_begins(
    source: Source, store: FeatureStore, before: Window, held: set[date]
) -> date | None:
    """The earliest day the source or the store holds flights for (None: neither holds any)."""
    candidates = set(held)
    if store.table_version(FLIGHTS) is not None:
        earlier = store.read(
            FLIGHTS, end=local_day_start_utc(before.start), columns=["flight_date"]
        )
        candidates |= lookback.days_held(earlier)
    first = source.first_flight_day()
    if first is not None:
        candidates.add(first)
    return min(candidates, default=None)


def new_quarantine_rows(store: FeatureStore, rows: pl.DataFrame) -> pl.DataFrame:
    """Only rows not quarantined before: a row keeps the run and time it was first seen."""
    if rows.is_empty() or store.table_version(QUARANTINE) is None:
        return rows
    known = store.read(QUARANTINE, columns=list(QUARANTINE.primary_key))
    return rows.join(known, on=list(QUARANTINE.primary_key), how="anti")


def write_chunk(store: FeatureStore, chunk: ChunkResult, summary: RunSummary) -> None:
    for v in chunk.validated:
        source = summary.source(v.source)
        source.rows_read += v.rows_read
        source.quarantined += v.quarantine.height
        source.deduplicated += v.deduplicated
    for group in WRITE_ORDER:
        rows = chunk.features.get(group.name)
        if rows is None:
            continue
        result = store.insert(group, compress(group, rows))
        written = summary.group(group.name)
        written.rows_written += result.rows_in
        written.inserted += result.inserted
        written.updated += result.updated
        written.table_version = result.table_version
    quarantined = stamp_quarantine(
        [v.quarantine for v in chunk.validated if v.quarantine.height],
        summary.run_id,
        datetime.now(UTC),
    )
    if quarantined.height:
        result = store.insert(QUARANTINE, new_quarantine_rows(store, quarantined))
        summary.group(QUARANTINE.name).table_version = result.table_version
        summary.group(QUARANTINE.name).inserted += result.inserted


# -- the run ---------------------------------------------------------------------------------


@contextmanager
def _step(progress: Progress | None, task: TaskID | None, label: str) -> Iterator[None]:
    if progress is not None and task is not None:
        progress.update(task, description=label)
    yield
    if progress is not None and task is not None:
        progress.advance(task)


def run_backfill(
    settings: FeaturePipelineSettings,
    start: date,
    end: date,
    *,
    command: str = "backfill",
    progress: Progress | None = None,
) -> RunSummary:
    """Fill the feature store for the local days [start, end] (inclusive)."""
    window = Window(start, end)
    summary = RunSummary(
        run_id=f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        command=command,
        window=f"{start}..{end}",
    )
    began = time.perf_counter()
    chunks = window.chunks(settings.chunk_days)
    task = progress.add_task(command, total=2 * len(chunks) + 1) if progress else None
    store = open_feature_store(settings)
    try:
        source = Source(settings.source, settings.source_storage_options)
        source.check()  # a missing column or unreadable file fails before anything is created
        airports = source.airport_codes()
        check_window_has_flights(source, window)
        prior = lookback_history(source, store, window, airports)
        summary.lookback_days_from_source = prior.days_from_source
        summary.lookback_days_from_store = prior.days_from_store
        history = prior.outcomes
        for i, chunk_window in enumerate(chunks):
            with _step(progress, task, f"validate {chunk_window.start}..{chunk_window.end}"):
                chunk = build_chunk(
                    source,
                    chunk_window,
                    airports,
                    history,
                    with_planes=i == 0,
                    max_bad_share=settings.max_bad_share,
                )
            with _step(progress, task, f"write {chunk_window.start}..{chunk_window.end}"):
                if i == 0:  # tables are created only once the first chunk has passed validation
                    for group in (*WRITE_ORDER, QUARANTINE):
                        store.register(group)
                write_chunk(store, chunk, summary)
            history = history_after(history, chunk, chunk_window.end + timedelta(days=1))
        if summary.source("weather").rows_read == 0:  # real gaps exist: reported, not fatal
            log.warning(
                "%s holds no weather for %s: the online weather stays as it was, and the "
                "point-in-time join leaves these hours missing",
                source.description,
                summary.window,
            )
        with _step(progress, task, "materialize online"):
            for group in ONLINE_GROUPS:
                summary.group(group.name).online_keys = store.materialize(group).keys_written
    except FTIError as exc:
        log.error("%s %s failed: %s", command, summary.window, exc)
        summary.error = str(exc)
    finally:
        store.close()
        summary.seconds = time.perf_counter() - began
    return summary


def run_schedule(settings: FeaturePipelineSettings, start: date, end: date) -> RunSummary:
    """Write the scheduled departures of the local days [start, end] (schedule fields only, no
    outcome) offline and online, ahead of the days: the stream counts each window's pending
    departures against them. The day's own run writes the same rows again (and quarantines
    the rows that fail validation, which are left out here and counted as skipped)."""
    window = Window(start, end)
    summary = RunSummary(
        run_id=f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
        command="schedule",
        window=f"{start}..{end}",
    )
    began = time.perf_counter()
    store = open_feature_store(settings)
    try:
        source = Source(settings.source, settings.source_storage_options)
        source.check()
        check_window_has_flights(source, window)
        flights = validate_flights(source.flights(window), source.airport_codes())
        summary.source("flights").rows_read = flights.rows_read
        if flights.quarantine.height:
            log.warning(
                "%d invalid flights left out of the schedule (their day's run quarantines them)",
                flights.quarantine.height,
            )
        store.register(DEPARTURE_SCHEDULE)
        result = store.insert(DEPARTURE_SCHEDULE, departure_schedule(flights.valid))
        written = summary.group(DEPARTURE_SCHEDULE.name)
        written.rows_written, written.inserted = result.rows_in, result.inserted
        written.updated, written.table_version = result.updated, result.table_version
        written.online_keys = store.materialize(DEPARTURE_SCHEDULE).keys_written
    except FTIError as exc:
        log.error("schedule %s failed: %s", summary.window, exc)
        summary.error = str(exc)
    finally:
        store.close()
        summary.seconds = time.perf_counter() - began
    return summary
