"""The prediction time T: the one clock every feature is read by (invariant 7).

Every prediction has a T, and every time-varying feature is read as of T, online and offline,
with the same tolerances:

- training and the batch job: ``T = sched_dep_utc - lead``, the lead being the model's (stored
  with its feature view, chosen by ``--lead-minutes`` at training);
- the online service: the request's arrival, or the request's explicit ``as_of`` instant
  (replays, backtests, the demo on 2013 data).

On the offline side T is a column of the spine, :data:`PREDICTION_TIME` (the point-in-time join
runs on it); on the online side it is one integer per request row, microseconds since the epoch
(UTC), the unit the online stores keep event times in (see ``online_codec``). On-demand features
stay functions of the flight (its schedule), not of T.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import polars as pl

from shared.feature_group import UTC_TIMESTAMP

PREDICTION_TIME = "prediction_time"
DEFAULT_LEAD_MINUTES = 60
# A week: longer leads would read features older than most of the view's tolerances allow.
MAX_LEAD_MINUTES = 7 * 24 * 60

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def lead_of(minutes: int) -> timedelta:
    """The lead as a duration; refuses what no prediction could mean."""
    if not 0 <= minutes <= MAX_LEAD_MINUTES:
        raise ValueError(f"a lead of {minutes} minutes is outside 0..{MAX_LEAD_MINUTES}")
    return timedelta(minutes=minutes)


def lead_minutes(lead: timedelta) -> int:
    return int(lead // timedelta(minutes=1))


def prediction_times(spine_time: str, lead: timedelta) -> pl.Expr:
    """T of each spine row: its event time (the scheduled departure) minus ``lead``."""
    return (pl.col(spine_time).cast(UTC_TIMESTAMP) - pl.lit(lead)).alias(PREDICTION_TIME)


def epoch_us(instant: datetime) -> int:
    """Microseconds since the epoch of an aware instant (exact: no float on the way)."""
    if instant.tzinfo is None:
        raise ValueError(f"{instant.isoformat()} has no UTC offset")
    return (instant - _EPOCH) // _MICROSECOND


def now_us() -> int:
    """The present instant in epoch microseconds: an online request's default T."""
    return time.time_ns() // 1000


def instant_of(us: int) -> datetime:
    """The UTC instant of epoch microseconds (exact)."""
    return _EPOCH + timedelta(microseconds=us)
