"""The prediction log under sustained load, as deployed: ``serve`` (managed Triton) and
``log-writer`` as separate processes on a data root with a champion (``scripts/main.sh`` makes
one), client threads sending one-flight requests for ``--seconds``. Reports requests answered,
errors, whether every answered prediction is in the ``predictions`` table once, and the Delta
commits the run added (the writer's policy bounds them: about one per ``FTI_PREDICTION_LOG_
COMMIT_S``, plus a compaction per ``FTI_PREDICTION_LOG_COMPACT_COMMITS``), with the load average.

    python benchmarks/prediction_log_soak.py --data-root data [--seconds 150] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
from _harness import REPO_ROOT, print_table, use_repo_packages, write_results
from deltalake import DeltaTable

use_repo_packages()

from inference_pipeline.triton_server import free_loopback_port  # noqa: E402

NAME = "prediction_log_soak"
FLIGHT = {
    "flight_date": "2013-12-31",
    "sched_dep_time": 830,
    "carrier": "UA",
    "flight": 1545,
    "origin": "EWR",
    "dest": "IAH",
    "tailnum": "N14228",
    "distance": 1400,
    "as_of": "2013-12-31T07:30:00-05:00",
}


class Clients:
    def __init__(self, url: str, count: int) -> None:
        self.url, self.answered, self.errors = url, [], 0
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def run_for(self, seconds: float) -> float:
        began = time.monotonic()
        for thread in self._threads:
            thread.start()
        time.sleep(seconds)
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
                response = client.post(
                    "/v1/predictions",
                    json={"flights": [FLIGHT]},
                    headers={"X-Request-ID": request_id},
                )
                with self._lock:
                    if response.status_code == 200:
                        self.answered.append(request_id)
                    else:
                        self.errors += 1


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
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--clients", type=int, default=4)
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
        clients = Clients(url, args.clients)
        load_before = list(os.getloadavg())
        elapsed = clients.run_for(args.seconds)
        load_after = list(os.getloadavg())
        service.terminate()
        service.wait(timeout=60)
        answered = set(clients.answered)
        deadline = time.monotonic() + 180
        while True:  # the running writer commits the service's last records
            logged = pl.read_delta(table_uri).filter(pl.col("request_id").is_in(answered))
            if logged.height >= len(answered) or time.monotonic() > deadline:
                break
            time.sleep(2)
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
        "writer_exit": writer.returncode,
        "load_average": [load_before, load_after],
    }
    print_table(
        f"prediction log soak ({result['seconds']} s, {args.clients} clients)",
        ["measure", "value"],
        [[k, str(v)] for k, v in result.items()],
    )
    path = write_results(NAME, result)
    print(f"wrote {path.relative_to(path.parents[2])}")


if __name__ == "__main__":
    main()
