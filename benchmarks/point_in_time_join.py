"""Benchmark: point-in-time join of all 336,776 flights with route_stats, carrier_stats,
airport_weather and planes — ours (`shared.feature_store.point_in_time_join`: keys encoded once,
event times ranked, matches read from a key/rank table) against pandas `merge_asof`, on the same
in-memory inputs; plus the store-level `store.point_in_time_join(...)` including the Delta reads.

    python benchmarks/point_in_time_join.py [--repeat 3]

The feature store is built once (full-year `run_backfill` into a temporary data root). The joins
are those of the training feature view `shared.feature_view.FLIGHT_DELAY_VIEW` (route and carrier
stats with a 28-day tolerance, weather with 3 hours, planes), on a spine of flight_id,
sched_dep_utc, origin, dest, carrier, tailnum in the order the flights table is read. Before any
timing, one process runs both implementations and asserts that every feature value is the same
(floats to 1e-6 relative, nulls in the same places, rows in the spine's order).

Each timed run is its own process: it reads its inputs (untimed; pandas gets them converted
from the same Polars frames, also untimed), runs the join once to warm up and once timed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__:
    from benchmarks import _harness as h
else:
    import _harness as h

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

NAME = "point_in_time_join"
SCRIPT = Path(__file__).resolve()
GOAL_S = 1.0
GOAL_SPEEDUP = 10.0
SPINE_COLUMNS = ["flight_id", "sched_dep_utc", "origin", "dest", "carrier", "tailnum"]
SPINE_TIME = "sched_dep_utc"


def build_store(data_root: Path) -> dict[str, Any]:
    from datetime import date

    from feature_pipeline.pipeline import run_backfill
    from feature_pipeline.settings import FeaturePipelineSettings

    summary = run_backfill(
        FeaturePipelineSettings(data_root=data_root), date(2013, 1, 1), date(2013, 12, 31)
    )
    if summary.error:
        raise RuntimeError(summary.error)
    return {"seconds": summary.seconds}


def load_inputs(data_root: Path) -> tuple[pl.DataFrame, list[tuple[Any, pl.DataFrame]]]:
    """The spine and each requested group's full table, read from the store into memory."""
    from feature_pipeline.settings import FeaturePipelineSettings
    from shared.feature_definitions import FLIGHTS
    from shared.feature_store import open_feature_store
    from shared.feature_view import FLIGHT_DELAY_VIEW

    store = open_feature_store(FeaturePipelineSettings(data_root=data_root))
    try:
        spine = store.read(FLIGHTS, columns=SPINE_COLUMNS)
        groups = [(request, store.read(request.group)) for request in FLIGHT_DELAY_VIEW.joins]
    finally:
        store.close()
    return spine, groups


def join_ours(spine: pl.DataFrame, groups: list[tuple[Any, pl.DataFrame]]) -> pl.DataFrame:
    from shared.feature_store import point_in_time_join

    return point_in_time_join(spine, SPINE_TIME, groups)


def to_pandas_inputs(
    spine: pl.DataFrame, groups: list[tuple[Any, pl.DataFrame]]
) -> tuple[pd.DataFrame, list[tuple[Any, pd.DataFrame]]]:
    return spine.to_pandas(), [(request, frame.to_pandas()) for request, frame in groups]


def join_pandas(spine: pd.DataFrame, groups: list[tuple[Any, pd.DataFrame]]) -> pd.DataFrame:
    """The same join with `pandas.merge_asof`: sort both sides on time as it requires, join
    backward per key (with the request's tolerance), then restore the spine's order."""
    import numpy as np
    import pandas as pd

    row = "__spine_row"
    left = spine.assign(**{row: np.arange(len(spine))})
    timed = left[left[SPINE_TIME].notna()].sort_values(SPINE_TIME, kind="stable")
    untimed = left[left[SPINE_TIME].isna()]
    for request, frame in groups:
        group = request.group
        pairs = request.key_pairs()
        features = request.feature_list()
        event = f"__{group.name}_event_time"
        right = frame[[g for _, g in pairs] + [group.event_time] + features].rename(
            columns={g: s for s, g in pairs}
            | {f: request.prefix + f for f in features}
            | {group.event_time: event}
        )
        right = right.sort_values(event, kind="stable")
        right[event] = right[event].astype(timed[SPINE_TIME].dtype)
        timed = pd.merge_asof(
            timed,
            right,
            left_on=SPINE_TIME,
            right_on=event,
            by=[s for s, _ in pairs],
            direction="backward",
            tolerance=pd.Timedelta(request.tolerance) if request.tolerance is not None else None,
        ).drop(columns=event)
    joined = pd.concat([timed, untimed]) if len(untimed) else timed
    return joined.sort_values(row).drop(columns=row).reset_index(drop=True)


def assert_same(ours: pl.DataFrame, theirs: pd.DataFrame) -> dict[str, Any]:
    """Every column equal: same rows in the same order, nulls in the same places, floats equal
    to 1e-6 relative."""
    import polars as pl

    other = pl.from_pandas(theirs)
    if ours.columns != other.columns or ours.height != other.height:
        raise AssertionError(
            f"shape differs: ours {ours.shape} {ours.columns}, pandas {other.shape} {other.columns}"
        )
    worst = 0.0
    for c in ours.columns:
        a, b = ours[c], other[c]
        if a.dtype.is_numeric() or b.dtype.is_numeric():
            a, b = a.cast(pl.Float64), b.cast(pl.Float64).fill_nan(None)
            if not (a.is_null() == b.is_null()).all():
                raise AssertionError(f"{c}: nulls differ ({a.null_count()} vs {b.null_count()})")
            both = pl.DataFrame({"a": a, "b": b}).drop_nulls()
            rel = both.select(
                ((pl.col("a") - pl.col("b")).abs() / pl.col("b").abs().clip(1.0)).max()
            )
            worst = max(worst, rel.item() or 0.0)
        elif a.dtype == pl.String or b.dtype == pl.String:
            if not a.cast(pl.String).equals(b.cast(pl.String)):
                raise AssertionError(f"{c}: values differ")
        elif not a.equals(b.cast(a.dtype)):
            raise AssertionError(f"{c}: values differ")
    if worst > 1e-6:
        raise AssertionError(f"float values differ by up to {worst:.2e} (relative)")
    matched = {
        prefix: int(ours[col].is_not_null().sum())
        for prefix, col in (
            ("route_", "route_flights_7d"),
            ("carrier_", "carrier_flights_7d"),
            ("wx_", "wx_temp"),
            ("plane_", "plane_seats"),
        )
        if col in ours.columns
    }
    return {
        "rows": ours.height,
        "columns": len(ours.columns),
        "max_relative_difference": worst,
        "non_null_per_group": matched,
    }


# -- children --------------------------------------------------------------------------------


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["build", "verify", "ours", "pandas", "store"])
    parser.add_argument("--data-root", type=Path, required=True)
    args = parser.parse_args(argv)
    h.use_repo_packages()
    if args.mode == "build":
        h.report(mode="build", **build_store(args.data_root))
        return
    if args.mode == "store":
        from feature_pipeline.settings import FeaturePipelineSettings
        from shared.feature_definitions import FLIGHTS
        from shared.feature_store import open_feature_store
        from shared.feature_view import FLIGHT_DELAY_VIEW

        store = open_feature_store(FeaturePipelineSettings(data_root=args.data_root))
        spine = store.read(FLIGHTS, columns=SPINE_COLUMNS)
        baseline = h.peak_rss_mib()

        def run() -> Any:
            return store.point_in_time_join(spine, SPINE_TIME, FLIGHT_DELAY_VIEW.joins)

    else:
        spine_pl, groups_pl = load_inputs(args.data_root)
        if args.mode == "verify":
            ours = join_ours(spine_pl, groups_pl)
            theirs = join_pandas(*to_pandas_inputs(spine_pl, groups_pl))
            h.report(mode="verify", **assert_same(ours, theirs))
            return
        if args.mode == "ours":
            inputs: tuple[Any, Any] = (spine_pl, groups_pl)
            join: Any = join_ours
        else:
            inputs = to_pandas_inputs(spine_pl, groups_pl)
            del spine_pl, groups_pl
            join = join_pandas
        baseline = h.peak_rss_mib()

        def run() -> Any:
            return join(*inputs)

    run()  # warm-up: first-call costs (thread pools, lazy imports) are not the join's
    began = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - began
    h.report(mode=args.mode, seconds=seconds, rows=len(result), rss_before_mib=baseline)


# -- parent ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pit-"))
    root = ["--data-root", str(workdir / "store")]
    modes = ("ours", "pandas", "store")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        built = h.run_child(SCRIPT, ["build", *root], timeout_s=args.timeout)
        print(f"  store built in {h.fmt_s(built['seconds'])}", flush=True)
        check = h.run_child(SCRIPT, ["verify", *root], timeout_s=args.timeout)
        print(
            f"  verified: ours == pandas on {check['rows']:,} rows x {check['columns']} columns "
            f"(max rel diff {check['max_relative_difference']:.1e}); matched rows per group "
            f"{check['non_null_per_group']}",
            flush=True,
        )
        for rep in range(args.repeat):
            for mode in modes:
                result = h.run_child(SCRIPT, [mode, *root], timeout_s=args.timeout)
                runs[mode].append(result)
                print(
                    f"  run {rep + 1}/{args.repeat} {mode}: {h.fmt_s(result['seconds'])}, "
                    f"peak {h.fmt_mib(result['peak_rss_mib'])}",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    labels = {
        "ours": "ours: point_in_time_join (in memory)",
        "pandas": "pandas merge_asof (in memory)",
        "store": "ours: store.point_in_time_join (+ Delta reads)",
    }
    ours_s = h.median(runs["ours"], "seconds")
    summary = {
        mode: {
            "median_seconds": h.median(runs[mode], "seconds"),
            "rows_per_second": runs[mode][0]["rows"] / h.median(runs[mode], "seconds"),
            "median_peak_rss_mib": h.median(runs[mode], "peak_rss_mib"),
            "median_rss_before_mib": h.median(runs[mode], "rss_before_mib"),
            "rows": runs[mode][0]["rows"],
        }
        for mode in modes
    }
    speedup = summary["pandas"]["median_seconds"] / ours_s
    h.print_table(
        f"Point-in-time join, {summary['ours']['rows']:,} flights x 4 groups "
        f"(median of {args.repeat}; goals < {GOAL_S:.0f} s and >= {GOAL_SPEEDUP:.0f}x pandas)",
        ["implementation", "wall", "spine rows/s", "peak RSS", "RSS before call", "vs ours"],
        [
            [
                labels[m],
                h.fmt_s(s["median_seconds"]),
                h.fmt_rate(s["rows_per_second"]),
                h.fmt_mib(s["median_peak_rss_mib"]),
                h.fmt_mib(s["median_rss_before_mib"]),
                f"{s['median_seconds'] / ours_s:.2f}x",
            ]
            for m, s in summary.items()
        ],
    )
    print(
        f"pandas / ours: {speedup:.1f}x; goal < {GOAL_S:.0f} s: "
        f"{'met' if ours_s < GOAL_S else 'NOT met'}; goal >= {GOAL_SPEEDUP:.0f}x: "
        f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}"
    )
    path = h.write_results(
        NAME,
        {
            "repeat": args.repeat,
            "goals": {"seconds": GOAL_S, "speedup_over_pandas": GOAL_SPEEDUP},
            "goal_seconds_met": ours_s < GOAL_S,
            "goal_speedup_met": speedup >= GOAL_SPEEDUP,
            "pandas_over_ours": speedup,
            "verification": check,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"wrote {path.relative_to(h.REPO_ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
