"""Stream freshness: event appended to the stream -> visible to a prediction.

Goal (issue 12): p99 <= 500 ms while sustaining 2,000 events/s.

A `python -m feature_pipeline stream` process consumes a fresh Redis stream into a fresh data
root (SQLite online store by default, or Redis with ``--online redis``). This script appends the
2013 departures to the stream at ``--rate`` events per second for ``--seconds`` (real events,
in event-time order; heartbeats left out), and a prober thread watches a sample of them (every
``--sample``-th): from the moment its XADD returned, it polls the online store with the read a
prediction issues (the event's origin, a range of event time holding the event) until the
event is there. The latency is that wait; the poll interval (2 ms) bounds its resolution.

    python benchmarks/stream_freshness.py                       # 3 rounds of 30 s at 2,000/s
    python benchmarks/stream_freshness.py --rounds 1 --seconds 10 --online redis
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO_ROOT, print_table, use_repo_packages, write_results

use_repo_packages()

import polars as pl  # noqa: E402
import redis  # noqa: E402

from feature_pipeline.extract import Source  # noqa: E402
from feature_pipeline.stream.messages import encode  # noqa: E402
from feature_pipeline.stream.redis_streams import RedisStreamPublisher  # noqa: E402
from feature_pipeline.stream.replay import replay_events  # noqa: E402
from shared.feature_definitions import DEPARTURE_EVENTS  # noqa: E402
from shared.feature_store import OnlineRangeLookup, open_feature_store  # noqa: E402
from shared.recent_departures import epoch_us  # noqa: E402
from shared.settings import FeatureStoreSettings, OnlineBackend  # noqa: E402

POLL_S = 0.002


class Prober(threading.Thread):
    """Polls the online store for the sampled events until each is visible."""

    def __init__(self, settings: FeatureStoreSettings) -> None:
        super().__init__(daemon=True)
        self.store = open_feature_store(settings)
        self.waiting: dict[str, tuple[float, str, int]] = {}  # flight -> (appended, origin, at)
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def watch(self, samples: Sequence[tuple[str, str, int]], appended: float) -> None:
        with self.lock:
            for flight, origin, at in samples:
                self.waiting[flight] = (appended, origin, at)

    def run(self) -> None:
        while not (self.done.is_set() and not self.waiting):
            with self.lock:
                pending = list(self.waiting.items())
            if pending:
                lookup = OnlineRangeLookup(
                    DEPARTURE_EVENTS,
                    ("origin",),
                    [(origin,) for _, (_, origin, _) in pending],
                    [at for _, (_, _, at) in pending],
                    [at + 1 for _, (_, _, at) in pending],
                )
                _, [found] = self.store.get_online_rows_and_ranges([], [lookup])
                now = time.perf_counter()
                with self.lock:
                    for (flight, (appended, _, _)), rows in zip(pending, found, strict=True):
                        if any(r["flight_id"] == flight for r in rows):
                            self.latencies.append(now - appended)
                            del self.waiting[flight]
            time.sleep(POLL_S)
        self.store.close()


def _events(count: int) -> tuple[list[bytes], pl.DataFrame]:
    events = replay_events(Source(), date(2013, 6, 1), date(2013, 7, 31)).head(count)
    return encode(events.drop("event_at")), events


def one_round(
    args: argparse.Namespace, payloads: list[bytes], events: pl.DataFrame
) -> dict[str, Any]:
    key = f"bench:fresh:{uuid.uuid4().hex}"
    namespace = f"bench-fresh-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(args.redis_url)
    with tempfile.TemporaryDirectory(prefix="stream-fresh-") as root:
        settings = FeatureStoreSettings(
            data_root=Path(root),
            online_backend=OnlineBackend(args.online),
            redis_url=args.redis_url,
            redis_namespace=namespace,
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "FTI_DATA_ROOT": root,
            "FTI_ONLINE_BACKEND": args.online,
            "FTI_REDIS_URL": args.redis_url,
            "FTI_REDIS_NAMESPACE": namespace,
            "FTI_STREAM_URL": args.redis_url,
            "FTI_STREAM_KEY": key,
        }
        consumer = subprocess.Popen(
            [sys.executable, "-m", "feature_pipeline", "stream", "--consumer", "fresh"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not _group_exists(client, key):
                if time.monotonic() > deadline or consumer.poll() is not None:
                    raise RuntimeError("the consumer did not start")
                time.sleep(0.1)
            prober = Prober(settings)
            prober.start()
            publisher = RedisStreamPublisher(args.redis_url, key)
            flights = events["flight_id"].to_list()
            origins = events["origin"].to_list()
            ats = [epoch_us(t) for t in events["event_at"].to_list()]
            total = min(len(payloads), int(args.rate * args.seconds))
            load_before = os.getloadavg()[0]
            began = time.perf_counter()
            sent = 0
            while sent < total:
                due = min(total, int((time.perf_counter() - began) * args.rate) + 1)
                if due > sent:
                    publisher.publish(payloads[sent:due])
                    appended = time.perf_counter()
                    prober.watch(
                        [
                            (flights[i], origins[i], ats[i])
                            for i in range(sent, due)
                            if i % args.sample == 0
                        ],
                        appended,
                    )
                    sent = due
                time.sleep(0.005)
            rate = sent / (time.perf_counter() - began)
            prober.done.set()
            prober.join(timeout=60)
            lag = client.xinfo_groups(key)[0]["lag"]
            publisher.close()
        finally:
            consumer.terminate()
            consumer.wait(timeout=120)
            client.delete(key)
            for name in client.scan_iter(match=f"{namespace}:*", count=1000):
                client.delete(name)
    latencies = sorted(prober.latencies)
    missing = len(prober.waiting)
    return {
        "online": args.online,
        "events": sent,
        "rate_per_s": rate,
        "samples": len(latencies),
        "never_visible": missing,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
        "lag_at_end": lag,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _group_exists(client: redis.Redis, key: str) -> bool:
    try:
        return bool(client.xinfo_groups(key))
    except redis.ResponseError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="events appended per second")
    parser.add_argument("--sample", type=int, default=20, help="watch every n-th event")
    parser.add_argument("--online", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    payloads, events = _events(int(args.rate * args.seconds))
    runs = []
    for round_no in range(1, args.rounds + 1):
        run = one_round(args, payloads, events) | {"round": round_no}
        runs.append(run)
        print(
            f"round {round_no}: {run['events']:,} events at {run['rate_per_s']:,.0f}/s, "
            f"p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms, max {run['max_ms']:.0f} ms "
            f"(load {run['load_before']:.1f})",
            flush=True,
        )
    print_table(
        f"append -> visible online ({args.online}); goal p99 <= 500 ms at 2,000 events/s",
        ["round", "events/s", "samples", "p50", "p95", "p99", "max", "lag at end", "load"],
        [
            [
                str(r["round"]),
                f"{r['rate_per_s']:,.0f}",
                f"{r['samples']:,}",
                f"{r['p50_ms']:.0f} ms",
                f"{r['p95_ms']:.0f} ms",
                f"{r['p99_ms']:.0f} ms",
                f"{r['max_ms']:.0f} ms",
                str(r["lag_at_end"]),
                f"{r['load_before']:.1f} / {r['load_after']:.1f}",
            ]
            for r in runs
        ],
    )
    path = write_results(
        f"stream_freshness_{args.online}",
        {"goal": "p99 <= 500 ms at 2,000 events/s", "settings": vars(args), "runs": runs},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
