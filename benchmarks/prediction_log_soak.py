"""The serving process and the prediction log under sustained load, as deployed (issue 17's
soak): ``serve`` (managed Triton) and ``log-writer`` as separate processes on a data root with
a champion (``scripts/main.sh`` makes one), ``--clients`` keep-alive connections sending
one-flight requests for ``--seconds``, each a different real flight of 2013-12-31 in turn (as
of its departure minus the model's lead), as ``online_load.py`` sends them. Reports requests
answered, errors, whether every answered prediction is in the ``predictions`` table once, the
Delta commits the run added against the writer's policy (at most one per
``FTI_PREDICTION_LOG_COMMIT_S`` once rows wait, plus one compaction per
``FTI_PREDICTION_LOG_COMPACT_COMMITS``), and the resident memory of the serving processes
(the service and its workers, Triton apart) and of the writer, every 10 s: growth is measured
from the end of a one-minute warm-up (caches, arenas and the first compaction settle) to the
end of the run. Goals: 0 errors, commits within the policy, RSS growth < 10%.

    python benchmarks/prediction_log_soak.py --data-root data [--seconds 300] [--clients 8]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
from _harness import (
    REPO_ROOT,
    child_pids,
    print_table,
    rss_mib,
    use_repo_packages,
    write_results,
)
from deltalake import DeltaTable

use_repo_packages()

from online_load import real_flights, request_bodies  # noqa: E402

from inference_pipeline.settings import InferenceSettings  # noqa: E402
from inference_pipeline.triton_server import free_loopback_port  # noqa: E402

NAME = "prediction_log_soak"
WARMUP_S = 60.0  # RSS growth is measured from here
SAMPLE_S = 10.0
GOAL_RSS_GROWTH = 0.10


class Clients:
    def __init__(self, url: str, count: int, bodies: list[dict]) -> None:
        self.url, self.answered, self.errors = url, [], 0
        self._bodies, self._next = bodies, 0
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def run_for(self, seconds: float, memory: Memory) -> float:
        began = time.monotonic()
        for thread in self._threads:
            thread.start()
        while (left := began + seconds - time.monotonic()) > 0:
            time.sleep(min(SAMPLE_S, left))
            memory.sample(time.monotonic() - began)
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return time.monotonic() - began

    def _run(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            sent = 0
            while not self._stop.is_set():
                request_id = f"soak-{number}-{sent}-{time.time_ns()}"
                sent += 1
                with self._lock:
                    body = self._bodies[self._next % len(self._bodies)]
                    self._next += 1
                response = client.post(
                    "/v1/predictions", json=body, headers={"X-Request-ID": request_id}
                )
                with self._lock:
                    if response.status_code == 200:
                        self.answered.append(request_id)
                    else:
                        self.errors += 1


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Memory:
    """RSS samples of the serving processes (the service and its descendants, tritonserver
    apart: a separate server with its own memory policy) and of the log writer."""

    def __init__(self, service: int, writer: int) -> None:
        self._service, self._writer = service, writer
        self.samples: list[dict[str, float]] = []

    def _serving(self) -> list[int]:
        found, todo = [], [self._service]
        while todo:
            pid = todo.pop()
            if "tritonserver" in _command(pid):
                continue
            found.append(pid)
            todo.extend(child_pids(pid))
        return found

    def sample(self, at_s: float) -> None:
        self.samples.append(
            {
                "at_s": round(at_s, 1),
                "service_mib": round(sum(rss_mib(p) for p in self._serving()), 1),
                "writer_mib": round(rss_mib(self._writer), 1),
            }
        )

    def growth(self, name: str) -> float | None:
        """Growth of ``name`` from the first sample after the warm-up to the last."""
        settled = [s for s in self.samples if s["at_s"] >= WARMUP_S]
        if len(settled) < 2 or not settled[0][name]:
            return None
        return round(settled[-1][name] / settled[0][name] - 1, 4)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        command = [sys.executable, "-m", "inference_pipeline", *args]
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(url: str, service: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"the service exited with {service.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    root = args.data_root.resolve()
    table_uri = str(root / "offline" / "predictions_v1")
    first_version = (
        DeltaTable(table_uri).version() if (root / "offline" / "predictions_v1").exists() else -1
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    env |= {"FTI_DATA_ROOT": str(root), "PYTHONPATH": str(REPO_ROOT)}
    logs = root / "benchmark-logs"
    logs.mkdir(exist_ok=True)
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    writer = _start(["log-writer"], env, logs / "log-writer.log")
    service = _start(
        ["serve", "--port", str(port), "--log-level", "WARNING"], env, logs / "serve.log"
    )
    try:
        _wait_ready(url, service)
        lead = int(httpx.get(f"{url}/readyz", timeout=10).json()["lead_minutes"])
        bodies = request_bodies(real_flights(root), 1, lead)
        clients = Clients(url, args.clients, bodies)
        memory = Memory(service.pid, writer.pid)
        load_before = list(os.getloadavg())
        elapsed = clients.run_for(args.seconds, memory)
        load_after = list(os.getloadavg())
        service.terminate()
        service.wait(timeout=60)
        answered = set(clients.answered)
        drain_began = time.monotonic()
        deadline = drain_began + 180
        while True:  # the running writer commits the service's last records
            logged = pl.read_delta(table_uri).filter(pl.col("request_id").is_in(answered))
            if logged.height >= len(answered) or time.monotonic() > deadline:
                break
            time.sleep(2)
        drained = time.monotonic() - drain_began
    finally:
        for process in (service, writer):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    table = DeltaTable(table_uri)
    commits: dict[str, int] = {}
    for entry in table.history():
        if entry["version"] > first_version:
            commits[entry["operation"]] = commits.get(entry["operation"], 0) + 1
    # The writer's policy: a commit at most every COMMIT_S while rows wait (the run, and the
    # drain after it), and a compaction after every COMPACT_COMMITS of them.
    settings = InferenceSettings(data_root=root)
    appends = math.ceil((elapsed + drained) / settings.prediction_log_commit_s) + 1
    compactions = (
        appends // settings.prediction_log_compact_commits
        if settings.prediction_log_compact_commits
        else 0
    )
    bound = appends + compactions
    result = {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "answered": len(answered),
        "requests_per_s": round(len(answered) / elapsed, 1),
        "errors": clients.errors,
        "answered_not_logged": len(answered - set(logged["request_id"])),
        "logged_twice": logged.height - logged["request_id"].n_unique(),
        "commits": commits,
        "commits_per_minute": round(sum(commits.values()) / elapsed * 60, 1),
        "commit_bound": bound,
        "commits_within_policy": sum(commits.values()) <= bound,
        "service_rss_mib": [memory.samples[0]["service_mib"], memory.samples[-1]["service_mib"]],
        "service_rss_growth_after_warmup": memory.growth("service_mib"),
        "writer_rss_growth_after_warmup": memory.growth("writer_mib"),
        "rss_samples": memory.samples,
        "writer_exit": writer.returncode,
        "load_average": [load_before, load_after],
    }
    print_table(
        f"prediction log soak ({result['seconds']} s, {args.clients} clients)",
        ["measure", "value"],
        [[k, str(v)] for k, v in result.items() if k != "rss_samples"],
    )
    growth = result["service_rss_growth_after_warmup"]
    met = (
        not result["errors"]
        and result["commits_within_policy"]
        and growth is not None
        and growth < GOAL_RSS_GROWTH
    )
    verdict = "met" if met else "NOT met"
    print(f"soak goals (0 errors, commits within policy, RSS growth < 10%): {verdict}")
    path = write_results(NAME, result)
    print(f"wrote {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
