"""Fresh window features: what happened at the origin airport, and to the aircraft, just before T.

The implementation of record, run on a whole spine for training and batch scoring (events read
from the offline tables) and on an online batch of more than a few flights (events read from the
online store): the same numpy code over the same kind of arrays, so online at T = offline at T.
An online batch of up to ``recent_departure_rows.MAX_QUERIES`` flights (most requests) takes
:mod:`shared.recent_departure_rows`, the same definitions in plain Python without this code's
fixed numpy cost, held equal to this one bit for bit by a property test.

Inputs are the ``departure_events`` group (one event per flight: its actual departure, at the
actual departure instant, or its cancellation, at the scheduled instant) and the
``departure_schedule`` group (scheduled departures, known ahead). For a query row with origin
``o``, carrier ``c``, tail number ``n``, local day start ``D`` (midnight of the flight's local
date, as a UTC instant) and prediction time ``T``, and each window ``w`` of 30, 60 and 120
minutes:

- ``origin_departures_{w}m``: departure events (not cancellations) at ``o`` with event time in
  ``[T - w, T)``;
- ``origin_mean_dep_delay_{w}m``: their mean departure delay, minutes (null when none);
- ``origin_delayed_share_{w}m``: the share of them delayed more than 15 minutes (null when none);
- ``origin_pending_{w}m``: departures scheduled at ``o`` in ``[T - w, T)`` with no departure or
  cancellation event before ``T`` (late, not yet gone);
- the same four per carrier at the origin: ``origin_carrier_...``;
- ``tail_last_dep_delay``: the delay of aircraft ``n``'s latest departure with event time in
  ``[D, T)`` (null when none: its first flight of the day, or no tail number);
- ``tail_minutes_since_last_dep``: minutes from that departure to ``T``.

Windows are exact: an event counts iff ``T - w <= event time < T``; nothing at or after T ever
counts (the point-in-time rule), whatever T is (no tile alignment). Every value is a function of
the events' own times, so the final offline tables answer "as of T" for any past T exactly.

Coverage: the features of a query are all missing (NaN) when the events are not known up to
``T - tolerance`` (``covered_until``): online, the stream's committed watermark; offline, the
newest event time in the table. A stalled stream thus shows as missing features (imputed and
reported), never as a quiet airport.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import numpy as np
import polars as pl

from shared.feature_definitions import DELAY_THRESHOLD_MIN, MAX_EARLY_DEPARTURE

WINDOWS_MIN: tuple[int, ...] = (30, 60, 120)
LEVELS: tuple[str, ...] = ("origin", "origin_carrier")
_STATS = ("departures", "mean_dep_delay", "delayed_share", "pending")
TAIL_FEATURES: tuple[str, ...] = ("tail_last_dep_delay", "tail_minutes_since_last_dep")
WINDOW_FEATURES: tuple[str, ...] = tuple(
    f"{level}_{stat}_{w}m" for level in LEVELS for w in WINDOWS_MIN for stat in _STATS
)
FEATURES: tuple[str, ...] = (*WINDOW_FEATURES, *TAIL_FEATURES)
COUNT_FEATURES: frozenset[str] = frozenset(
    f for f in WINDOW_FEATURES if "_departures_" in f or "_pending_" in f
)

_US_PER_MIN = 60_000_000
LONGEST_WINDOW = timedelta(minutes=max(WINDOWS_MIN))
# Events a query may need: departures in its longest window, and the resolutions of the
# departures scheduled in it, which left at most MAX_EARLY_DEPARTURE before their schedule.
EVENT_LOOKBACK = LONGEST_WINDOW + MAX_EARLY_DEPARTURE
_NEVER = np.iinfo(np.int64).max  # resolution time of a departure with no event yet
_EVENT_LOOKBACK_US = EVENT_LOOKBACK // timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000


def online_known_since(watermark_us: int, horizon: timedelta | None) -> int | None:
    """The first instant an online store with ``horizon`` surely still holds, given the
    stream's watermark: it keeps the UTC days within the horizon of its newest event, which
    is at or before the watermark."""
    if horizon is None:
        return None
    return (watermark_us // _US_PER_DAY - horizon // timedelta(days=1)) * _US_PER_DAY


def epoch_us(value: datetime) -> int:
    """A UTC instant as integer microseconds since the epoch (the online stores' unit)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DepartureLog:
    """Departure events as arrays: the input of :func:`recent_departure_features`."""

    flight_id: np.ndarray  # object (str)
    origin: np.ndarray  # object (str)
    carrier: np.ndarray  # object (str)
    tailnum: np.ndarray  # object (str or None)
    event_at: np.ndarray  # int64, microseconds since the epoch (UTC)
    dep_delay: np.ndarray  # float64, NaN for cancellations
    cancelled: np.ndarray  # bool

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> DepartureLog:
        """From ``departure_events`` rows (offline); a flight's latest event stands for it."""
        frame = frame.sort("event_at").unique("flight_id", keep="last", maintain_order=True)
        return cls(
            flight_id=objects(frame["flight_id"]),
            origin=objects(frame["origin"]),
            carrier=objects(frame["carrier"]),
            tailnum=objects(frame["tailnum"]),
            event_at=micros(frame["event_at"]),
            dep_delay=frame["dep_delay"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            cancelled=frame["is_cancelled"].fill_null(False).to_numpy().astype(bool),
        )

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> DepartureLog:
        """From online rows as plain values (event times in microseconds); a row read under two
        indexes counts once, and a flight's latest event stands for it (as offline)."""
        flight, origin, carrier, tail, at, delay, cancelled = _columns(
            latest_per_flight(rows, "event_at"),
            ("flight_id", "origin", "carrier", "tailnum", "event_at", "dep_delay", "is_cancelled"),
        )
        return cls(
            flight_id=object_array(flight),
            origin=object_array(origin),
            carrier=object_array(carrier),
            tailnum=object_array(tail),
            event_at=np.array(at, dtype=np.int64),
            dep_delay=np.array(delay, dtype=np.float64),  # None (a cancellation) -> NaN
            cancelled=np.array(cancelled, dtype=bool),  # None -> False
        )


@dataclass(frozen=True)
class Schedule:
    """Scheduled departures as arrays."""

    flight_id: np.ndarray
    origin: np.ndarray
    carrier: np.ndarray
    sched_at: np.ndarray  # int64 microseconds

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Schedule:
        """From ``departure_schedule`` rows; a flight's latest schedule stands for it."""
        frame = frame.sort("sched_dep_utc").unique("flight_id", keep="last", maintain_order=True)
        return cls(
            flight_id=objects(frame["flight_id"]),
            origin=objects(frame["origin"]),
            carrier=objects(frame["carrier"]),
            sched_at=micros(frame["sched_dep_utc"]),
        )

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Schedule:
        flight, origin, carrier, sched = _columns(
            latest_per_flight(rows, "sched_dep_utc"),
            ("flight_id", "origin", "carrier", "sched_dep_utc"),
        )
        return cls(
            flight_id=object_array(flight),
            origin=object_array(origin),
            carrier=object_array(carrier),
            sched_at=np.array(sched, dtype=np.int64),
        )


@dataclass(frozen=True)
class Queries:
    """The rows to compute features for: who and as of when."""

    origin: np.ndarray  # object
    carrier: np.ndarray  # object
    tailnum: np.ndarray  # object (None: unknown aircraft)
    at: np.ndarray  # int64 microseconds: the prediction time T
    day_start: np.ndarray  # int64 microseconds: local midnight of the flight's date

    def __len__(self) -> int:
        return len(self.at)


def recent_departure_features(
    events: DepartureLog,
    schedule: Schedule,
    queries: Queries,
    *,
    covered_until: int | None,
    tolerance: timedelta,
    known_since: int | None = None,
) -> dict[str, np.ndarray]:
    """Every feature of :data:`FEATURES` per query (NaN: missing): counts as float64 arrays,
    the other features rounded to float32, as the offline frames hold them (so both paths
    hand the model identical numbers).

    ``covered_until`` (microseconds; None: nothing known) is the event time up to which the
    events are complete; a query with ``T - tolerance > covered_until`` gets NaN throughout, and
    so does one that needs events before ``known_since`` (None: all history is there; online,
    the start of the store's horizon, see :func:`online_known_since`)."""
    n = len(queries)
    departed = ~events.cancelled
    # Both levels at once: a row per (event, level), keyed by the origin or (origin, carrier).
    # Keys coded from the queries: rows of any other key (code -1) are dropped at once.
    codes = _Codes()
    q_codes = codes.of(_level_keys(queries.origin, queries.carrier))
    e_codes = codes.of(_level_keys(events.origin, events.carrier), add=False)
    s_codes = codes.of(_level_keys(schedule.origin, schedule.carrier), add=False)
    count, mean, share = _departure_windows(
        e_codes,
        _per_level(events.event_at),
        _per_level(events.dep_delay),
        _per_level(departed),
        q_codes,
        _per_level(queries.at),
    )
    pending = _pending_windows(
        s_codes,
        _per_level(schedule.sched_at),
        _per_level(_resolution_times(schedule.flight_id, events)),
        q_codes,
        _per_level(queries.at),
    )
    out: dict[str, np.ndarray] = {}
    for j, level in enumerate(LEVELS):
        mine = slice(j * n, (j + 1) * n)
        for i, w in enumerate(WINDOWS_MIN):
            out[f"{level}_departures_{w}m"] = count[mine, i]
            out[f"{level}_mean_dep_delay_{w}m"] = mean[mine, i]
            out[f"{level}_delayed_share_{w}m"] = share[mine, i]
            out[f"{level}_pending_{w}m"] = pending[mine, i]
    out |= _tail_features(events, departed, queries)
    if n:
        limit = _NEVER if covered_until is None else covered_until
        stale = queries.at - tolerance // timedelta(microseconds=1) > limit
        if covered_until is None:
            stale[:] = True
        if known_since is not None:
            stale |= np.minimum(queries.at - _EVENT_LOOKBACK_US, queries.day_start) < known_since
        if stale.any():
            for values in out.values():
                values[stale] = np.nan
    return {
        name: out[name] if name in COUNT_FEATURES else out[name].astype(np.float32)
        for name in FEATURES
    }


# -- the windows -----------------------------------------------------------------------------


class _KeyedTimeline:
    """Rows sorted by (key code, time), and where an instant falls in a key's rows.

    Every key's rows are one run of the sorted order, so a window of one key is a slice of it,
    found for all queries and windows at once by one binary search over a combined (code, time
    rank) sort key, without a loop over keys: the time rank of an instant is the number of rows
    before it, which compares with the rows' own ranks as the instants do with their times.
    Rows with an unknown key (code -1) are left out. ``ties`` breaks equal times (in its
    order)."""

    def __init__(self, codes: np.ndarray, times: np.ndarray, ties: np.ndarray | None = None):
        known = np.flatnonzero(codes >= 0)
        # lexsort's last key is the primary one.
        sort_keys = [times[known], codes[known]]
        if ties is not None:
            sort_keys.insert(0, ties[known])
        self.rows = known[np.lexsort(sort_keys)]  # indexes into the inputs, in key-time order
        self.times = times[self.rows]
        self._by_time = np.sort(self.times)
        self._span = len(self.rows) + 1
        ranks = np.searchsorted(self._by_time, self.times, side="left")
        self._sorted = codes[self.rows] * self._span + ranks

    def before(self, codes: np.ndarray, instants: np.ndarray) -> np.ndarray:
        """Per query (``codes`` broadcast against ``instants``), the position in the sorted
        rows after the last row of its key strictly before its instant (an unknown key: 0)."""
        ranks = np.searchsorted(self._by_time, instants, side="left")
        found = np.searchsorted(self._sorted, np.maximum(codes, 0) * self._span + ranks)
        return np.where(codes >= 0, found, 0)

    def first(self, codes: np.ndarray) -> np.ndarray:
        """Per query, the position of its key's first row (an unknown key: 0)."""
        return self.before(codes, np.full(codes.shape, np.iinfo(np.int64).min))


_WINDOWS_US = np.array(WINDOWS_MIN, dtype=np.int64) * _US_PER_MIN


def _window_edges(at: np.ndarray) -> np.ndarray:
    """Per query (a row), the start of each window in :data:`WINDOWS_MIN` order, then T."""
    return np.column_stack([at[:, None] - _WINDOWS_US[None, :], at])


def _departure_windows(
    e_codes: np.ndarray,
    event_at: np.ndarray,
    dep_delay: np.ndarray,
    departed: np.ndarray,
    q_codes: np.ndarray,
    at: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query and window (columns in :data:`WINDOWS_MIN` order): departures, mean delay and
    delayed share, by prefix sums over the departures in (key, event time) order (integer
    counts; delays summed in float64, exact for the whole-minute delays of the data and
    identical on both paths for the same events)."""
    line = _KeyedTimeline(np.where(departed, e_codes, -1), event_at)
    delays = dep_delay[line.rows]
    cum_delay = np.concatenate(([0.0], np.cumsum(delays)))
    cum_late = np.concatenate(([0.0], np.cumsum(delays > DELAY_THRESHOLD_MIN)))
    edges = line.before(q_codes[:, None], _window_edges(at))
    lo, hi = edges[:, :-1], edges[:, -1:]  # events strictly before T, from each window's start
    count = (hi - lo).astype(np.float64)
    mean = _ratio(cum_delay[hi] - cum_delay[lo], count)
    share = _ratio(cum_late[hi] - cum_late[lo], count)
    return count, mean, share


def _pending_windows(
    s_codes: np.ndarray,
    sched_at: np.ndarray,
    resolved_at: np.ndarray,
    q_codes: np.ndarray,
    at: np.ndarray,
) -> np.ndarray:
    """Per query and window: departures scheduled in [T - w, T) and not resolved (departed or
    cancelled) before T.

    A departure scheduled at ``s`` and resolved at ``r`` counts for exactly the T of one
    interval: ``s < T <= min(r, s + w)`` (scheduled before T, at most w before it, still open at
    T); one resolved at or before its schedule never counts. So the pending count at T is the
    number of such intervals opened before T minus those closed before T: two prefix counts per
    key, whatever the number of departures per window (the 100x scale data has a hundred times
    the real ones). The windows are keyed apart, as levels are, and share one sort."""
    late = (s_codes >= 0) & (resolved_at > sched_at)  # the only ones that ever count
    codes, opens, resolved = s_codes[late], sched_at[late], resolved_at[late]
    key_count = int(max(codes.max(initial=-1), q_codes.max(initial=-1))) + 1
    windows = len(WINDOWS_MIN)
    shift = (np.arange(windows) * key_count)[:, None]  # window j's keys: code + j * key_count
    window_codes = (codes[None, :] + shift).ravel()
    closes = np.minimum(resolved[None, :], opens[None, :] + _WINDOWS_US[:, None]).ravel()
    line = _KeyedTimeline(
        np.concatenate((window_codes, window_codes)),
        np.concatenate((np.tile(opens, windows), closes)),
    )
    # +1 where an interval opens, -1 where it closes, summed in (key, time) order
    opening = line.rows < len(window_codes)
    open_count = np.concatenate(([0], np.cumsum(np.where(opening, 1, -1))))
    query_codes = np.where(q_codes >= 0, q_codes[None, :] + shift, -1).ravel()
    times = np.tile(at, windows)
    before_t = line.before(query_codes, times)  # opens and closes strictly before T
    first = line.first(query_codes)
    return (open_count[before_t] - open_count[first]).reshape(windows, len(at)).T.astype(float)


def _tail_features(
    events: DepartureLog, departed: np.ndarray, queries: Queries
) -> dict[str, np.ndarray]:
    """The aircraft's latest departure in [local day start, T)."""
    n = len(queries)
    delay = np.full(n, np.nan)
    since = np.full(n, np.nan)
    codes = _Codes()
    q_codes = codes.of(queries.tailnum)
    e_codes = codes.of(events.tailnum, add=False)
    # Ties in time broken by flight id, so both paths pick the same departure whatever order
    # their stores return rows in.
    line = _KeyedTimeline(np.where(departed, e_codes, -1), events.event_at, events.flight_id)
    last = line.before(q_codes, queries.at) - 1
    first = line.first(q_codes)
    found = (q_codes >= 0) & (last >= first)
    found[found] &= line.times[last[found]] >= queries.day_start[found]
    delay[found] = events.dep_delay[line.rows[last[found]]]
    since[found] = (queries.at[found] - line.times[last[found]]) / _US_PER_MIN
    return {"tail_last_dep_delay": delay, "tail_minutes_since_last_dep": since}


def _resolution_times(flight_ids: np.ndarray, events: DepartureLog) -> np.ndarray:
    """Per scheduled departure, the event time of its departure or cancellation (never: the
    largest int64). A flight with several events resolves at its earliest."""
    first: dict[Any, int] = {}
    for flight, moment in zip(events.flight_id.tolist(), events.event_at.tolist(), strict=True):
        if moment < first.get(flight, _NEVER):
            first[flight] = moment
    return np.array([first.get(f, _NEVER) for f in flight_ids.tolist()], dtype=np.int64)


# -- keys ------------------------------------------------------------------------------------


class _Codes:
    """Small integer codes for key values, shared by events and queries (None: -1)."""

    def __init__(self) -> None:
        self._index: dict[Hashable, int] = {}

    def of(self, keys: Iterable[Hashable], *, add: bool = True) -> np.ndarray:
        index = self._index
        if add:
            codes = [-1 if k is None else index.setdefault(k, len(index)) for k in keys]
        else:
            codes = [-1 if k is None else index.get(k, -1) for k in keys]
        return np.array(codes, dtype=np.int64)


def _per_level(values: np.ndarray) -> np.ndarray:
    """``values`` once per level, as :func:`_level_keys` lists the rows' keys."""
    return np.concatenate([values] * len(LEVELS))


def _level_keys(origin: np.ndarray, carrier: np.ndarray) -> list[Hashable]:
    """Each row's key at every level of :data:`LEVELS`, level after level: its origin, then
    its (origin, carrier) pair (None where a part is unknown)."""
    origins = origin.tolist()
    pairs = [
        None if o is None or c is None else (o, c)
        for o, c in zip(origins, carrier.tolist(), strict=True)
    ]
    return [*origins, *pairs]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator where the denominator is positive, else NaN."""
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


# -- conversions -----------------------------------------------------------------------------


def latest_per_flight(rows: Iterable[Mapping[str, Any]], time: str) -> Iterable[Mapping[str, Any]]:
    """One row per flight: its latest by ``time`` (the first of equal ones)."""
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        held = latest.get(row["flight_id"])
        if held is None or held[time] < row[time]:
            latest[row["flight_id"]] = row
    return latest.values()


def _columns(rows: Iterable[Mapping[str, Any]], names: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The ``names`` fields of ``rows`` as one sequence per field, in one pass."""
    columns = list(zip(*map(itemgetter(*names), rows), strict=True))
    return columns or [() for _ in names]


def objects(column: pl.Series) -> np.ndarray:
    return object_array(column.to_list())


def object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def micros(column: pl.Series) -> np.ndarray:
    return column.dt.epoch("us").to_numpy().astype(np.int64)


def feature_frame(values: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """The features as typed columns (counts Int32, the rest Float32; NaN -> null), as
    training and batch frames hold them."""
    columns: list[pl.Series] = []
    for name in FEATURES:
        series = pl.Series(name, values[name], dtype=pl.Float64).fill_nan(None)
        columns.append(series.cast(pl.Int32 if name in COUNT_FEATURES else pl.Float32))
    return pl.DataFrame(columns)
