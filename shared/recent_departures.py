"""Fresh window features: what happened at the origin airport, and to the aircraft, just before T.

The ONE implementation, run on the few rows of an online request (events read from the online
store) and on a whole spine for training and batch scoring (events read from the offline
tables): the same numpy code over the same kind of arrays, so online at T = offline at T.

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
        unique = list(_latest_per_flight(rows, "event_at"))
        return cls(
            flight_id=object_array([r["flight_id"] for r in unique]),
            origin=object_array([r["origin"] for r in unique]),
            carrier=object_array([r["carrier"] for r in unique]),
            tailnum=object_array([r["tailnum"] for r in unique]),
            event_at=np.array([r["event_at"] for r in unique], dtype=np.int64),
            dep_delay=np.array([r["dep_delay"] for r in unique], dtype=np.float64),
            cancelled=np.array([bool(r["is_cancelled"]) for r in unique], dtype=bool),
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
        unique = list(_latest_per_flight(rows, "sched_dep_utc"))
        return cls(
            flight_id=object_array([r["flight_id"] for r in unique]),
            origin=object_array([r["origin"] for r in unique]),
            carrier=object_array([r["carrier"] for r in unique]),
            sched_at=np.array([r["sched_dep_utc"] for r in unique], dtype=np.int64),
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
    out: dict[str, np.ndarray] = {}
    resolved_at = _resolution_times(schedule.flight_id, events)
    departed = ~events.cancelled
    for level, event_key, sched_key, query_key in (
        ("origin", _origin_key, _origin_key, _origin_key),
        ("origin_carrier", _carrier_key, _carrier_key, _carrier_key),
    ):
        codes = _Codes()
        e_codes = codes.of(event_key(events.origin, events.carrier))
        s_codes = codes.of(sched_key(schedule.origin, schedule.carrier))
        q_codes = codes.of(query_key(queries.origin, queries.carrier), add=False)
        out |= _departure_windows(level, e_codes, events, departed, q_codes, queries.at)
        out |= _pending_windows(level, s_codes, schedule.sched_at, resolved_at, q_codes, queries.at)
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


def _departure_windows(
    level: str,
    e_codes: np.ndarray,
    events: DepartureLog,
    departed: np.ndarray,
    q_codes: np.ndarray,
    at: np.ndarray,
) -> dict[str, np.ndarray]:
    """Departures, mean delay and delayed share per window, by prefix sums over each key's
    departures in event-time order (integer counts; delays summed in float64, exact for the
    whole-minute delays of the data and identical on both paths for the same events)."""
    n = len(at)
    count = {w: np.zeros(n) for w in WINDOWS_MIN}
    total = {w: np.zeros(n) for w in WINDOWS_MIN}
    late = {w: np.zeros(n) for w in WINDOWS_MIN}
    keep = departed & (e_codes >= 0)
    for code, rows in _by_code(q_codes):
        mine = keep & (e_codes == code)
        times = events.event_at[mine]
        order = np.argsort(times, kind="stable")
        times = times[order]
        delays = events.dep_delay[mine][order]
        cum_delay = np.concatenate(([0.0], np.cumsum(delays)))
        cum_late = np.concatenate(([0], np.cumsum(delays > DELAY_THRESHOLD_MIN)))
        hi = np.searchsorted(times, at[rows], side="left")  # events strictly before T
        for w in WINDOWS_MIN:
            lo = np.searchsorted(times, at[rows] - w * _US_PER_MIN, side="left")
            count[w][rows] = hi - lo
            total[w][rows] = cum_delay[hi] - cum_delay[lo]
            late[w][rows] = cum_late[hi] - cum_late[lo]
    out = {}
    for w in WINDOWS_MIN:
        some = count[w] > 0
        out[f"{level}_departures_{w}m"] = count[w]
        out[f"{level}_mean_dep_delay_{w}m"] = _ratio(total[w], count[w], some)
        out[f"{level}_delayed_share_{w}m"] = _ratio(late[w], count[w], some)
    return out


def _pending_windows(
    level: str,
    s_codes: np.ndarray,
    sched_at: np.ndarray,
    resolved_at: np.ndarray,
    q_codes: np.ndarray,
    at: np.ndarray,
) -> dict[str, np.ndarray]:
    """Departures scheduled in [T - w, T) and not resolved (departed or cancelled) before T.

    Each query looks at the scheduled departures of its key in its longest window (a few dozen
    at the busiest NYC hour), checked all at once as (query, departure) pairs."""
    n = len(at)
    pending = {w: np.zeros(n) for w in WINDOWS_MIN}
    longest = max(WINDOWS_MIN) * _US_PER_MIN
    for code, rows in _by_code(q_codes):
        mine = s_codes == code
        order = np.argsort(sched_at[mine], kind="stable")
        sched = sched_at[mine][order]
        resolved = resolved_at[mine][order]
        t = at[rows]
        lo = np.searchsorted(sched, t - longest, side="left")
        hi = np.searchsorted(sched, t, side="left")
        for block in _pair_blocks(hi - lo, MAX_PAIRS):
            b_lo, b_t, sizes = lo[block], t[block], (hi - lo)[block]
            if not sizes.sum():
                continue
            owner = np.repeat(np.arange(len(b_t)), sizes)
            position = np.repeat(b_lo - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
            open_at_t = resolved[position] >= b_t[owner]
            for w in WINDOWS_MIN:
                inside = open_at_t & (sched[position] >= b_t[owner] - w * _US_PER_MIN)
                pending[w][rows[block]] = np.bincount(owner, weights=inside, minlength=len(b_t))
    return {f"{level}_pending_{w}m": pending[w] for w in WINDOWS_MIN}


# (query, departure) pairs checked at once: bounds memory (~20 bytes a pair) when a key has many
# departures per window, e.g. the scale benchmarks' 100 replicas of every flight (3.4 billion
# pairs in one 31-day chunk at 100x without blocks).
MAX_PAIRS = 1 << 22


def _pair_blocks(sizes: np.ndarray, max_pairs: int) -> list[slice]:
    """Consecutive slices of the queries whose pairs add up to at most ``max_pairs`` each (a
    single query with more still gets a slice of its own)."""
    blocks, start, total = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if total and total + size > max_pairs:
            blocks.append(slice(start, i))
            start, total = i, 0
        total += size
    blocks.append(slice(start, len(sizes)))
    return blocks


def _tail_features(
    events: DepartureLog, departed: np.ndarray, queries: Queries
) -> dict[str, np.ndarray]:
    """The aircraft's latest departure in [local day start, T)."""
    n = len(queries)
    delay = np.full(n, np.nan)
    since = np.full(n, np.nan)
    codes = _Codes()
    e_codes = codes.of(events.tailnum)
    q_codes = codes.of(queries.tailnum, add=False)
    keep = departed & (e_codes >= 0)
    for code, rows in _by_code(q_codes):
        mine = keep & (e_codes == code)
        # Ties in time broken by flight id, so both paths pick the same departure whatever
        # order their stores return rows in.
        order = np.lexsort((events.flight_id[mine], events.event_at[mine]))
        times = events.event_at[mine][order]
        delays = events.dep_delay[mine][order]
        last = np.searchsorted(times, queries.at[rows], side="left") - 1
        found = last >= 0
        found[found] &= times[last[found]] >= queries.day_start[rows][found]
        hit = rows[found]
        delay[hit] = delays[last[found]]
        since[hit] = (queries.at[hit] - times[last[found]]) / _US_PER_MIN
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


def _origin_key(origin: np.ndarray, carrier: np.ndarray) -> list[Hashable]:
    return list(origin.tolist())


def _carrier_key(origin: np.ndarray, carrier: np.ndarray) -> list[Hashable]:
    return [
        None if o is None or c is None else (o, c)
        for o, c in zip(origin.tolist(), carrier.tolist(), strict=True)
    ]


def _by_code(codes: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """(code, the rows holding it) for each known code (-1, unknown, is skipped)."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] - 1))
    for start, stop in zip(starts, [*starts[1:], len(ordered)], strict=True):
        code = int(ordered[start])
        if code >= 0:
            yield code, order[start:stop]


def _ratio(numerator: np.ndarray, denominator: np.ndarray, some: np.ndarray) -> np.ndarray:
    out = np.full(len(numerator), np.nan)
    out[some] = numerator[some] / denominator[some]
    return out


# -- conversions -----------------------------------------------------------------------------


def _latest_per_flight(rows: Iterable[Mapping[str, Any]], time: str) -> Iterable[Mapping[str, Any]]:
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        held = latest.get(row["flight_id"])
        if held is None or held[time] < row[time]:
            latest[row["flight_id"]] = row
    return latest.values()


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
