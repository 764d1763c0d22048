"""The departure events' wire format: one JSON object per message.

    {"type": "departure", "flight_id": "20131231-UA1714-EWR-0600", "origin": "EWR",
     "carrier": "UA", "tailnum": "N37255", "sched_dep": "2013-12-31T11:00:00Z",
     "actual_dep": "2013-12-31T11:07:00Z", "dep_delay": 7.0}
    {"type": "cancellation", ..., "actual_dep": null, "dep_delay": null}
    {"type": "heartbeat", "at": "2013-12-31T11:08:00Z"}

Instants are ISO 8601 in UTC with a ``Z``. A heartbeat says the upstream's event-time clock has
reached ``at`` (quiet hours have no events, yet the stream is not behind). The same bytes could
travel over Kafka or NATS: nothing here depends on the broker.

Decoding a micro-batch is one Polars NDJSON read; a batch that holds a message Polars cannot
read is split in halves until each unreadable message stands alone, so one bad message costs a
few reads and is quarantined with the parser's reason, never the batch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from feature_pipeline.features.departures import EVENT_COLUMNS

HEARTBEAT = "heartbeat"
INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"
_INSTANTS = ("sched_dep", "actual_dep", "at")
# What a message may hold, as read: instants as text (parsed below, so a bad one is a rule
# broken by one event rather than an unreadable batch).
_WIRE_SCHEMA = {
    **{name: pl.String() for name in EVENT_COLUMNS},
    "dep_delay": pl.Float64(),
    "at": pl.String(),
}
MESSAGE = "__message"  # a decoded row's position in its batch


@dataclass(frozen=True)
class Decoded:
    """A micro-batch read off the wire."""

    events: pl.DataFrame  # EVENT_COLUMNS + MESSAGE, departures and cancellations
    heartbeat: datetime | None  # the latest heartbeat in the batch
    unreadable: list[tuple[int, str]]  # (position, why)
    bad_heartbeats: list[int]  # positions of heartbeats without a readable instant


def decode(payloads: list[bytes]) -> Decoded:
    rows, unreadable = _read(payloads, list(range(len(payloads))))
    typed = rows.with_columns(
        pl.col(c).str.to_datetime(INSTANT_FORMAT, time_zone="UTC", strict=False) for c in _INSTANTS
    )
    beats = typed.filter(pl.col("type") == HEARTBEAT)
    bad_beats = beats.filter(pl.col("at").is_null())[MESSAGE].to_list()
    latest = beats["at"].max()
    events = typed.filter(pl.col("type").is_null() | (pl.col("type") != HEARTBEAT))
    return Decoded(
        events=events.select([*EVENT_COLUMNS, MESSAGE]).cast(EVENT_COLUMNS),  # type: ignore[arg-type]
        heartbeat=latest if isinstance(latest, datetime) else None,
        unreadable=unreadable,
        bad_heartbeats=bad_beats,
    )


def _read(
    payloads: list[bytes], positions: list[int]
) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """Rows of the readable messages (with their positions), and the unreadable ones."""
    if not positions:
        return _empty(), []
    try:
        data = b"\n".join([payloads[i] for i in positions])
        if data.count(b"\n") != len(positions) - 1:
            raise pl.exceptions.ComputeError("a message spans several lines")
        frame = pl.read_ndjson(io.BytesIO(data), schema=_WIRE_SCHEMA)
        if frame.height != len(positions):
            raise pl.exceptions.ComputeError(f"{frame.height} rows from {len(positions)} messages")
        return frame.with_columns(pl.Series(MESSAGE, positions, dtype=pl.Int64)), []
    except (pl.exceptions.PolarsError, ValueError) as exc:
        if len(positions) == 1:
            return _single(payloads[positions[0]], positions[0], exc)
        middle = len(positions) // 2
        left, bad_left = _read(payloads, positions[:middle])
        right, bad_right = _read(payloads, positions[middle:])
        return pl.concat([left, right]), bad_left + bad_right


def _single(
    payload: bytes, position: int, error: Exception
) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """A lone message Polars refused: pretty-printed JSON is fine once on one line."""
    flat = b" ".join(payload.splitlines())
    if flat != payload:
        frame, bad = _read([flat], [0])
        if not bad:
            return frame.with_columns(pl.lit(position, dtype=pl.Int64).alias(MESSAGE)), []
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return _empty(), [(position, f"unreadable: {reason[:200]}")]


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={**_WIRE_SCHEMA, MESSAGE: pl.Int64()})


def encode(events: pl.DataFrame) -> list[bytes]:
    """Typed events (EVENT_COLUMNS) -> one JSON message each."""
    instants = [
        pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias(c) for c in ("sched_dep", "actual_dep")
    ]
    text = events.select(
        pl.struct(
            [*(pl.col(c) for c in EVENT_COLUMNS if c not in ("sched_dep", "actual_dep")), *instants]
        )
        .struct.json_encode()
        .alias("json")
    )["json"]
    return [line.encode() for line in text.to_list()]


def heartbeat(at: datetime) -> bytes:
    return f'{{"type":"{HEARTBEAT}","at":"{at:%Y-%m-%dT%H:%M:%S}Z"}}'.encode()
