"""`FailureLog`: one line per dependency per interval during an outage, then a summary."""

from __future__ import annotations

import asyncio
import logging

import pytest

from inference_pipeline.service.failure_log import FailureLog

log = logging.getLogger("tests.failure_log")


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_an_outage_logs_its_first_failure_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    failures = FailureLog(log, interval_s=0.2)

    async def outage() -> None:
        for i in range(1000):
            failures.failed("triton", f"request {i} -> 503: Triton unreachable")
        failures.failed("feature_store", "request x -> 503: store down")
        await asyncio.sleep(0.3)  # the interval ends: its summary
        for i in range(5):
            failures.failed("triton", f"late {i} -> 503")
        await asyncio.sleep(0.3)
        await asyncio.sleep(0.3)  # a quiet interval: nothing to sum up
        failures.failed("triton", "again -> 503")  # after the quiet: in full

    asyncio.run(outage())
    assert _messages(caplog) == [
        "request 0 -> 503: Triton unreachable",
        "request x -> 503: store down",
        "triton: 999 more failures in the last 0.2 s (latest: request 999 -> 503: Triton "
        "unreachable)",
        "triton: 5 more failures in the last 0.2 s (latest: late 4 -> 503)",
        "again -> 503",
    ]


def test_without_an_event_loop_the_summary_comes_with_the_next_failure(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    clock = [100.0]
    monkeypatch.setattr("inference_pipeline.service.failure_log.time.monotonic", lambda: clock[0])
    failures = FailureLog(log, interval_s=10.0)
    failures.failed("registry", "first", level=logging.ERROR)
    failures.failed("registry", "second")
    clock[0] += 11
    failures.failed("registry", "third")
    assert _messages(caplog) == [
        "first",
        "registry: 1 more failure in the last 10 s (latest: second)",
        "third",
    ]
    assert caplog.records[0].levelno == logging.ERROR
