"""What the log writer (``python -m inference_pipeline log-writer``) spends per prediction record,
with Python's automatic garbage collection (the library default) and with one collection per
commit (`LogWriter.run(collect_per_commit=True)`, what the ``log-writer`` process does).

On a host shared with the online service, the writer's CPU is taken from the serving
processes: with the writer stopped (SIGSTOP) during one-connection wrk runs, the service's p99
was about 1 ms lower (-0.3 to +1.6 ms over 15 pairs of runs, benchmarks/README.md). Each run is
its own process: it fills a spool with ``--records`` one-flight records (shaped like the served
model's, as `prediction_log_append.py` builds them), then drains it into a fresh Delta
``predictions`` table in commits of ``--commit-rows`` rows (5,500: ten seconds of one-connection
traffic), and reports the drain's CPU per record. The two modes alternate, ``--rounds`` times.

    python benchmarks/prediction_log_writer.py [--rounds 3] [--records 22000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _harness import print_table, use_repo_packages, write_results

use_repo_packages()

NAME = "prediction_log_writer"
MODES = {"automatic gc (library default)": False, "one collection per commit": True}


def child(mode: str, records: int, commit_rows: int) -> dict[str, Any]:
    from prediction_log_append import _batch

    from inference_pipeline.log_writer import LogWriter
    from inference_pipeline.prediction_sink.configured import open_source
    from inference_pipeline.prediction_sink.records import encode_batch
    from inference_pipeline.prediction_sink.spool import SpoolSink
    from inference_pipeline.settings import InferenceSettings
    from shared.feature_store import open_feature_store

    with tempfile.TemporaryDirectory() as folder:
        settings = InferenceSettings(data_root=Path(folder), prediction_log_commit_rows=commit_rows)
        sink = SpoolSink(
            settings.prediction_spool_dir, segment_bytes=4 << 20, segment_s=3600, fsync=False
        )
        for n in range(records):
            sink.append(encode_batch(_batch(1), f"bench-{n}"))
        sink.close()
        store = open_feature_store(settings.store_settings())
        source = open_source(settings)
        try:
            cpu = time.process_time()
            began = time.perf_counter()
            summary = LogWriter(store, source, settings).run(
                threading.Event(), drain=True, collect_per_commit=MODES[mode]
            )
            wall = time.perf_counter() - began
            cpu = time.process_time() - cpu
        finally:
            source.close()
            store.close()
    if summary.error or summary.rows != records:
        raise SystemExit(f"writer run failed: {summary.as_dict()}")
    return {
        "mode": mode,
        "records": records,
        "commits": summary.commits,
        "cpu_us_per_record": 1e6 * cpu / records,
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=22_000)
    parser.add_argument("--commit-rows", type=int, default=5_500)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.records, args.commit_rows)))
        return
    load_before = list(os.getloadavg())
    runs = []
    for round_ in range(args.rounds):
        order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
        for mode in order:
            command = [sys.executable, __file__, "--child", mode]
            command += ["--records", str(args.records), "--commit-rows", str(args.commit_rows)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1]) | {"round": round_}
            runs.append(run)
            print(
                f"round {round_} {mode}: {run['cpu_us_per_record']:.1f} CPU us/record, "
                f"{run['commits']} commits, peak RSS {run['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    rows = []
    for mode in MODES:
        cpu = [r["cpu_us_per_record"] for r in runs if r["mode"] == mode]
        rss = [r["peak_rss_mib"] for r in runs if r["mode"] == mode]
        spread = f"{min(cpu):.1f}-{max(cpu):.1f}"
        rows.append([mode, f"{statistics.median(cpu):.1f}", spread, f"{max(rss):.0f}"])
    load = [load_before, list(os.getloadavg())]
    print_table(
        f"log writer, {args.records:,} one-flight records, commits of {args.commit_rows:,} rows",
        ["mode", "CPU us/record (median)", "range", "peak RSS MiB"],
        rows,
    )
    print(f"load average before / after: {load[0]} / {load[1]}")
    path = write_results(
        NAME,
        {
            "records": args.records,
            "commit_rows": args.commit_rows,
            "rounds": args.rounds,
            "runs": runs,
            "load_average": load,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
