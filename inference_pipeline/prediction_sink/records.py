"""The prediction log on its way from the service to the log writer: one record per answered
batch, its raw values only.

The request process serialises what scoring already holds (each coalesced batch's request
fields and model inputs, once, plus each request's flight ids, probabilities, missing features
and key) with one ``orjson`` call: no frames, no per-value Python work. The log writer decodes
records back into :class:`~shared.prediction_log.LoggedPredictions` and builds the rows with the
same function the service used to (:func:`~shared.prediction_log.logged_prediction_rows`), so
the ``predictions`` table the monitor reads is unchanged, byte for byte (a test compares both
paths on the real model's inputs).

Format (JSON, ``format`` 1): ``blocks`` (a batch's columns, rows ``[lo, hi)`` of what scoring
held; numpy columns with their dtype, NaN written as null and read back as NaN),
``feature_sets`` (each model's input features, once) and ``parts`` (one per request and
version). A record is self-contained: the writer may read records in any order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import polars as pl

from shared.on_demand import FLIGHT_DATE, SCHED_DEP_TIME
from shared.prediction_log import PREDICTIONS, LoggedPredictions, logged_prediction_rows

FORMAT = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEYS = [*PREDICTIONS.primary_key, PREDICTIONS.event_time]
_REQUEST_FIELDS = (FLIGHT_DATE, SCHED_DEP_TIME)  # what the rows need besides the features


class RecordError(ValueError):
    """A record that is not a prediction log record of a known format."""


def encode_batch(entries: Sequence[LoggedPredictions], record_id: str) -> bytes:
    """One record for ``entries`` (the requests of one answered batch, and their versions)."""
    blocks: list[dict[str, Any]] = []
    block_of: dict[int, tuple[int, int]] = {}  # id(columns) -> (block index, its first row)
    feature_sets: list[Sequence[str]] = []
    set_of: dict[int, int] = {}
    for columns, lo, hi, names in _block_spans(entries):
        block_of[id(columns)] = (len(blocks), lo)
        blocks.append(_block(columns, lo, hi, names))
    parts = []
    for entry in entries:
        features = entry.features
        if id(features) not in set_of:
            set_of[id(features)] = len(feature_sets)
            feature_sets.append(features)
        block, lo = block_of[id(entry.columns)]
        window = entry.window
        parts.append(
            (
                block,
                window.start - lo,
                window.stop - lo,
                set_of[id(features)],
                entry.flight_ids,
                entry.probabilities,
                entry.missing,
                entry.model_version,
                entry.request_id,
                _micros(entry.scored_at),
                entry.source,
                entry.latency_ms,
                entry.test_traffic,
            )
        )
    record = {
        "format": FORMAT,
        "id": record_id,
        "blocks": blocks,
        "feature_sets": feature_sets,
        "parts": parts,
    }
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _block_spans(
    entries: Sequence[LoggedPredictions],
) -> list[tuple[Mapping[str, Sequence[Any]], int, int, set[str]]]:
    """Per scored batch (its ``columns`` object): the rows the entries cover and the columns
    their rows need."""
    spans: dict[int, tuple[Mapping[str, Sequence[Any]], int, int, set[str]]] = {}
    for entry in entries:
        key = id(entry.columns)
        window = entry.window
        if key in spans:
            columns, lo, hi, names = spans[key]
            names.update(entry.features)
            spans[key] = (columns, min(lo, window.start), max(hi, window.stop), names)
        else:
            names = {*_REQUEST_FIELDS, *entry.features}
            spans[key] = (entry.columns, window.start, window.stop, names)
    return list(spans.values())


def _block(
    columns: Mapping[str, Sequence[Any]], lo: int, hi: int, names: set[str]
) -> dict[str, Any]:
    whole = lo == 0 and hi == len(columns[FLIGHT_DATE])  # the usual case: no slicing at all
    values: dict[str, Any] = {
        name: columns[name] if whole else columns[name][lo:hi] for name in names
    }
    numpy = {name: v.dtype.str for name, v in values.items() if isinstance(v, np.ndarray)}
    return {"columns": values, "numpy": numpy}


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: a numpy array it refuses (not contiguous, or of a type
    it does not know) or scalar, as plain values."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot log a value of type {type(value).__name__}")


def decode_batches(record: bytes) -> list[LoggedPredictions]:
    """The entries of one record, as the service held them."""
    try:
        data = orjson.loads(record)
        if data.get("format") != FORMAT:
            raise RecordError(f"unknown prediction log record format {data.get('format')!r}")
        blocks = [_columns(block) for block in data["blocks"]]
        feature_sets = [tuple(names) for names in data["feature_sets"]]
        return [_entry(part, blocks, feature_sets) for part in data["parts"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise RecordError(f"malformed prediction log record: {exc}") from exc


def _columns(block: dict[str, Any]) -> dict[str, Any]:
    columns: dict[str, Any] = block["columns"]
    for name, dtype in block["numpy"].items():
        # orjson wrote NaN as null; a float array reads None back as NaN.
        columns[name] = np.array(columns[name], dtype=np.dtype(dtype))
    columns[FLIGHT_DATE] = [
        None if d is None else date.fromisoformat(d) for d in columns[FLIGHT_DATE]
    ]
    return columns


def _entry(
    part: list[Any], blocks: list[dict[str, Any]], feature_sets: list[tuple[str, ...]]
) -> LoggedPredictions:
    (block, start, stop, features, flight_ids, probabilities, missing, version, request_id,
     scored_at, source, latency_ms, test) = part  # fmt: skip
    return LoggedPredictions(
        flight_ids=flight_ids,
        columns=blocks[block],
        window=slice(start, stop),
        features=feature_sets[features],
        probabilities=probabilities,
        missing=missing,
        model_version=version,
        request_id=request_id,
        scored_at=_EPOCH + timedelta(microseconds=scored_at),
        source=source,
        latency_ms=latency_ms,
        test_traffic=test,
    )


def prediction_rows(entries: Sequence[LoggedPredictions]) -> pl.DataFrame:
    """Rows of :data:`~shared.prediction_log.PREDICTIONS` for decoded entries, each key once
    (a record read twice before one commit gives its rows once)."""
    rows = logged_prediction_rows(entries)
    return rows.unique(subset=_KEYS, keep="last", maintain_order=True)
