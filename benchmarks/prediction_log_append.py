"""What the prediction log costs the request path now: per answered batch, one serialisation of
its raw values (`inference_pipeline.prediction_sink.records.encode_batch`) and one append to the
sink (a spool segment file; an ``XADD`` to Redis when one is reachable at 127.0.0.1:6379, on a
stream of this run's own, deleted after). Batches of 1, 16 and 100 flights with ~100 input
columns shaped like the served model's (80 stored numeric features as Python floats, 6
categorical as strings, 11 on-demand as numpy arrays), interleaved rounds, median and range.

    python benchmarks/prediction_log_append.py [--rounds 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _harness import print_table, use_repo_packages, write_results

use_repo_packages()

import redis  # noqa: E402

from inference_pipeline.prediction_sink.protocol import PredictionSink  # noqa: E402
from inference_pipeline.prediction_sink.records import encode_batch  # noqa: E402
from inference_pipeline.prediction_sink.redis_stream import RedisStreamSink  # noqa: E402
from inference_pipeline.prediction_sink.spool import SpoolSink  # noqa: E402
from shared.prediction_log import ONLINE_SOURCE, LoggedPredictions  # noqa: E402

NAME = "prediction_log_append"
SIZES = (1, 16, 100)
REDIS_URL = "redis://127.0.0.1:6379/0"


def _batch(rows: int) -> list[LoggedPredictions]:
    rng = np.random.default_rng(rows)
    columns: dict[str, Any] = {
        "flight_date": [date(2013, 12, 31)] * rows,
        "sched_dep_time": [int(t) for t in rng.integers(500, 2300, rows)],
    }
    features = []
    for i in range(80):
        columns[f"numeric_{i}"] = [float(v) for v in rng.random(rows)]
        features.append(f"numeric_{i}")
    for i in range(6):
        columns[f"category_{i}"] = ["UA"] * rows
        features.append(f"category_{i}")
    for i in range(11):
        columns[f"on_demand_{i}"] = rng.random(rows)
        features.append(f"on_demand_{i}")
    return [
        LoggedPredictions(
            flight_ids=[f"20131231-UA{i}-EWR-0600" for i in range(rows)],
            columns=columns,
            window=slice(0, rows),
            features=features,
            probabilities=[float(p) for p in rng.random(rows)],
            missing=[[] for _ in range(rows)],
            model_version="1",
            request_id=uuid.uuid4().hex,
            scored_at=datetime.now(UTC),
            source=ONLINE_SOURCE,
            latency_ms=1.0,
        )
    ]


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


def _redis_sink() -> tuple[RedisStreamSink | None, str]:
    stream = f"bench:prediction-log:{uuid.uuid4().hex}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None, stream
    return RedisStreamSink(REDIS_URL, stream, timeout_s=2.0), stream


def _round(calls: int, sinks: dict[str, PredictionSink]) -> dict[str, float]:
    timings = {}
    for rows in SIZES:
        entries = _batch(rows)
        record = encode_batch(entries, "bench")
        timings[f"{rows} flights: encode"] = _per_call_us(
            lambda e=entries: encode_batch(e, "bench"), calls
        )
        for name, sink in sinks.items():
            timings[f"{rows} flights: {name} append"] = _per_call_us(
                lambda s=sink, r=record: s.append(r), calls
            )
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per piece per round")
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as folder:
        sinks: dict[str, PredictionSink] = {
            "spool": SpoolSink(Path(folder), segment_bytes=64 << 20, segment_s=3600, fsync=False)
        }
        redis_sink, stream = _redis_sink()
        if redis_sink is not None:
            sinks["redis"] = redis_sink
        try:
            rounds = [_round(args.calls, sinks) for _ in range(args.rounds)]
        finally:
            for sink in sinks.values():
                sink.close()
            if redis_sink is not None:
                redis.Redis.from_url(REDIS_URL).delete(stream)
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    spread = {k: (min(r[k] for r in rounds), max(r[k] for r in rounds)) for k in rounds[0]}
    rows = [[k, f"{v:.1f}", f"{spread[k][0]:.1f}-{spread[k][1]:.1f}"] for k, v in medians.items()]
    load = [load_before, list(os.getloadavg())]
    print_table("prediction log, per answered batch (µs)", ["piece", "median", "range"], rows)
    print(f"load average before / after: {load[0]} / {load[1]}")
    if redis_sink is None:
        print(f"no Redis at {REDIS_URL}: the redis sink was not measured")
    path = write_results(
        NAME,
        {
            "rounds": args.rounds,
            "calls": args.calls,
            "median_us": medians,
            "range_us": spread,
            "load_average": load,
        },
    )
    print(f"wrote {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
