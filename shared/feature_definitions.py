"""The feature groups of the flight-delay use case.

Event times are UTC instants. Daily aggregates are stamped at *local midnight* (America/New_York)
of the day they are valid for, converted to UTC, and describe only days strictly before it: a
flight at 21:00 local on day D (02:00 UTC on D+1) must still see the stats valid for D, never
the ones that already include D.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandera.polars as pa
import polars as pl

from shared.feature_group import UTC_TIMESTAMP, FeatureGroup

PolarsType = type[pl.DataType] | pl.DataType
NYC_TZ = "America/New_York"
NYC_ORIGINS = ("EWR", "JFK", "LGA")
DELAY_THRESHOLD_MIN = 15
ROLLING_WINDOWS_DAYS = (7, 28)
# Online, a daily-stats key keeps the rows of the last two days before its newest: the run for
# day D writes D+1's stats, so the rows valid today (and yesterday, across a 25-hour DST day)
# stay servable for requests as of today, not only tomorrow's row.
DAILY_ONLINE_HISTORY = timedelta(days=2)


def _col(
    dtype: PolarsType, description: str, *checks: pa.Check, nullable: bool = True
) -> pa.Column:
    return pa.Column(dtype, list(checks), nullable=nullable, description=description)


def _key(dtype: PolarsType, description: str, *checks: pa.Check) -> pa.Column:
    return _col(dtype, description, *checks, nullable=False)


FLIGHTS = FeatureGroup(
    name="flights",
    version=1,
    primary_key=("flight_id",),
    event_time="sched_dep_utc",
    online=False,
    description="One row per scheduled departure from NYC in 2013, with its outcome (label).",
    non_features=("dep_delay", "is_cancelled", "is_delayed"),
    schema=pa.DataFrameSchema(
        {
            "flight_id": _key(pl.String, "date-carrier+flight-origin-hhmm, unique per departure"),
            "sched_dep_utc": _key(UTC_TIMESTAMP, "scheduled departure instant (UTC)"),
            "flight_date": _key(pl.Date, "local (New York) date of the scheduled departure"),
            "sched_dep_time": _key(
                pl.Int16, "scheduled departure, local hhmm", pa.Check.in_range(0, 2359)
            ),
            "carrier": _key(
                pl.String, "carrier designator: IATA (2) or ICAO (3)", pa.Check.str_length(2, 3)
            ),
            "flight": _key(pl.Int32, "flight number", pa.Check.in_range(1, 9999)),
            "tailnum": _col(pl.String, "aircraft registration (null when unknown)"),
            "origin": _key(pl.String, "NYC origin airport", pa.Check.isin(NYC_ORIGINS)),
            "dest": _key(pl.String, "destination FAA code", pa.Check.str_length(3, 3)),
            "distance": _key(pl.Int16, "great-circle distance, miles", pa.Check.in_range(1, 6000)),
            "dep_delay": _col(
                pl.Float32, "departure delay, minutes (outcome)", pa.Check.in_range(-120, 1800)
            ),
            "is_cancelled": _key(pl.Boolean, "no actual departure time was recorded"),
            "is_delayed": _col(pl.Int8, "label: dep_delay > 15 min (null when cancelled)"),
        },
        unique=["flight_id", "sched_dep_utc"],
    ),
)


def _daily_stats_schema(keys: dict[str, pa.Column]) -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {
        **keys,
        "valid_from": _key(UTC_TIMESTAMP, "local midnight of the day these stats are valid for"),
        "day": _key(pl.Date, "the local day these stats are valid for"),
    }
    for days in ROLLING_WINDOWS_DAYS:
        columns |= {
            f"flights_{days}d": _key(
                pl.Int32, f"departures in the {days} days before", pa.Check.ge(0)
            ),
            f"delay_rate_{days}d": _col(
                pl.Float32,
                f"share delayed >15 min, {days} days before (null: no departures)",
                pa.Check.in_range(0.0, 1.0),
            ),
            f"mean_dep_delay_{days}d": _col(
                pl.Float32, f"mean departure delay (min), {days} days before"
            ),
            f"cancel_rate_{days}d": _col(
                pl.Float32, f"share cancelled, {days} days before", pa.Check.in_range(0.0, 1.0)
            ),
        }
    return pa.DataFrameSchema(columns, unique=[*keys, "valid_from"])


ROUTE_STATS = FeatureGroup(
    name="route_stats",
    version=1,
    primary_key=("origin", "dest"),
    event_time="valid_from",
    online=True,
    description="Rolling 7/28-day delay statistics per route, from days strictly before.",
    non_features=("day",),
    online_history=DAILY_ONLINE_HISTORY,
    schema=_daily_stats_schema(
        {
            "origin": _key(pl.String, "NYC origin airport"),
            "dest": _key(pl.String, "destination FAA code"),
        }
    ),
)

CARRIER_STATS = FeatureGroup(
    name="carrier_stats",
    version=1,
    primary_key=("carrier",),
    event_time="valid_from",
    online=True,
    description="Rolling 7/28-day delay statistics per carrier, from days strictly before.",
    non_features=("day",),
    online_history=DAILY_ONLINE_HISTORY,
    schema=_daily_stats_schema({"carrier": _key(pl.String, "two-letter carrier code")}),
)

AIRPORT_WEATHER = FeatureGroup(
    name="airport_weather",
    version=1,
    primary_key=("origin",),
    event_time="observed_at",
    online=True,
    description="Hourly weather observations at each NYC origin airport.",
    # A day of observations: an as_of request anywhere in the last day is answered exactly.
    online_history=timedelta(days=1),
    schema=pa.DataFrameSchema(
        {
            "origin": _key(pl.String, "NYC origin airport", pa.Check.isin(NYC_ORIGINS)),
            "observed_at": _key(UTC_TIMESTAMP, "observation hour (UTC)"),
            "temp": _col(pl.Float32, "temperature, °F", pa.Check.in_range(-60, 130)),
            "dewp": _col(pl.Float32, "dew point, °F", pa.Check.in_range(-80, 100)),
            "humid": _col(pl.Float32, "relative humidity, %", pa.Check.in_range(0, 100)),
            "wind_dir": _col(pl.Float32, "wind direction, degrees", pa.Check.in_range(0, 360)),
            "wind_speed": _col(pl.Float32, "wind speed, mph", pa.Check.in_range(0, 150)),
            "wind_gust": _col(pl.Float32, "gust speed, mph", pa.Check.in_range(0, 200)),
            "precip": _col(pl.Float32, "precipitation, inches", pa.Check.in_range(0, 10)),
            "pressure": _col(pl.Float32, "sea level pressure, mb", pa.Check.in_range(900, 1100)),
            "visib": _col(pl.Float32, "visibility, miles", pa.Check.in_range(0, 100)),
        },
        unique=["origin", "observed_at"],
    ),
)

# Plane attributes do not change over the year: one version per tail number, valid from the epoch.
PLANES_VALID_FROM = datetime(1970, 1, 1, tzinfo=UTC)

PLANES = FeatureGroup(
    name="planes",
    version=1,
    primary_key=("tailnum",),
    event_time="valid_from",
    online=True,
    description="Static aircraft attributes from the FAA registry extract.",
    schema=pa.DataFrameSchema(
        {
            "tailnum": _key(pl.String, "aircraft registration"),
            "valid_from": _key(UTC_TIMESTAMP, "static: the epoch"),
            "year_built": _col(pl.Int16, "year manufactured", pa.Check.in_range(1900, 2014)),
            "seats": _col(pl.Int16, "number of seats", pa.Check.in_range(1, 1000)),
            "engines": _col(pl.Int8, "number of engines", pa.Check.in_range(1, 8)),
            "plane_type": _col(pl.String, "aircraft type"),
            "manufacturer": _col(pl.String, "manufacturer"),
            "engine": _col(pl.String, "engine type"),
        },
        unique=["tailnum", "valid_from"],
    ),
)

# -- departures as they happen (the streaming feature pipeline) -------------------------------

# The flights contract bounds dep_delay below at -120 min: no departure leaves more than two
# hours before its schedule. The online read of a window's resolved departures relies on it.
MAX_EARLY_DEPARTURE = timedelta(minutes=120)

# Online, the departure events and the schedule of the last days only: a prediction reads back
# at most a day and four hours (its aircraft's day, its origin's last four hours).
ONLINE_EVENT_HORIZON = timedelta(days=4)

DEPARTURE_EVENTS = FeatureGroup(
    name="departure_events",
    version=1,
    primary_key=("flight_id",),
    event_time="event_at",
    online=True,
    online_indexes=(("origin",), ("tailnum",)),
    online_horizon=ONLINE_EVENT_HORIZON,
    description=(
        "One event per flight as it happens: its actual departure (event time: the actual "
        "departure instant) or its cancellation (event time: the scheduled departure). "
        "Written by the stream and, from the flights' outcomes, by backfill/run."
    ),
    non_features=("origin", "carrier", "tailnum", "sched_dep_utc", "dep_delay", "is_cancelled"),
    schema=pa.DataFrameSchema(
        {
            "flight_id": _key(pl.String, "the flights group's key"),
            "event_at": _key(
                UTC_TIMESTAMP, "actual departure instant; the scheduled one for a cancellation"
            ),
            "origin": _key(pl.String, "NYC origin airport", pa.Check.isin(NYC_ORIGINS)),
            "carrier": _key(pl.String, "carrier designator", pa.Check.str_length(2, 3)),
            "tailnum": _col(pl.String, "aircraft registration (null when unknown)"),
            "sched_dep_utc": _key(UTC_TIMESTAMP, "scheduled departure instant"),
            "dep_delay": _col(
                pl.Float32,
                "departure delay, minutes (null for a cancellation)",
                pa.Check.in_range(-MAX_EARLY_DEPARTURE.total_seconds() / 60, 1800),
            ),
            "is_cancelled": _key(pl.Boolean, "a cancellation rather than a departure"),
        },
        unique=["flight_id", "event_at"],
    ),
)

DEPARTURE_SCHEDULE = FeatureGroup(
    name="departure_schedule",
    version=1,
    primary_key=("flight_id",),
    event_time="sched_dep_utc",
    online=True,
    online_indexes=(("origin",),),
    online_horizon=ONLINE_EVENT_HORIZON,
    description=(
        "Scheduled departures, known ahead (from the flights group, without outcomes): what "
        "should have left in a window, against which the departure events are counted."
    ),
    non_features=("origin", "carrier"),
    schema=pa.DataFrameSchema(
        {
            "flight_id": _key(pl.String, "the flights group's key"),
            "sched_dep_utc": _key(UTC_TIMESTAMP, "scheduled departure instant"),
            "origin": _key(pl.String, "NYC origin airport", pa.Check.isin(NYC_ORIGINS)),
            "carrier": _key(pl.String, "carrier designator", pa.Check.str_length(2, 3)),
        },
        unique=["flight_id", "sched_dep_utc"],
    ),
)

DEPARTURES_STREAM = "departures"  # the stream_progress key of the departure events

STREAM_PROGRESS = FeatureGroup(
    name="stream_progress",
    version=1,
    primary_key=("stream",),
    event_time="watermark",
    online=True,
    description=(
        "How far in event time a stream's events are in the stores (its watermark): fresh "
        "window features as of T are missing online while the watermark lags T by more than "
        "the view's tolerance, since the events before T may not have arrived yet."
    ),
    non_features=("committed_at", "events"),
    schema=pa.DataFrameSchema(
        {
            "stream": _key(pl.String, "the stream (e.g. departures)"),
            "watermark": _key(UTC_TIMESTAMP, "every event up to this event time is stored"),
            "committed_at": _key(
                UTC_TIMESTAMP, "wall-clock time of the stream's commit (a batch run: the watermark)"
            ),
            "events": _key(pl.Int64, "events in the commit", pa.Check.ge(0)),
        },
        unique=["stream", "watermark"],
    ),
)

QUARANTINE = FeatureGroup(
    name="quarantine",
    version=1,
    primary_key=("source", "row_hash"),
    event_time="key_time",
    online=False,
    description="Raw input rows rejected by validation, with every rule each one broke.",
    non_features=("raw", "rules", "first_run_id", "quarantined_at"),
    schema=pa.DataFrameSchema(
        {
            "source": _key(
                pl.String, "raw table the row came from (flights, weather, planes, departures)"
            ),
            "row_hash": _key(pl.String, "sha256 of source + raw row: re-runs never duplicate it"),
            "key_time": _key(UTC_TIMESTAMP, "constant (the epoch): rows are keyed by content"),
            "raw": _key(pl.String, "the raw row as JSON, exactly as read"),
            "rules": _key(pl.String, "every rule the row broke, '; '-separated"),
            "first_run_id": _key(pl.String, "the run that first quarantined it"),
            "quarantined_at": _key(UTC_TIMESTAMP, "when it was first quarantined"),
        }
    ),
)

FEATURE_GROUPS: dict[str, FeatureGroup] = {
    g.name: g
    for g in (
        FLIGHTS,
        ROUTE_STATS,
        CARRIER_STATS,
        AIRPORT_WEATHER,
        PLANES,
        DEPARTURE_EVENTS,
        DEPARTURE_SCHEDULE,
    )
}

# The groups a stream writes in micro-batch commits (and `compact` compacts by default).
STREAMED_GROUPS: tuple[FeatureGroup, ...] = (DEPARTURE_EVENTS, STREAM_PROGRESS, QUARANTINE)
