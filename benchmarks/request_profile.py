"""Where a prediction request's time goes, in process: 1, 8 and 100 flights per request (8: the
batch that 16 connections' one-flight requests coalesce into, about 8 a batch).

The service's runtime is started here as ``serve`` starts it (managed Triton, the copied data
root's champion, the prediction log on), and ``answer_predictions`` (what both HTTP paths
call) is called for the real flights of 2013-12-31, each as of its departure minus the lead,
one request at a time: the work of a request without HTTP. Each stage is timed by wrapping the
function that does it (perf_counter, no profiler), so the figures are the stage's own wall
time: parse (the body against the schema, each flight's T), store read (one
``get_online_rows`` or ``get_online_rows_and_ranges`` for every group), the fresh window
features (their reads planned, then computed), on-demand features, MDT, input reports, Triton,
the answer's JSON, the prediction log's hand-off; "other" is the rest of the request (the
answer's dicts, traffic and pipeline bookkeeping); the garbage collector's time (``gc.callbacks``)
is shown beside them (it falls within them). The same split for the slowest 1% of requests
says what the tail spends its time on. Then one cProfile run of the 100-flight requests
lists the functions that cost most inside the stages.

    nice -n -10 python benchmarks/request_profile.py --data-root /tmp/main1
    nice -n -10 python benchmarks/request_profile.py --data-root /tmp/main1 --online redis

``--online redis`` reads a real Redis instead of the root's SQLite file, as deployments do: the
root's online groups are materialized into a namespace of its own first (dropped at the end),
and the results go to ``results/request_profile_redis.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import REPO_ROOT, print_table, use_repo_packages, write_results

use_repo_packages()

from online_load import (  # noqa: E402
    _serving_leftovers,
    add_online_arguments,
    drop_redis_namespace,
    materialize_into_redis,
    real_flights,
    request_bodies,
    results_name,
)

NAME = "request_profile"
# Flights per request; 8 is the coalesced batch of the 16-connection case of online_load.py.
SIZES = (1, 8, 100)


class StageClock:
    """Seconds per stage of the current request, from wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        function = getattr(owner, name)
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    self.seconds[stage] += time.perf_counter() - began

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(function)
            def timed(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.seconds[stage] += time.perf_counter() - began

            setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


def instrument(runtime: Any) -> StageClock:
    import inference_pipeline.scoring as scoring
    import inference_pipeline.service.prediction_requests as requests
    import shared.feature_view as feature_view

    clock = StageClock()
    clock.wrap(requests, "_parse", "parse")
    clock.wrap(requests, "flights_as_of", "parse")
    clock.wrap(runtime.store.store, "get_online_rows", "store read")
    clock.wrap(runtime.store.store, "get_online_rows_and_ranges", "store read")
    if runtime.store.store.online_async is not None:  # Redis: the read awaited on the loop
        clock.wrap(runtime.store.store.online_async, "read_rows_and_ranges_async", "store read")
    clock.wrap(feature_view, "online_fresh_reads", "fresh features")
    clock.wrap(feature_view, "online_fresh_columns", "fresh features")
    clock.wrap(feature_view, "on_demand_columns", "on-demand")
    clock.wrap(scoring, "apply_mdt_columns", "MDT")
    clock.wrap(scoring, "input_reports", "input reports")
    clock.wrap(runtime.triton.client, "infer", "Triton")
    clock.wrap(requests, "json_bytes", "JSON")
    if runtime.traffic.prediction_log is not None:
        clock.wrap(runtime.traffic.prediction_log, "submit", "log hand-off")
        clock.wrap(runtime.traffic.prediction_log, "_append_group", "log hand-off")
    return clock


class GcClock:
    """Seconds spent in the garbage collector (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began


def _per_stage(
    requests: list[dict[str, float]], reduce: Callable[[list[float]], float]
) -> dict[str, float]:
    stages = sorted({s for r in requests for s in r})
    return {s: 1e3 * reduce([r.get(s, 0.0) for r in requests]) for s in stages}


async def measure(
    root: Path, requests: int, profile_out: Path | None, online: dict[str, Any]
) -> dict[str, Any]:
    from inference_pipeline.service.app import _freeze_startup_objects as freeze_startup_objects
    from inference_pipeline.service.metrics import ServiceMetrics
    from inference_pipeline.service.prediction_requests import answer_predictions
    from inference_pipeline.service.runtime import ServiceRuntime
    from inference_pipeline.settings import InferenceSettings

    store: dict[str, Any] = {}
    if online["backend"] == "redis":
        store = {
            "online_backend": "redis",
            "redis_url": online["url"],
            "redis_namespace": online["namespace"],
        }
    runtime = ServiceRuntime(InferenceSettings(data_root=root, **store), ServiceMetrics())
    await runtime.start()
    freeze_startup_objects()  # as the app's lifespan does
    try:
        lead = runtime.models.champion.lead_minutes
        flights = real_flights(root)
        bodies = {
            size: [
                json.dumps(b, separators=(",", ":")).encode()
                for b in request_bodies(flights, size, lead)
            ]
            for size in SIZES
        }
        clock = instrument(runtime)
        collector = GcClock()
        gc.callbacks.append(collector)

        async def one(body: bytes) -> None:
            await answer_predictions(runtime, None, "application/json", body, "p", "true")

        results: dict[str, Any] = {}
        for size in SIZES:
            cycle = bodies[size]
            for body in cycle[:20]:  # warm-up
                await one(body)
            clock.take()
            totals, taken_all = [], []
            for n in range(requests):
                collector.seconds = 0.0
                began = time.perf_counter()
                await one(cycle[n % len(cycle)])
                total = time.perf_counter() - began
                taken = clock.take()
                taken["other"] = total - sum(taken.values())
                taken["(gc, within the above)"] = collector.seconds
                totals.append(total)
                taken_all.append(taken)
            p99 = sorted(totals)[int(0.99 * (len(totals) - 1))]
            tail = [t for t, total in zip(taken_all, totals, strict=True) if total >= p99]
            results[str(size)] = {
                "requests": requests,
                "total_ms_median": 1e3 * statistics.median(totals),
                "total_ms_p99": 1e3 * p99,
                "stage_ms_median": _per_stage(taken_all, statistics.median),
                "stage_ms_mean": _per_stage(taken_all, statistics.fmean),
                # What the slowest 1% of requests spent their time on.
                "tail_requests": len(tail),
                "tail_stage_ms_mean": _per_stage(tail, statistics.fmean),
            }
        profiler = cProfile.Profile()
        profiler.enable()
        for n in range(requests):
            await one(bodies[100][n % len(bodies[100])])
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        results["cprofile_100_flights_tottime_top25"] = text.getvalue()
        if profile_out is not None:
            profiler.dump_stats(profile_out)
        return results
    finally:
        await runtime.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="request_profile_"))
    online: dict[str, Any] = {"backend": args.online}
    try:
        root = work / "data"
        shutil.copytree(args.data_root, root, ignore=_serving_leftovers)
        if args.online == "redis":
            online |= {"url": args.redis_url}
            online |= materialize_into_redis(root, args.redis_url, f"bench-profile-{os.getpid()}")
        results = asyncio.run(measure(root, args.requests, args.profile_out, online))
        return {"online_store": online, **results}
    finally:
        if "namespace" in online:
            drop_redis_namespace(args.redis_url, online["namespace"])
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, required=True, help="root with features and a champion model"
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per case")
    parser.add_argument("--profile-out", type=Path, help="also write the cProfile stats here")
    add_online_arguments(parser)
    args = parser.parse_args()
    payload = run(args)
    stages = list(payload["100"]["stage_ms_median"])
    rows = []
    for size in SIZES:
        case = payload[str(size)]
        median, p99 = case["total_ms_median"], case["total_ms_p99"]
        rows.append([f"{size} flight(s)", "total", f"{median:.3f}", "", f"{p99:.3f} (p99)"])
    for stage in stages:
        for size in SIZES:
            case = payload[str(size)]
            rows.append(
                [
                    f"{size} flight(s)",
                    stage,
                    f"{case['stage_ms_median'].get(stage, 0):.3f}",
                    f"{case['stage_ms_mean'].get(stage, 0):.3f}",
                    f"{case['tail_stage_ms_mean'].get(stage, 0):.3f}",
                ]
            )
    print_table(
        "request time by stage (ms)",
        ["request", "stage", "median", "mean", "slowest 1%: mean"],
        rows,
    )
    print(payload["cprofile_100_flights_tottime_top25"])
    path = write_results(results_name(NAME, args), payload)
    print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
