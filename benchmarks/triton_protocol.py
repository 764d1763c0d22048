"""The online service's Triton call over HTTP (``tritonclient.http.aio``, binary tensors, the
default) and over gRPC (``tritonclient.grpc.aio``, ``FTI_TRITON_PROTOCOL=grpc``), side by side.

The service's runtime is started here as ``serve`` starts it (a managed Triton serving the
copied data root's champion, uvloop's event loop) and the model inputs of real requests are
captured as the service builds them: the scheduled departures of 2013-12-31, each as of its
departure minus the lead, in batches of 1 flight (a lone request), 8 (about what a coalesced
batch holds at 16 connections) and 100. Then the service's own client class
(`inference_pipeline.scoring.AsyncTritonClient`) calls Triton with them one call at a time (the
service has one batch in flight per model version), cycling through the captured inputs, for
each protocol in turn (the order alternated every round): the call's p50 and p99, the CPU
this process spent per call (the client's work: encoding, the transport, decoding) and the CPU
Triton spent (the server and its Python-backend stub). The one-flight calls are also made
``--gap-ms`` apart (2 ms: about a one-connection client's pace against this service), the
machine idle in between, as a lone client's requests find it.

    nice -n -10 python benchmarks/triton_protocol.py --data-root /tmp/main1 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import REPO_ROOT, print_table, use_repo_packages, write_results

use_repo_packages()

from online_load import (  # noqa: E402
    _range,
    _serving_leftovers,
    cpu_seconds,
    real_flights,
    request_bodies,
)

NAME = "triton_protocol"
SIZES = (1, 8, 100)  # flights per call
SPACED = "1, spaced"  # the one-flight case with --gap-ms of idle between calls
PROTOCOLS = ("http", "grpc")
_DISTINCT = {1: 200, 8: 50, 100: 8}  # different captured inputs per size, called in turn


async def captured_inputs(runtime: Any, root: Path) -> dict[int, list[tuple[str, str, Any]]]:
    """(model, version, matrices) of real requests of each size, as the service built them."""
    from inference_pipeline.service.prediction_requests import answer_predictions

    client = runtime.triton.client
    infer = client.infer
    captured: dict[int, list[tuple[str, str, Any]]] = {size: [] for size in SIZES}

    async def keep(model: str, version: str, matrices: Any) -> Any:
        captured[len(matrices.categorical)].append((model, version, matrices))
        return await infer(model, version, matrices)

    client.infer = keep
    try:
        lead = runtime.models.champion.lead_minutes
        flights = real_flights(root)
        for size in SIZES:
            for body in request_bodies(flights, size, lead)[: _DISTINCT[size]]:
                raw = json.dumps(body, separators=(",", ":")).encode()
                await answer_predictions(runtime, None, "application/json", raw, "p", "true")
    finally:
        client.infer = infer
    return captured


async def timed_calls(
    client: Any, inputs: list[tuple[str, str, Any]], calls: int, triton_pid: int, gap_s: float
) -> dict:
    for model, version, matrices in inputs[:20]:  # warm-up
        await client.infer(model, version, matrices)
    seconds = []
    cpu, triton_cpu = time.process_time(), cpu_seconds(triton_pid)
    for n in range(calls):
        model, version, matrices = inputs[n % len(inputs)]
        began = time.perf_counter()
        await client.infer(model, version, matrices)
        seconds.append(time.perf_counter() - began)
        if gap_s:
            await asyncio.sleep(gap_s)  # the loop idles in epoll, as the service's does
    cpu_ms = 1e3 * (time.process_time() - cpu) / calls
    triton_ms = 1e3 * (cpu_seconds(triton_pid) - triton_cpu) / calls
    seconds.sort()
    return {
        "calls": calls,
        "p50_ms": 1e3 * seconds[len(seconds) // 2],
        "p99_ms": 1e3 * seconds[int(0.99 * (len(seconds) - 1))],
        "cpu_ms_per_call": cpu_ms,
        "triton_cpu_ms_per_call": triton_ms,
    }


async def measure(root: Path, rounds: int, calls: int, gap_s: float) -> list[dict[str, Any]]:
    from inference_pipeline.scoring import AsyncTritonClient
    from inference_pipeline.service.metrics import ServiceMetrics
    from inference_pipeline.service.runtime import ServiceRuntime
    from inference_pipeline.settings import InferenceSettings

    settings = InferenceSettings(data_root=root)
    runtime = ServiceRuntime(settings, ServiceMetrics())
    await runtime.start()
    clients: dict[str, AsyncTritonClient] = {}
    try:
        inputs = await captured_inputs(runtime, root)
        endpoints = runtime.triton.server.endpoints
        clients = {
            "http": AsyncTritonClient(endpoints.http, settings.triton_timeout_s),
            "grpc": AsyncTritonClient(endpoints.http, settings.triton_timeout_s, endpoints.grpc),
        }
        triton_pid = runtime.triton.server.pid
        assert triton_pid is not None  # a managed Triton
        cases = [(size, str(size), 0.0) for size in SIZES] + [(1, SPACED, gap_s)]
        results = []
        for round_ in range(rounds):
            order = PROTOCOLS if round_ % 2 == 0 else PROTOCOLS[::-1]
            for size, case, gap in cases:
                # Fewer spaced calls: each one waits out its gap.
                count = calls if not gap else max(100, calls // 3)
                for protocol in order:
                    client = clients[protocol]
                    result = await timed_calls(client, inputs[size], count, triton_pid, gap)
                    result |= {"round": round_ + 1, "protocol": protocol, "flights": case}
                    results.append(result)
                    print(
                        f"round {round_ + 1} {protocol:4s} {case:>9s} flights: "
                        f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, "
                        f"CPU {result['cpu_ms_per_call']:.3f} ms per call "
                        f"(Triton {result['triton_cpu_ms_per_call']:.3f})",
                        flush=True,
                    )
        return results
    finally:
        for client in clients.values():
            await client.close()
        await runtime.close()


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: each protocol's ranges and medians, and gRPC / HTTP per round (median)."""
    rows = []
    for case in [*(str(size) for size in SIZES), SPACED]:
        by = {
            p: [r for r in results if r["flights"] == case and r["protocol"] == p]
            for p in PROTOCOLS
        }
        row: dict[str, Any] = {"flights": case}
        for protocol, runs in by.items():
            for field in ("p50_ms", "p99_ms", "cpu_ms_per_call", "triton_cpu_ms_per_call"):
                values = [r[field] for r in runs]
                row[f"{protocol}_{field}"] = {
                    "min": min(values), "median": statistics.median(values), "max": max(values)
                }  # fmt: skip
        for field in ("p50_ms", "cpu_ms_per_call"):
            ratios = [g[field] / h[field] for g, h in zip(by["grpc"], by["http"], strict=True)]
            row[f"grpc_over_http_{field}"] = {
                "min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)
            }  # fmt: skip
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop  # the service's event loop (uvicorn picks it)

    work = Path(tempfile.mkdtemp(prefix="triton_protocol_"))
    try:
        root = work / "data"
        shutil.copytree(args.data_root, root, ignore=_serving_leftovers)
        results = uvloop.run(measure(root, args.rounds, args.calls, args.gap_ms / 1e3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "flight_date": "2013-12-31",
        "rounds": args.rounds,
        "calls_per_run": args.calls,
        "gap_ms_of_spaced_calls": args.gap_ms,
        "distinct_inputs": _DISTINCT,
        "results": results,
        "summary": summarise(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, required=True, help="root with features and a champion model"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (protocol order alternated)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per protocol, size, round")
    parser.add_argument(
        "--gap-ms", type=float, default=2.0, help="idle between the spaced one-flight calls"
    )
    args = parser.parse_args()
    payload = run(args)
    rows = []
    for row in payload["summary"]:
        for protocol in PROTOCOLS:
            rows.append(
                [
                    f"{row['flights']} flight(s)",
                    protocol,
                    _range(row[f"{protocol}_p50_ms"], ".3f"),
                    _range(row[f"{protocol}_p99_ms"], ".3f"),
                    _range(row[f"{protocol}_cpu_ms_per_call"], ".3f"),
                    _range(row[f"{protocol}_triton_cpu_ms_per_call"], ".3f"),
                ]
            )
        rows.append(
            [
                "",
                "gRPC / HTTP",
                _range(row["grpc_over_http_p50_ms"], ".2f"),
                "",
                _range(row["grpc_over_http_cpu_ms_per_call"], ".2f"),
                "",
            ]
        )
    print_table(
        f"Triton call by protocol ({args.rounds} rounds: min–max (median))",
        ["case", "protocol", "p50 ms", "p99 ms", "client CPU ms per call", "Triton CPU ms"],
        rows,
    )
    path = write_results(NAME, payload)
    print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
