"""The service's hand-off to the prediction log's sink: one append per answered batch, done
before the requests are answered, and a sink that fails never fails a request."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime
from typing import Any

import pytest

from inference_pipeline.prediction_sink.protocol import SinkUnavailable
from inference_pipeline.prediction_sink.records import decode_batches
from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.prediction_handoff import PredictionHandoff
from shared.prediction_log import ONLINE_SOURCE, LoggedPredictions

pytestmark = pytest.mark.unit


class ListSink:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[bytes] = []
        self.fail = fail

    def append(self, record: bytes) -> None:
        if self.fail:
            raise SinkUnavailable("disk full")
        self.records.append(record)

    def tick(self) -> None:
        return None

    def close(self) -> None:
        return None


def _batch_columns(rows: int) -> dict[str, Any]:
    return {
        "flight_date": [date(2013, 12, 31)] * rows,
        "sched_dep_time": [600 + i for i in range(rows)],
        "carrier": ["UA"] * rows,
    }


def _request(columns: dict[str, Any], row: int) -> LoggedPredictions:
    return LoggedPredictions(
        flight_ids=[f"f{row}"],
        columns=columns,
        window=slice(row, row + 1),
        features=["carrier"],
        probabilities=[0.5],
        missing=[[]],
        model_version="1",
        request_id=f"req-{row}",
        scored_at=datetime(2026, 12, 5, tzinfo=UTC),
        source=ONLINE_SOURCE,
        latency_ms=1.0,
    )


def _handoff(sink: ListSink) -> tuple[PredictionHandoff, ServiceMetrics]:
    metrics = ServiceMetrics()
    failures = FailureLog(logging.getLogger("test"), 10.0)
    return PredictionHandoff(sink, metrics, failures), metrics


def _rows(metrics: ServiceMetrics, outcome: str) -> float:
    return metrics.prediction_log_rows.labels(outcome)._value.get()  # type: ignore[attr-defined]


def test_the_requests_of_one_coalesced_batch_are_one_append_before_any_answer() -> None:
    sink = ListSink()
    handoff, metrics = _handoff(sink)
    columns = _batch_columns(4)

    async def request(row: int) -> int:
        appended = handoff.submit([_request(columns, row)])
        assert appended is not None  # shares its batch: waits for the turn's append
        await appended
        return len(sink.records)  # what the sink held when this request could answer

    async def main() -> list[int]:
        return await asyncio.gather(*(request(row) for row in range(4)))

    seen = asyncio.run(main())
    assert seen == [1, 1, 1, 1]  # every answer after the one append
    assert [e.request_id for e in decode_batches(sink.records[0])] == [f"req-{r}" for r in range(4)]
    assert _rows(metrics, "appended") == 4


def test_a_request_that_was_its_own_batch_is_appended_at_once() -> None:
    sink = ListSink()
    handoff, _ = _handoff(sink)

    async def main() -> None:
        assert handoff.submit([_request(_batch_columns(1), 0)]) is None
        assert len(sink.records) == 1

    asyncio.run(main())


def test_a_failing_sink_is_counted_and_never_raised_into_the_request() -> None:
    sink = ListSink(fail=True)
    handoff, metrics = _handoff(sink)
    columns = _batch_columns(2)

    async def main() -> None:
        assert handoff.submit([_request(columns, 0)]) is not None
        appended = handoff.submit([_request(columns, 1)])
        assert appended is not None
        await appended  # resolves: the request is answered

    asyncio.run(main())
    assert sink.records == []
    assert _rows(metrics, "failed") == 2
