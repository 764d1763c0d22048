"""Load test of the online service with a real load generator (wrk), beside its floors, and
the hand-written part of its request path beside the library path it replaces (invariant 9).

Every request carries different real flights: the scheduled departures of 2013-12-31, each
predicted as of its departure minus the model's lead (so the day's features are read), cycled
by a wrk Lua script (one body per request, in turn). Cases: one flight per request at 1 and at
16 connections, and 100 flights per request at 1 connection. Targets, each its own process,
all started once and measured in turn (the order rotated by one every round, so that a slow
phase of the shared machine hits all of them alike; reversing it, as before, put the same target
first in every odd round, and the first run of a case after the 16-connection one came out up
to 20% slower: each result records its position), each for ``--duration`` s after a
``--warmup``:

- ``service``: ``python -m inference_pipeline serve`` as configured by default, with the
  prediction fast path in front of FastAPI (``FTI_FAST_PREDICTIONS=true``);
- ``service-route``: the same as ``service``, with ``FTI_FAST_PREDICTIONS=false`` (FastAPI's
  route and middleware answer);
- ``bare-fastapi``: a tiny FastAPI app (defined below) that parses the same bodies and returns
  a constant JSON: the HTTP + framework floor;
- ``triton``: Triton's HTTP inference endpoint with rows of zeros of the model's inputs (1 or
  100 rows): the model-server floor.

Opt-in variants (``--service``): ``service-2-workers`` (``FTI_WORKERS=2``), ``service-grpc``
(inference over gRPC) and ``service-split``, the measurement prototype of
``split_service_prototype.py`` (an HTTP front handing each request to a scoring process; its
front's own CPU is reported apart, ``front_cpu_ms_per_request``).

Triton is started here (``TritonServer.start_local`` on the copied data root's model
repository) and shared by every service, and so is the prediction log's writer process
(``python -m inference_pipeline log-writer``), as deployed. The headline figure of the
keep-or-delete rule is one-flight requests/s at 16 connections (the service is bound by its one
core: what a hand-written part saves is Python per request); the gain is taken per round
against the library variant, and ``--rounds`` rounds give its range and median. Beside it, each
service's CPU milliseconds per request (from ``/proc``), which the machine's other work
disturbs less than requests/s, and its requests per coalesced batch (``fti_scored_batch_requests``
between two scrapes of its ``/metrics``), and the log writer's CPU over the same run per request (it
commits what the service answered, on the same cores). The whole machine's cost of a request is
accounted too: Triton's CPU (server and Python-backend stubs), wrk's own (its rusage), their sum
with the target's and the writer's (``machine_cpu_ms_per_request``) and the cores busy over the
run (/proc/stat); from them, per round, the one-flight requests/s at 16 connections that this
work per request could reach with every core busy, beside 60% of bare FastAPI's
(``floor_share_budget``). The load average is recorded around every wrk run. (A
hand-written Triton HTTP client was measured the same way against ``tritonclient.http.aio`` and
deleted: ``results/online_load_triton_client.json``.) Issue 17's goals: p50 <= 2 ms and p99 <=
5 ms at 1 connection, >= 60% of bare FastAPI's requests/s at 16 connections, p99 <= 15 ms for
100 flights at 1 connection.

``--online redis`` serves from a real Redis, as the Kubernetes and compose deployments do:
every online group of the copied root is materialized into a namespace of its own
(``bench-online-<id>``, dropped at the end), the services read it over the network, and the
results go to ``results/online_load_redis.json``. The default is the embedded SQLite file.

    nice -n -10 python benchmarks/online_load.py --data-root /tmp/main1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

from _harness import REPO_ROOT, child_pids, print_table, use_repo_packages, write_results

use_repo_packages()

from shared.flight_identity import as_of_before_departure  # noqa: E402

NAME = "online_load"
FLIGHT_DATE = "2013-12-31"
MANY = 100  # flights per request of the many-flights case
# (case name, flights per request, connections)
CASES = (("1 flight", 1, 1), ("1 flight", 1, 16), (f"{MANY} flights", MANY, 1))
# Each service variant: the environment that selects it (see InferenceSettings).
SERVICES = {
    "service": {},
    "service-route": {"FTI_FAST_PREDICTIONS": "false"},
    # Opt-in (--service): two uvicorn worker processes sharing the benchmark's Triton.
    "service-2-workers": {"FTI_WORKERS": "2"},
    # Opt-in: inference calls over gRPC (tritonclient.grpc.aio) instead of HTTP.
    "service-grpc": {"FTI_TRITON_PROTOCOL": "grpc"},
    # Opt-in: the measurement prototype of split_service_prototype.py (an HTTP front process
    # handing each request to a scoring process that runs the service's runtime).
    "service-split": {},
}
_SPLIT_PROTOTYPE = Path(__file__).with_name("split_service_prototype.py")
DEFAULT_SERVICES = ["service", "service-route"]
# --baseline REF adds the variant "service@REF": the default service of the commit REF (its
# tree exported beside this one), measured in the same rounds as this one's.
BASELINE_PREFIX = "service@"
# Hand-written part -> (its variant, the library variant it replaces).
HAND_WRITTEN = {"prediction fast path": ("service", "service-route")}
KEEP_GAIN = 0.25  # invariant 9: a hand-written path stays only with >= 25% on the headline
GOAL_P50_MS_AT_1 = 2.0
GOAL_P99_MS_AT_1 = 5.0
GOAL_FLOOR_SHARE_AT_16 = 0.60
GOAL_P99_MS_MANY = 15.0
_READY_TIMEOUT_S = 180.0

# Load-test requests are test traffic: logged with the mark, left out of monitoring.
_HEADERS = {"Content-Type": "application/json", "X-FTI-Test-Traffic": "true"}
# wrk's Lua hooks: POST the bodies of WRK_BODY_FILE (one JSON per line) in turn, and the
# summary as one JSON line on stdout.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-FTI-Test-Traffic"] = "true"
local bodies = {}
for line in io.lines(os.getenv("WRK_BODY_FILE")) do bodies[#bodies + 1] = line end
local next_body = 0
function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end
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


def spawn(
    command: list[str], log: Path, env: dict[str, str], cwd: Path = REPO_ROOT
) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
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


def real_flights(root: Path) -> list[dict[str, Any]]:
    """Every flight of FLIGHT_DATE in the offline flights group, in departure order, as the API
    takes it (without ``as_of``)."""
    import polars as pl

    rows = (
        pl.read_delta(str(root / "offline" / "flights_v1"))
        .filter(pl.col("flight_date") == pl.lit(FLIGHT_DATE).str.to_date())
        .sort("sched_dep_time", "flight_id")
        .iter_rows(named=True)
    )
    return [
        {
            "flight_date": FLIGHT_DATE,
            "sched_dep_time": int(row["sched_dep_time"]),
            "carrier": row["carrier"],
            "flight": int(row["flight"]),
            "origin": row["origin"],
            "dest": row["dest"],
            "tailnum": row["tailnum"],
            "distance": int(row["distance"]),
        }
        for row in rows
    ]


def request_bodies(flights: list[dict[str, Any]], size: int, lead: int) -> list[dict[str, Any]]:
    """One body per flight of the day: ``size`` consecutive flights from it (wrapping around),
    each with its ``as_of`` = its departure - the model's ``lead`` minutes."""
    day = date.fromisoformat(FLIGHT_DATE)
    timed = [
        f | {"as_of": as_of_before_departure(day, f["sched_dep_time"], lead).isoformat()}
        for f in flights
    ]
    count = len(timed)
    return [
        {"flights": [timed[(start + i) % count] for i in range(size)]} for start in range(count)
    ]


def triton_body(config: Path, rows: int) -> dict[str, Any]:
    """``rows`` rows of each input the served model declares (names, types and widths read
    from its ``config.pbtxt``); zeros, which an MLP scores as fast as any other values."""
    text = config.read_text()
    inputs = re.findall(
        r'name:\s*"(\w+)"\s*data_type:\s*TYPE_(\w+)\s*dims:\s*\[(\d+)\]', text.split("output")[0]
    )
    return {
        "inputs": [
            {
                "name": name,
                "shape": [rows, int(width)],
                "datatype": dtype,
                "data": [0 if dtype.startswith("INT") else 0.0] * (rows * int(width)),
            }
            for name, dtype, width in inputs
        ]
    }


def wrk(
    url: str, bodies: list[dict[str, Any]], connections: int, seconds: float, workdir: Path
) -> dict[str, Any]:
    """One wrk run posting ``bodies`` in turn (one thread: the machine has few cores and the
    servers need them), with the load average before and after."""
    script, body_file = workdir / "post.lua", workdir / "bodies.jsonl"
    script.write_text(_WRK_SCRIPT)
    body_file.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    load_before = os.getloadavg()[0]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = machine_busy_seconds()
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
    busy = machine_busy_seconds() - busy_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu_s = (children.ru_utime - children_before.ru_utime) + (
        children.ru_stime - children_before.ru_stime
    )
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
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # The load generator's own CPU (wrk is the only child waited for meanwhile), and every
        # core's busy time over the run (whatever ran on the machine: /proc/stat).
        "wrk_cpu_ms_per_request": 1e3 * wrk_cpu_s / max(1, raw["requests"]),
        "machine_busy_cores": busy / (raw["duration_us"] / 1e6),
    }


def machine_busy_seconds() -> float:
    """Seconds every core of this machine spent busy so far (/proc/stat: user, nice, system,
    irq, softirq; not idle, I/O wait or time stolen by the hypervisor)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


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


Totals = tuple[float, float]  # a Prometheus histogram's cumulative (sum, count)


def service_totals(metrics_url: str) -> tuple[dict[str, Totals], Totals | None]:
    """From one scrape of the service's ``/metrics``: the cumulative (seconds, count) per
    stage, and the (requests, batches) of ``fti_scored_batch_requests`` (None: a baseline
    commit from before that metric)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for kind, stage, value in re.findall(
        r'^fti_prediction_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$', text, re.M
    ):
        found.setdefault(stage, {})[kind] = float(value)
    stages = {s: (v.get("sum", 0.0), v.get("count", 0.0)) for s, v in found.items()}
    batch = dict(re.findall(r"^fti_scored_batch_requests_(sum|count) (\S+)$", text, re.M))
    batches = (float(batch["sum"]), float(batch["count"])) if len(batch) == 2 else None
    return stages, batches


def mean_batch(before: Totals | None, after: Totals | None) -> float | None:
    """Requests per coalesced batch over the observations made between two scrapes."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def stage_means_ms(before: dict[str, Totals], after: dict[str, Totals]) -> dict[str, float]:
    """Mean milliseconds per stage over the observations made between two scrapes."""
    means = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            means[stage] = 1e3 * (total - total0) / (count - count0)
    return means


# -- the run --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants so far (threads
    included): a service with several workers is a supervisor and its worker processes."""
    return own_cpu_seconds(pid) + sum(cpu_seconds(child) for child in child_pids(pid))


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` alone (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_REQUEST_CPU_PARTS = (
    "cpu_ms_per_request",  # the target (a service, bare FastAPI)
    "triton_cpu_ms_per_request",
    "log_writer_cpu_ms_per_request",
    "wrk_cpu_ms_per_request",
)


def machine_cpu_ms(result: dict[str, Any]) -> float:
    """CPU milliseconds one request cost this machine: the target, Triton (server and
    stubs), the log writer and wrk, each measured over the same run (whichever took part)."""
    return sum(result.get(part, 0.0) for part in _REQUEST_CPU_PARTS)


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the threads that hold ``pid``'s GIL for ``seconds``, without pausing
    it, as collapsed stacks."""
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when it is not on PATH
    binary = shutil.which("py-spy") or str(beside)
    command = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", "500", "--gil", "--threads", "--nonblocking", "--format", "raw"]
    return subprocess.Popen(
        [*command, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# What a GIL-holding stack is doing, by the first of these found in it (innermost first).
_GIL_WORK = (
    ("prediction log", ("prediction_handoff", "prediction_sink", "prediction_log", "deltalake")),
    ("request: Triton call", ("tritonclient", "aiohttp", "infer (")),
    ("request: store read", ("get_online_rows", "online_sqlite", "online_redis")),
    ("request: features, MDT", ("online_inputs", "feature_view", "transforms")),
    ("request: parse, answer", ("answer_predictions", "prediction_requests", "pydantic")),
    ("request: HTTP", ("httptools", "uvicorn", "app.py", "starlette", "fastapi")),
    ("event loop", ("asyncio", "uvloop", "selectors")),
)


def gil_holders(path: Path) -> dict[str, Any]:
    """Shares of the GIL-holding samples by what the holder was doing, and the leaf functions
    that held it most (py-spy's collapsed stacks: ``frame;frame;... count``)."""
    kinds: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        kind = next(
            (k for k, marks in _GIL_WORK if any(m in f for f in frames for m in marks)), "other"
        )
        kinds[kind] = kinds.get(kind, 0) + n
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:15]
    return {
        "samples": total,
        "share_by_work": {k: round(v / total, 3) for k, v in sorted(kinds.items())}
        if total
        else {},
        "top_leaf_frames": [{"frame": f, "share": round(n / total, 3)} for f, n in top],
    }


def start_services(
    work: Path, triton: Any, env: dict[str, str], names: list[str]
) -> tuple[dict[str, str], list[subprocess.Popen[bytes]]]:
    """Each service variant of ``names`` and the bare app, started at once; their base URLs."""
    bases, processes, logs = {}, [], {}
    for name in names:
        port = free_port()
        logs[name] = work / f"{name}.log"
        variant, cwd = SERVICES.get(name, {}), REPO_ROOT
        if name.startswith(BASELINE_PREFIX):  # the default service of an earlier commit
            cwd = export_tree(name.removeprefix(BASELINE_PREFIX), work / "baseline")
            variant = {"PYTHONPATH": str(cwd)}
        if name == "service-split":
            variant = {
                "FTI_TRITON_MODE": "external",
                "FTI_TRITON_URL": triton.endpoints.http,
                "FTI_TRITON_GRPC_URL": str(triton.endpoints.grpc),
            }
            command = [sys.executable, str(_SPLIT_PROTOTYPE), "front", "--port", str(port)]
            processes.append(spawn(command, logs[name], env | variant, cwd))
            bases[name] = f"http://127.0.0.1:{port}"
            continue
        processes.append(
            spawn(
                [
                    sys.executable,
                    "-m",
                    "inference_pipeline",
                    "serve",
                    "--port",
                    str(port),
                    "--triton-url",
                    triton.endpoints.http,
                    "--triton-grpc-url",
                    str(triton.endpoints.grpc),
                    "--log-level",
                    "WARNING",
                ],
                logs[name],
                env | variant,
                cwd,
            )
        )
        bases[name] = f"http://127.0.0.1:{port}"
    # The prediction log's writer, as deployed beside the service (it reads what the services
    # append to the spool and commits it to the predictions table): its CPU is the machine's.
    processes.append(
        spawn(
            [sys.executable, "-m", "inference_pipeline", "log-writer", "--log-level", "WARNING"],
            work / "log-writer.log",
            env,
        )
    )
    port = free_port()
    logs["bare-fastapi"] = work / "bare.log"
    processes.append(
        spawn([sys.executable, __file__, "--bare-app", str(port)], logs["bare-fastapi"], env)
    )
    bases["bare-fastapi"] = f"http://127.0.0.1:{port}"
    servers = [p for p in processes if "log-writer" not in p.args]
    for (name, base), process in zip(bases.items(), servers, strict=True):
        ready = "/healthz" if name == "bare-fastapi" else "/readyz"
        wait_for(f"{base}{ready}", _READY_TIMEOUT_S, process, logs[name])
    return bases, processes


def export_tree(ref: str, into: Path) -> Path:
    """The checkout's tree at ``ref`` (git archive: no worktree to clean up), once."""
    if not into.exists():
        into.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", ref],
            check=True,
            capture_output=True,
        )
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def missing_groups(url: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Share of the day's flights that miss each feature group (from the service's answers)."""
    counts: dict[str, int] = {}
    total = 0
    for body in bodies:
        for prediction in check_once(url, body)["predictions"]:
            total += 1
            for group in prediction["missing_groups"]:
                counts[group] = counts.get(group, 0) + 1
    return {g: round(n / total, 3) for g, n in sorted(counts.items())}


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
    online: dict[str, Any] = {"backend": args.online}
    if args.online == "redis":
        namespace = f"bench-online-{os.getpid()}"
        online |= materialize_into_redis(root, args.redis_url, namespace)
        env |= {
            "FTI_ONLINE_BACKEND": "redis",
            "FTI_REDIS_URL": args.redis_url,
            "FTI_REDIS_NAMESPACE": namespace,
        }
    processes: list[subprocess.Popen[bytes]] = []
    triton = TritonServer.start_local(
        repository, work / "triton", startup_timeout_s=_READY_TIMEOUT_S
    )
    try:
        bases, processes = start_services(work, triton, env, args.services)
        servers = [p for p in processes if "log-writer" not in p.args]
        pids = {name: p.pid for name, p in zip(bases, servers, strict=True)}
        writer = next(p for p in processes if "log-writer" in p.args)
        first = bases[args.services[0]]
        lead = int(read_json(f"{first}/readyz")["lead_minutes"])
        flights = real_flights(root)
        bodies = {size: request_bodies(flights, size, lead) for size in {c[1] for c in CASES}}
        absent = missing_groups(f"{first}/v1/predictions", bodies[1])
        model_name = next(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())
        config = repository / model_name / "config.pbtxt"
        triton_url = f"http://{triton.endpoints.http}/v2/models/{model_name}/infer"
        targets = [*args.services, "bare-fastapi", "triton"]
        for name in targets:
            for size in bodies:
                if name == "triton":
                    check_once(triton_url, triton_body(config, size))
                else:
                    check_once(f"{bases[name]}/v1/predictions", bodies[size][0])

        results: list[dict[str, Any]] = []
        stages: dict[str, list[dict[str, float]]] = {}
        gil: dict[str, Any] | None = None
        for round_ in range(args.rounds):
            shift = round_ % len(targets)
            order = targets[shift:] + targets[:shift]
            for case, size, connections in CASES:
                for position, target in enumerate(order, start=1):
                    if target == "triton":
                        url, sent = triton_url, [triton_body(config, size)]
                    else:
                        url, sent = f"{bases[target]}/v1/predictions", bodies[size]
                    wrk(url, sent, connections, args.warmup, work)
                    metrics = f"{bases[target]}/metrics" if target.startswith("service") else None
                    before = service_totals(metrics) if metrics else None
                    # Each process the run goes through -> its CPU so far. The log writer
                    # commits what the services answered: on this one host its CPU is taken
                    # from them, so it is part of what a request costs the machine.
                    measured = {"cpu_ms_per_request": pids.get(target)}
                    if target in args.services:
                        measured["log_writer_cpu_ms_per_request"] = writer.pid
                    if target == "triton" or target in args.services:
                        measured["triton_cpu_ms_per_request"] = triton.pid
                    cpu = {key: (pid, cpu_seconds(pid)) for key, pid in measured.items() if pid}
                    front = pids.get(target) if target == "service-split" else None
                    front_before_s = own_cpu_seconds(front) if front else 0.0
                    spied = (
                        args.py_spy
                        and target == "service"
                        and (case, connections) == ("1 flight", args.py_spy_connections)
                        and round_ == args.rounds - 1
                    )
                    spy = py_spy(pids[target], args.duration, work / "spy.txt") if spied else None
                    result = wrk(url, sent, connections, args.duration, work)
                    if spy is not None:
                        spy.wait(timeout=60)
                        gil = gil_holders(work / "spy.txt")
                    result |= {
                        "round": round_ + 1,
                        "case": case,
                        "target": target,
                        "position": position,
                    }
                    if result["requests"]:
                        for key, (pid, before_s) in cpu.items():
                            used = cpu_seconds(pid) - before_s
                            result[key] = 1e3 * used / result["requests"]
                        if front:  # the split prototype's HTTP front alone (the rest: its scorer)
                            used = own_cpu_seconds(front) - front_before_s
                            result["front_cpu_ms_per_request"] = 1e3 * used / result["requests"]
                    result["machine_cpu_ms_per_request"] = machine_cpu_ms(result)
                    if metrics and before is not None:
                        after = service_totals(metrics)
                        batch = mean_batch(before[1], after[1])
                        if batch is not None:
                            result["mean_batch_requests"] = batch
                        if target == "service":
                            key = f"{case} x{connections}"
                            stages.setdefault(key, []).append(stage_means_ms(before[0], after[0]))
                    results.append(result)
                    print(_row_text(result), flush=True)
        summary = summarise(results, args.services)
        return {
            "flight_date": FLIGHT_DATE,
            "online_store": online,
            "flights_in_day": len(flights),
            "missing_groups_share": absent,
            "model": {"triton_name": model_name},
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "nice": os.nice(0),
            "wrk": "wrk -t1 -cN, Lua request() cycling one body per flight, done() percentiles",
            "results": results,
            "service_stage_mean_ms": stages,
            f"gil_holders_1_flight_{args.py_spy_connections}_conn": gil,
            "summary": summary,
            "hand_written": decisions(results),
            "against_baseline": against_baseline(results, args.services),
            "goals": goals(summary),
            "floor_share_budget": floor_share_budget(results),
        }
    finally:
        for process in reversed(processes):
            stop(process)
        triton.stop()
        if "namespace" in online:
            drop_redis_namespace(args.redis_url, online["namespace"])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def materialize_into_redis(root: Path, url: str, namespace: str) -> dict[str, Any]:
    """Every online group of ``root``'s offline store written into Redis under ``namespace``
    (what a deployment's materialization and stream consumer keep there); what was written."""
    from shared.feature_definitions import FEATURE_GROUPS
    from shared.feature_store import open_feature_store
    from shared.settings import FeatureStoreSettings

    settings = FeatureStoreSettings(
        data_root=root, online_backend="redis", redis_url=url, redis_namespace=namespace
    )
    began = time.perf_counter()
    store = open_feature_store(settings)
    try:
        keys = {
            group.name: store.materialize(group).keys_written
            for group in FEATURE_GROUPS.values()
            if group.online
        }
    finally:
        store.close()
    return {"namespace": namespace, "keys": keys, "seconds": time.perf_counter() - began}


def add_online_arguments(parser: argparse.ArgumentParser) -> None:
    """``--online`` and ``--redis-url``, as this benchmark and ``request_profile.py`` take them."""
    parser.add_argument(
        "--online",
        choices=["sqlite", "redis"],
        default="sqlite",
        help="online store read: the root's SQLite file, or a real Redis the root's online "
        "groups are materialized into (results under <name>_redis.json)",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="for --online redis"
    )


def results_name(name: str, args: argparse.Namespace) -> str:
    """The results file's name: ``name``, with ``_redis`` for ``--online redis``."""
    return name if args.online == "sqlite" else f"{name}_{args.online}"


def drop_redis_namespace(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        doomed = list(client.scan_iter(match=f"{namespace}:*", count=1_000))
        for start in range(0, len(doomed), 10_000):
            client.delete(*doomed[start : start + 10_000])
    finally:
        client.close()


def _row_text(r: dict[str, Any]) -> str:
    return (
        f"round {r['round']} {r['case']} x{r['connections']} {r['target']} "
        f"(#{r['position']}): "
        f"{r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
        f"{r.get('cpu_ms_per_request', 0):.2f} CPU ms/request"
        + (
            f" (+{r['log_writer_cpu_ms_per_request']:.2f} log writer)"
            if "log_writer_cpu_ms_per_request" in r
            else ""
        )
        + (f", {r['mean_batch_requests']:.1f} a batch" if "mean_batch_requests" in r else "")
        + (
            f", of which the HTTP front {r['front_cpu_ms_per_request']:.2f}"
            if "front_cpu_ms_per_request" in r
            else ""
        )
        + f", {r['errors']} errors, "
        f"load {r['load_average'][0]:.1f}"
    )


def _pick(results: list[dict[str, Any]], target: str, case: str, conns: int) -> list[dict]:
    return [
        r
        for r in results
        if r["target"] == target and r["case"] == case and r["connections"] == conns
    ]


def summarise(results: list[dict[str, Any]], services: list[str]) -> list[dict[str, Any]]:
    """Per case and target: the range and median over rounds of req/s, p50 and p99, the load
    average range, and (services at 16 connections) the share of bare FastAPI's req/s in the
    same round."""
    rows = []
    for case, _, conns in CASES:
        for target in [*services, "bare-fastapi", "triton"]:
            runs = _pick(results, target, case, conns)
            if not runs:
                continue
            row: dict[str, Any] = {"case": case, "connections": conns, "target": target}
            for key in (
                "requests_per_s",
                "p50_ms",
                "p99_ms",
                "cpu_ms_per_request",
                "log_writer_cpu_ms_per_request",
                "triton_cpu_ms_per_request",
                "wrk_cpu_ms_per_request",
                "machine_cpu_ms_per_request",
                "machine_busy_cores",
                "mean_batch_requests",
            ):
                values = [r[key] for r in runs if key in r]
                if not values:
                    continue
                row[key] = {
                    "min": min(values),
                    "median": statistics.median(values),
                    "max": max(values),
                }
            loads = [x for r in runs for x in r["load_average"]]
            row["load_average"] = [min(loads), max(loads)]
            row["errors"] = sum(r["errors"] for r in runs)
            if target.startswith("service"):
                bare = {r["round"]: r for r in _pick(results, "bare-fastapi", case, conns)}
                shares = [
                    r["requests_per_s"] / bare[r["round"]]["requests_per_s"]
                    for r in runs
                    if r["round"] in bare
                ]
                if shares:
                    row["floor_share"] = {
                        "min": min(shares),
                        "median": statistics.median(shares),
                        "max": max(shares),
                    }
            rows.append(row)
    return rows


def decisions(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per hand-written part: its gain on the headline figure (one-flight req/s at 16
    connections) over its library variant, round by round; kept when the median is >= 25%."""
    verdicts = {}
    for part, (hand, library) in HAND_WRITTEN.items():
        ours = {r["round"]: r for r in _pick(results, hand, "1 flight", 16)}
        theirs = {r["round"]: r for r in _pick(results, library, "1 flight", 16)}
        gains = [
            ours[n]["requests_per_s"] / theirs[n]["requests_per_s"] - 1
            for n in sorted(ours.keys() & theirs.keys())
        ]
        p50 = {n: 1 - ours[n]["p50_ms"] / theirs[n]["p50_ms"] for n in ours.keys() & theirs.keys()}
        cpu = [
            1 - ours[n]["cpu_ms_per_request"] / theirs[n]["cpu_ms_per_request"]
            for n in sorted(ours.keys() & theirs.keys())
            if "cpu_ms_per_request" in ours[n] and "cpu_ms_per_request" in theirs[n]
        ]
        if not gains:
            continue
        one_ours = {r["round"]: r for r in _pick(results, hand, "1 flight", 1)}
        one_theirs = {r["round"]: r for r in _pick(results, library, "1 flight", 1)}
        p50_at_1 = [
            1 - one_ours[n]["p50_ms"] / one_theirs[n]["p50_ms"]
            for n in sorted(one_ours.keys() & one_theirs.keys())
        ]
        median = statistics.median(gains)
        verdicts[part] = {
            "variant": hand,
            "library_variant": library,
            "headline": "1 flight, 16 connections: requests/s",
            "gain_per_round": [round(g, 3) for g in gains],
            "gain_median": round(median, 3),
            "p50_at_16_lower_per_round": [round(v, 3) for _, v in sorted(p50.items())],
            "cpu_per_request_at_16_lower_per_round": [round(v, 3) for v in cpu],
            "p50_at_1_lower_per_round": [round(v, 3) for v in p50_at_1],
            "keep": median >= KEEP_GAIN,
        }
    return verdicts


def against_baseline(results: list[dict[str, Any]], services: list[str]) -> dict[str, Any]:
    """Per case, round by round, this checkout's service against ``--baseline``'s: the ratio
    of p50, p99, requests/s and CPU per request (< 1 for latency and CPU: this one is better)."""
    baseline = next((s for s in services if s.startswith(BASELINE_PREFIX)), None)
    if baseline is None:
        return {}
    out: dict[str, Any] = {"baseline": baseline.removeprefix(BASELINE_PREFIX)}
    for case, _, conns in CASES:
        ours = {r["round"]: r for r in _pick(results, "service", case, conns)}
        theirs = {r["round"]: r for r in _pick(results, baseline, case, conns)}
        rounds = sorted(ours.keys() & theirs.keys())
        out[f"{case} x{conns}"] = {
            key: [round(ours[n][key] / theirs[n][key], 3) for n in rounds]
            for key in ("p50_ms", "p99_ms", "requests_per_s", "cpu_ms_per_request")
            if all(key in ours[n] and key in theirs[n] for n in rounds)
        }
    return out


def floor_share_budget(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether this machine's cores could carry the floor-share goal at all, round by round:
    the one-flight requests/s at 16 connections that the service's whole cost per request
    (the service, Triton, the log writer and wrk: ``machine_cpu_ms_per_request``) would reach
    with every core busy, against 60% of bare FastAPI's requests/s in the same round. A
    ceiling below the goal means that no scheduling of this work reaches it: the work per
    request has to shrink (or the machine to grow). Bigger coalesced batches at a higher rate
    would cost a little less per request, so the ceiling is an estimate, not a bound."""
    cores = os.cpu_count() or 1
    bare = {r["round"]: r for r in _pick(results, "bare-fastapi", "1 flight", 16)}
    rounds = []
    for r in _pick(results, "service", "1 flight", 16):
        floor = bare.get(r["round"])
        if floor is None or not r.get("machine_cpu_ms_per_request"):
            continue
        rounds.append(
            {
                "round": r["round"],
                "service_machine_cpu_ms_per_request": r["machine_cpu_ms_per_request"],
                "bare_machine_cpu_ms_per_request": floor.get("machine_cpu_ms_per_request"),
                "ceiling_requests_per_s": 1e3 * cores / r["machine_cpu_ms_per_request"],
                "goal_requests_per_s": GOAL_FLOOR_SHARE_AT_16 * floor["requests_per_s"],
                "measured_requests_per_s": r["requests_per_s"],
                "busy_cores": r.get("machine_busy_cores"),
            }
        )
    return {"cores": cores, "rounds": rounds}


def goals(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's goals for the default service, on the median and the worst round (none
    when the run left the default service out: ``--service`` names only other variants)."""
    at = {(r["case"], r["connections"]): r for r in summary if r["target"] == "service"}
    if not at:
        return {}
    one, many, sixteen = at[("1 flight", 1)], at[(f"{MANY} flights", 1)], at[("1 flight", 16)]
    checks = {
        "p50_ms_1_flight_1_conn": (one["p50_ms"], GOAL_P50_MS_AT_1, "max"),
        "p99_ms_1_flight_1_conn": (one["p99_ms"], GOAL_P99_MS_AT_1, "max"),
        "p99_ms_100_flights_1_conn": (many["p99_ms"], GOAL_P99_MS_MANY, "max"),
        "floor_share_1_flight_16_conns": (sixteen["floor_share"], GOAL_FLOOR_SHARE_AT_16, "min"),
    }
    verdicts = {}
    for name, (values, goal, worst) in checks.items():
        if worst == "max":
            verdicts[name] = {
                "goal": f"<= {goal}",
                "median": values["median"],
                "worst": values["max"],
                "met_median": values["median"] <= goal,
                "met_every_round": values["max"] <= goal,
            }
        else:
            verdicts[name] = {
                "goal": f">= {goal}",
                "median": values["median"],
                "worst": values["min"],
                "met_median": values["median"] >= goal,
                "met_every_round": values["min"] >= goal,
            }
    return verdicts


def _range(values: dict[str, float], fmt: str) -> str:
    return f"{values['min']:{fmt}}–{values['max']:{fmt}} ({values['median']:{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, help="root with features and a champion model (copied)"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every case and target")
    parser.add_argument(
        "--service",
        dest="services",
        action="append",
        choices=list(SERVICES),
        help=f"service variants to run (repeat; default {', '.join(DEFAULT_SERVICES)})",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the default service of git commit REF (its tree exported), in the same "
        "rounds, and report this one's ratios to it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="sample who holds the service's GIL (py-spy) during the last round's 1-flight run "
        "at --py-spy-connections",
    )
    parser.add_argument(
        "--py-spy-connections",
        type=int,
        choices=sorted({c for _, _, c in CASES}),
        default=1,
        help="the 1-flight case --py-spy samples (default 1 connection)",
    )
    add_online_arguments(parser)
    parser.add_argument("--bare-app", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_app is not None:
        serve_bare_app(args.bare_app)
        return
    args.services = args.services or DEFAULT_SERVICES
    if args.baseline:
        args.services = [*dict.fromkeys(["service", *args.services])]
        args.services.append(BASELINE_PREFIX + args.baseline)
    payload = run(args)
    rows = [
        [
            r["case"],
            str(r["connections"]),
            r["target"],
            _range(r["requests_per_s"], ",.0f"),
            _range(r["p50_ms"], ".2f"),
            _range(r["p99_ms"], ".2f"),
            _range(r["floor_share"], ".0%") if "floor_share" in r else "",
            _range(r["cpu_ms_per_request"], ".2f") if "cpu_ms_per_request" in r else "",
            _range(r["machine_cpu_ms_per_request"], ".2f"),
            f"{r['load_average'][0]:.1f}–{r['load_average'][1]:.1f}",
            str(r["errors"]),
        ]
        for r in payload["summary"]
    ]
    print_table(
        f"online load (wrk, {payload['rounds']} rounds: min–max (median))",
        [
            "case",
            "conns",
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "of floor",
            "CPU ms/req",
            "machine CPU ms/req",
            "load",
            "errors",
        ],
        rows,
    )
    for part, verdict in payload["hand_written"].items():
        gains = ", ".join(f"{g:+.0%}" for g in verdict["gain_per_round"])
        decision = "keep" if verdict["keep"] else "delete"
        cpu = ", ".join(f"{g:.0%}" for g in verdict["cpu_per_request_at_16_lower_per_round"])
        print(
            f"{part}: {verdict['headline']} {gains} over {verdict['library_variant']} "
            f"(median {verdict['gain_median']:+.0%}): {decision}; CPU per request lower by {cpu}"
        )
    compared = payload["against_baseline"]
    for case, ratios in compared.items():
        if case == "baseline":
            continue
        text = ", ".join(
            f"{key} x{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            for key, values in ratios.items()
            if values
        )
        print(f"{case} against {compared['baseline']} (median, range over rounds): {text}")
    for goal, verdict in payload["goals"].items():
        met = "met" if verdict["met_median"] else "NOT met"
        print(
            f"{goal}: median {verdict['median']:.2f}, worst round {verdict['worst']:.2f} "
            f"(goal {verdict['goal']}): {met} on the median"
        )
    budget = payload["floor_share_budget"]
    for r in budget["rounds"]:
        print(
            f"round {r['round']}, 1 flight x16: the machine spent "
            f"{r['service_machine_cpu_ms_per_request']:.2f} CPU ms per service request "
            f"(bare FastAPI {r['bare_machine_cpu_ms_per_request'] or 0:.2f}); with all "
            f"{budget['cores']} cores busy that is at most ~{r['ceiling_requests_per_s']:,.0f} "
            f"req/s, against {r['goal_requests_per_s']:,.0f} for {GOAL_FLOOR_SHARE_AT_16:.0%} of "
            "the floor "
            f"(measured {r['measured_requests_per_s']:,.0f}, {r['busy_cores'] or 0:.2f} cores busy)"
        )
    conns = args.py_spy_connections
    gil = payload[f"gil_holders_1_flight_{conns}_conn"]
    if gil:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in gil["share_by_work"].items())
        print(f"GIL held at {conns} connection(s) ({gil['samples']} samples): {shares}")
    path = write_results(results_name(NAME, args), payload)
    print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
