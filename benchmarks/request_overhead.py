"""What the request-hygiene and failure-handling work adds to one prediction request, in µs.

The online load test (``online_load.py``) cannot resolve a few microseconds on a shared, busy
machine, so the pieces added to the per-request path are timed here in isolation, each beside
the code it replaced, in one process and interleaved rounds (median of rounds):

- reading the body: with the deadline (`BodyDeadlines.read`: a dict entry per read, one timer
  for all reads) against the plain read it replaced, and against a timer per request
  (``asyncio.timeout``), the obvious alternative;
- parsing the body: strict request types against the lax (coercing) ones;
- the store deadline bookkeeping per request (`_Job` and a loop clock read).

    python benchmarks/request_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import print_table, use_repo_packages, write_results

use_repo_packages()

from pydantic import ConfigDict  # noqa: E402

from inference_pipeline.service.body import BodyDeadlines  # noqa: E402
from inference_pipeline.service.pipeline import _Job  # noqa: E402
from inference_pipeline.service.schemas import PredictionRequest, ScheduledFlight  # noqa: E402

NAME = "request_overhead"
FLIGHT = {
    "flight_date": "2013-12-31",
    "sched_dep_time": 1700,
    "carrier": "UA",
    "flight": 1643,
    "origin": "EWR",
    "dest": "SFO",
    "tailnum": "N14228",
    "distance": 2565,
}
BODY = json.dumps({"flights": [FLIGHT]}).encode()


class _LaxFlight(ScheduledFlight):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=False)


class _LaxRequest(PredictionRequest):
    model_config = ConfigDict(extra="forbid", strict=False)
    flights: list[_LaxFlight]  # type: ignore[assignment]


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def _plain_read(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> bytes:
    """The body read before the deadline (what `BodyDeadlines.read` replaced)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _timer_per_request(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> bytes:
    async with asyncio.timeout(5.0):
        return await _plain_read(receive, limit)


async def _time_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - began) / n * 1e6


def _time_sync(fn: Callable[[], Any], n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1e6


async def _round(n: int) -> dict[str, float]:
    deadlines = BodyDeadlines(5.0)
    loop = asyncio.get_running_loop()
    return {
        "body: plain read (before)": await _time_async(lambda: _plain_read(_receive, 1 << 20), n),
        "body: BodyDeadlines.read (now)": await _time_async(
            lambda: deadlines.read(_receive, 1 << 20), n
        ),
        "body: asyncio.timeout per request": await _time_async(
            lambda: _timer_per_request(_receive, 1 << 20), n
        ),
        "parse: lax types (before)": _time_sync(lambda: _LaxRequest.model_validate_json(BODY), n),
        "parse: strict types (now)": _time_sync(
            lambda: PredictionRequest.model_validate_json(BODY), n
        ),
        "store deadline: job + clock (now)": _time_sync(
            lambda: _Job(None, [], loop.time()),  # type: ignore[arg-type]
            n,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50_000, help="calls per piece per round")
    args = parser.parse_args()
    import uvloop

    rounds = [uvloop.run(_round(args.calls)) for _ in range(args.rounds)]
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    spread = {k: (min(r[k] for r in rounds), max(r[k] for r in rounds)) for k in rounds[0]}
    rows = [[k, f"{v:.2f}", f"{spread[k][0]:.2f}-{spread[k][1]:.2f}"] for k, v in medians.items()]
    print_table("per-request pieces (µs, median of rounds)", ["piece", "median", "range"], rows)
    added = medians["body: BodyDeadlines.read (now)"] - medians["body: plain read (before)"]
    added += medians["parse: strict types (now)"] - medians["parse: lax types (before)"]
    added += medians["store deadline: job + clock (now)"]
    print(f"added per one-flight request: {added:.2f} µs")
    path = write_results(
        NAME,
        {
            "rounds": args.rounds,
            "calls": args.calls,
            "median_us": medians,
            "range_us": spread,
            "added_us": added,
            "load_average": list(os.getloadavg()),
        },
    )
    print(f"wrote {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
