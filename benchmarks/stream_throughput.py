"""Stream throughput: one consumer processes the whole year's departure events.

Goal (issue 12): one consumer processes the whole year's 336,776 events, online and offline
writes included, in < 10 s (``--speed max``), with peak memory reported.

Each round publishes the year (events and quiet-time heartbeats, in event-time order) into a
fresh Redis stream (not timed), then a child process runs the `stream` consumer (a group member,
SQLite online store, Delta offline) until every message is processed, committed and
acknowledged. Timed: the consumer's run, from its first fetch to its last acknowledgement; the
child also reports its CPU seconds (user + system, all threads): on a shared machine the wall
time depends on what else runs, the CPU time much less. The embedded source (the replay read in
process, no broker) runs in the same rounds, interleaved, for the broker's share.

    python benchmarks/stream_throughput.py                 # 3 rounds, Redis at 127.0.0.1:6379
    python benchmarks/stream_throughput.py --rounds 1 --no-redis
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    fmt_mib,
    fmt_s,
    print_table,
    report,
    run_child,
    use_repo_packages,
    write_results,
)

use_repo_packages()

SCRIPT = Path(__file__).resolve()
YEAR = (date(2013, 1, 1), date(2013, 12, 31))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(source: str, data_root: str, stream_key: str, redis_url: str, messages: int) -> None:
    from feature_pipeline.stream.processor import StreamProcessor
    from feature_pipeline.stream.redis_streams import RedisStreamSource
    from feature_pipeline.stream.run import Replay
    from feature_pipeline.stream.settings import StreamSettings
    from feature_pipeline.stream.source import EventSource, ReplaySource
    from shared.feature_store import open_feature_store

    settings = StreamSettings(data_root=Path(data_root))
    prepared = time.perf_counter()
    events: EventSource
    if source == "embedded":
        events = ReplaySource(Replay(*YEAR, speed=None).pacer(settings))
    else:
        events = RedisStreamSource(redis_url, stream_key, "bench", "consumer-1")
    prepare_s = time.perf_counter() - prepared
    store = open_feature_store(settings)
    processor = StreamProcessor(
        store,
        events,
        consumer="consumer-1",
        batch=settings.stream_batch,
        wait_s=settings.stream_wait_s,
        commit_interval_s=settings.stream_commit_interval_s,
        commit_events=settings.stream_commit_events,
    )
    cpu_before = _cpu_s()
    summary = processor.run(max_messages=messages)
    cpu = _cpu_s() - cpu_before
    store.close()
    events.close()
    assert summary.error is None, summary.error
    report(
        source=source,
        seconds=summary.seconds,
        cpu_s=cpu,
        prepare_s=prepare_s,
        messages=summary.messages,
        events=summary.events,
        commits=summary.commits,
        commit_seconds=summary.commit_seconds,
        events_per_s=summary.events / summary.seconds,
    )


def publish_year(redis_url: str, stream_key: str) -> tuple[int, float]:
    from feature_pipeline.stream.redis_streams import RedisStreamPublisher
    from feature_pipeline.stream.run import Replay
    from feature_pipeline.stream.settings import StreamSettings

    pacer = Replay(*YEAR, speed=None).pacer(StreamSettings())
    publisher = RedisStreamPublisher(redis_url, stream_key, maxlen=None)
    began = time.perf_counter()
    total = 0
    while not pacer.done:
        batch = pacer.due(10_000)
        publisher.publish([m.payload for m in batch])
        total += len(batch)
    publisher.close()
    return total, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-redis", action="store_true", help="only the embedded source")
    parser.add_argument("--child", nargs=5, metavar=("SOURCE", "ROOT", "KEY", "URL", "N"))
    args = parser.parse_args()
    if args.child:
        source, root, key, url, n = args.child
        child(source, root, key, url, int(n))
        return
    import redis

    runs: list[dict[str, Any]] = []
    sources = ["embedded"] if args.no_redis else ["redis", "embedded"]
    client = None if args.no_redis else redis.Redis.from_url(args.redis_url)
    for round_no in range(1, args.rounds + 1):
        for source in sources:
            load_before = os.getloadavg()[0]
            key = f"bench:departures:{uuid.uuid4().hex}"
            published, publish_s = (0, 0.0)
            if source == "redis":
                published, publish_s = publish_year(args.redis_url, key)
            with tempfile.TemporaryDirectory(prefix="stream-bench-") as root:
                try:
                    run = run_child(
                        SCRIPT,
                        [source, root, key, args.redis_url, str(published or 10**9)],
                        timeout_s=900,
                        rss_cap_mib=8192,
                    )
                finally:
                    if client is not None:
                        client.delete(key)
            run |= {
                "round": round_no,
                "published": published,
                "publish_s": publish_s,
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
            }
            runs.append(run)
            print(
                f"round {round_no} {source}: {run['events']:,} events in {fmt_s(run['seconds'])} "
                f"(cpu {fmt_s(run['cpu_s'])}), peak {fmt_mib(run['sampled_peak_rss_mib'])}, "
                f"load {load_before:.1f}",
                flush=True,
            )
    rows = [
        [
            f"{r['source']} #{r['round']}",
            f"{r['events']:,}",
            f"{r['messages']:,}",
            fmt_s(r["seconds"]),
            fmt_s(r["cpu_s"]),
            f"{r['events_per_s']:,.0f}",
            str(r["commits"]),
            fmt_mib(r["sampled_peak_rss_mib"]),
            f"{r['load_before']:.1f} / {r['load_after']:.1f}",
        ]
        for r in runs
    ]
    print_table(
        "one consumer, the whole year (goal: < 10 s)",
        ["run", "events", "messages", "wall", "cpu", "events/s", "commits", "peak RSS", "load"],
        rows,
    )
    path = write_results(
        "stream_throughput",
        {"goal": "336,776 events, online and offline writes included, < 10 s", "runs": runs},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
