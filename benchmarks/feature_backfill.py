"""Benchmark: the full-year feature backfill, ours (Polars + pandera + Delta MERGE) beside a
straightforward pandas implementation of the same work.

    python benchmarks/feature_backfill.py [--repeat 3] [--start 2013-01-01 --end 2013-12-31]

Each repetition of each implementation runs in its own process on a fresh data root; the
implementations alternate. Reported: wall time of the backfill call (imports excluded; the
process's whole time is in the JSON), flights rows read per second, peak RSS. Before the table,
the pandas route_stats and carrier_stats are checked against ours (rows, keys and values), so the
comparison is between two implementations of the same thing.

What the pandas side does (the same rules as `feature_pipeline`): read the bundled CSVs as text;
drop exact duplicate rows; parse types (a present value that does not parse is an error); derive
flight_id, sched_dep_utc (America/New_York -> UTC), is_cancelled and the label; quarantine rows
with nulls in keys, origin outside EWR/JFK/LGA, unknown destinations (airports.csv +
extra_airports.csv), values out of the ranges in shared/feature_definitions.py or a repeated
primary key; compute route and carrier rolling 7/28-day stats over days strictly before each day
(dense calendar, groupby + shift + rolling); write flights, airport_weather, planes, route_stats,
carrier_stats and quarantine with `deltalake.write_deltalake` (pandas input).

What ours does beyond that, and the pandas side does not: every table write is a Delta MERGE
(an idempotent upsert, change data feed on) instead of a plain append, and the online store
(SQLite) is materialized at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__:
    from benchmarks import _harness as h
else:
    import _harness as h

if TYPE_CHECKING:
    import pandas as pd

NAME = "feature_backfill"
SCRIPT = Path(__file__).resolve()
GOAL_S = 10.0


# -- ours ------------------------------------------------------------------------------------


def run_ours(data_root: Path, start: date, end: date) -> dict[str, Any]:
    h.use_repo_packages()
    from feature_pipeline.pipeline import run_backfill
    from feature_pipeline.settings import FeaturePipelineSettings

    settings = FeaturePipelineSettings(data_root=data_root)
    baseline = h.peak_rss_mib()
    began = time.perf_counter()
    summary = run_backfill(settings, start, end)
    seconds = time.perf_counter() - began
    if summary.error:
        raise RuntimeError(f"run_backfill failed: {summary.error}")
    return {
        "seconds": seconds,
        "flights_rows_read": summary.sources["flights"].rows_read,
        "rows_written": {g: c.rows_written for g, c in summary.groups.items()},
        "quarantined": {s: c.quarantined for s, c in summary.sources.items()},
        "rss_before_mib": baseline,
    }


# -- pandas ----------------------------------------------------------------------------------

NYC_TZ = "America/New_York"
NYC_ORIGINS = ("EWR", "JFK", "LGA")
DELAY_THRESHOLD_MIN = 15
WINDOWS = (7, 28)
LOOKBACK = max(WINDOWS)
COUNTS = ("flights", "cancelled", "delayed", "departed", "delay_sum", "delay_n")
FLIGHT_COLUMNS = [
    "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay",
    "carrier", "flight", "tailnum", "origin", "dest", "distance",
]  # fmt: skip
WEATHER_COLUMNS = [
    "origin", "time_hour", "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust",
    "precip", "pressure", "visib",
]  # fmt: skip
WEATHER_RANGES = {
    "temp": (-60, 130), "dewp": (-80, 100), "humid": (0, 100), "wind_dir": (0, 360),
    "wind_speed": (0, 150), "wind_gust": (0, 200), "precip": (0, 10), "pressure": (900, 1100),
    "visib": (0, 100),
}  # fmt: skip
PLANE_COLUMNS = ["tailnum", "year", "type", "manufacturer", "engines", "seats", "engine"]
INT_BOUNDS = {
    "Int8": (-(2**7), 2**7 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "Int32": (-(2**31), 2**31 - 1),
}


class Rules:
    """Row masks of broken rules, turned into the quarantine's '; '-joined reasons."""

    def __init__(self, index: pd.Index) -> None:
        self.index = index
        self.masks: list[tuple[str, Any]] = []

    def add(self, rule: str, mask: pd.Series) -> None:
        self.masks.append((rule, mask.fillna(False).to_numpy(dtype=bool)))

    def bad(self) -> Any:
        import numpy as np

        out = np.zeros(len(self.index), dtype=bool)
        for _, mask in self.masks:
            out |= mask
        return out

    def reasons(self, bad: Any) -> list[str]:
        import numpy as np

        rows = np.flatnonzero(bad)
        return ["; ".join(rule for rule, mask in self.masks if mask[i]) for i in rows]


def read_raw_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.read_csv(
        path, dtype=str, usecols=columns, keep_default_na=False, na_values=["NA", ""]
    )[columns]
    for c in columns:
        frame[c] = frame[c].str.strip()
    return frame


def parse_int(raw: pd.Series, dtype: str, rules: Rules, name: str) -> pd.Series:
    import pandas as pd

    value = pd.to_numeric(raw, errors="coerce")
    low, high = INT_BOUNDS[dtype]
    ok = value.notna() & (value == value.round()) & value.between(low, high)
    typed = value.where(ok).astype(dtype)
    rules.add(f"{name}: unparseable", raw.notna() & typed.isna())
    return typed


def parse_float(raw: pd.Series, rules: Rules, name: str) -> pd.Series:
    import pandas as pd

    typed = pd.to_numeric(raw, errors="coerce").astype("float32")
    rules.add(f"{name}: unparseable", raw.notna() & typed.isna())
    return typed


def out_of_range(values: pd.Series, low: float, high: float) -> pd.Series:
    return values.notna() & ~values.between(low, high)


def not_null(rules: Rules, frame: pd.DataFrame, columns: list[str]) -> None:
    for c in columns:
        rules.add(f"{c}: not_nullable", frame[c].isna())


def quarantine(source: str, raw: pd.DataFrame, rules: Rules, bad: Any) -> pd.DataFrame:
    import pandas as pd

    rows = raw[bad]
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    raw_json = [json.dumps(r, separators=(",", ":")) for r in records]
    return pd.DataFrame(
        {
            "source": source,
            "row_hash": [hashlib.sha256(f"{source}\x1f{r}".encode()).hexdigest() for r in raw_json],
            "raw": raw_json,
            "rules": rules.reasons(bad),
        },
        columns=["source", "row_hash", "raw", "rules"],
    )


def enforce_bad_share(source: str, bad: int, total: int, max_share: float = 0.05) -> None:
    if total and bad / total > max_share:
        raise RuntimeError(f"{source}: {bad} of {total} rows broke the data contract")


def pandas_flights(
    raw: pd.DataFrame, airports: set[str], start: date, end: date
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    import numpy as np
    import pandas as pd

    day = pd.to_datetime(
        raw["year"] + "-" + raw["month"].str.zfill(2) + "-" + raw["day"].str.zfill(2),
        format="%Y-%m-%d",
        errors="coerce",
    )
    inside = day.between(pd.Timestamp(start), pd.Timestamp(end)) | day.isna()
    raw, day = raw[inside], day[inside]
    read = len(raw)
    unique = ~raw.duplicated(keep="first")
    raw, day = raw[unique].reset_index(drop=True), day[unique].reset_index(drop=True)

    rules = Rules(raw.index)
    f = pd.DataFrame(index=raw.index)
    f["flight_date"] = day
    rules.add("day: unparseable", raw["day"].notna() & day.isna())
    hhmm = parse_int(raw["sched_dep_time"], "Int16", Rules(raw.index), "sched_dep_time")
    hhmm = hhmm.where(hhmm % 100 < 60)
    rules.add("sched_dep_time: unparseable", raw["sched_dep_time"].notna() & hhmm.isna())
    f["sched_dep_time"] = hhmm
    f["flight"] = parse_int(raw["flight"], "Int32", rules, "flight")
    f["distance"] = parse_int(raw["distance"], "Int16", rules, "distance")
    f["dep_delay"] = parse_float(raw["dep_delay"], rules, "dep_delay")
    parse_int(raw["dep_time"], "Int16", rules, "dep_time")
    for c in ("carrier", "tailnum", "origin", "dest"):
        f[c] = raw[c].str.upper()

    minutes = (hhmm // 100 * 60 + hhmm % 100).astype("float64")
    local = day + pd.to_timedelta(minutes, unit="min")
    f["sched_dep_utc"] = local.dt.tz_localize(
        NYC_TZ, ambiguous=np.ones(len(local), dtype=bool), nonexistent="NaT"
    ).dt.tz_convert("UTC")
    f["flight_id"] = (
        day.dt.strftime("%Y%m%d").astype("string")
        + "-"
        + f["carrier"].astype("string")
        + f["flight"].astype("string")
        + "-"
        + f["origin"].astype("string")
        + "-"
        + hhmm.astype("string").str.zfill(4)
    )
    f["is_cancelled"] = raw["dep_time"].isna()
    delayed = (f["dep_delay"] > DELAY_THRESHOLD_MIN).astype("Int8")
    f["is_delayed"] = delayed.mask(f["is_cancelled"] | f["dep_delay"].isna())

    rules.add("duplicate key: flight_id", f["flight_id"].duplicated(keep="first"))
    not_null(
        rules,
        f,
        [
            "flight_id",
            "sched_dep_utc",
            "flight_date",
            "sched_dep_time",
            "carrier",
            "flight",
            "origin",
            "dest",
            "distance",
            "is_cancelled",
        ],
    )
    rules.add("sched_dep_time: in_range(0, 2359)", out_of_range(f["sched_dep_time"], 0, 2359))
    length = f["carrier"].str.len()
    rules.add("carrier: str_length(2, 3)", length.notna() & ~length.between(2, 3))
    rules.add("flight: in_range(1, 9999)", out_of_range(f["flight"], 1, 9999))
    rules.add("origin: isin(NYC)", f["origin"].notna() & ~f["origin"].isin(NYC_ORIGINS))
    rules.add("dest: str_length(3, 3)", f["dest"].notna() & (f["dest"].str.len() != 3))
    rules.add("dest: known_airport", f["dest"].notna() & ~f["dest"].isin(airports))
    rules.add("distance: in_range(1, 6000)", out_of_range(f["distance"], 1, 6000))
    rules.add("dep_delay: in_range(-120, 1800)", out_of_range(f["dep_delay"], -120, 1800))

    bad = rules.bad()
    valid = f[~bad].copy()
    valid["flight_date"] = valid["flight_date"].dt.date
    columns = [
        "flight_id", "sched_dep_utc", "flight_date", "sched_dep_time", "carrier", "flight",
        "tailnum", "origin", "dest", "distance", "dep_delay", "is_cancelled", "is_delayed",
    ]  # fmt: skip
    valid = valid[columns].astype({"flight_id": object})
    return valid.reset_index(drop=True), quarantine("flights", raw, rules, bad), read


def utc_midnight(day: date) -> pd.Timestamp:
    import pandas as pd

    return pd.Timestamp(day).tz_localize(NYC_TZ).tz_convert("UTC")


def pandas_weather(
    raw: pd.DataFrame, start: date, end: date
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    import pandas as pd

    at = pd.to_datetime(raw["time_hour"], format="%Y-%m-%dT%H:%M:%SZ", utc=True, errors="coerce")
    lo, hi = utc_midnight(start), utc_midnight(end + timedelta(days=1))
    inside = ((at >= lo) & (at < hi)) | at.isna()
    raw, at = raw[inside], at[inside]
    read = len(raw)
    unique = ~raw.duplicated(keep="first")
    raw, at = raw[unique].reset_index(drop=True), at[unique].reset_index(drop=True)
    rules = Rules(raw.index)
    w = pd.DataFrame({"origin": raw["origin"].str.upper(), "observed_at": at})
    rules.add("time_hour: unparseable", raw["time_hour"].notna() & at.isna())
    for name, (low, high) in WEATHER_RANGES.items():
        w[name] = parse_float(raw[name], rules, name)
        rules.add(f"{name}: in_range({low}, {high})", out_of_range(w[name], low, high))
    rules.add("duplicate key: origin+observed_at", w.duplicated(["origin", "observed_at"]))
    not_null(rules, w, ["origin", "observed_at"])
    rules.add("origin: isin(NYC)", w["origin"].notna() & ~w["origin"].isin(NYC_ORIGINS))
    bad = rules.bad()
    return w[~bad].reset_index(drop=True), quarantine("weather", raw, rules, bad), read


def pandas_planes(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    import pandas as pd

    read = len(raw)
    raw = raw[~raw.duplicated(keep="first")].reset_index(drop=True)
    rules = Rules(raw.index)
    p = pd.DataFrame({"tailnum": raw["tailnum"].str.upper()})
    p["valid_from"] = pd.Timestamp("1970-01-01", tz="UTC")
    p["year_built"] = parse_int(raw["year"], "Int16", rules, "year")
    p["seats"] = parse_int(raw["seats"], "Int16", rules, "seats")
    p["engines"] = parse_int(raw["engines"], "Int8", rules, "engines")
    p["plane_type"] = raw["type"]
    p["manufacturer"] = raw["manufacturer"]
    p["engine"] = raw["engine"]
    rules.add("duplicate key: tailnum", p["tailnum"].duplicated(keep="first"))
    not_null(rules, p, ["tailnum"])
    rules.add("year_built: in_range(1900, 2014)", out_of_range(p["year_built"], 1900, 2014))
    rules.add("seats: in_range(1, 1000)", out_of_range(p["seats"], 1, 1000))
    rules.add("engines: in_range(1, 8)", out_of_range(p["engines"], 1, 8))
    bad = rules.bad()
    return p[~bad].reset_index(drop=True), quarantine("planes", raw, rules, bad), read


def pandas_rolling_stats(
    flights: pd.DataFrame, keys: list[str], first: date, last: date
) -> pd.DataFrame:
    """Per key and day in [first, last]: sums over the 7/28 days strictly before the day."""
    import numpy as np
    import pandas as pd

    daily = (
        flights.assign(dep_delay=flights["dep_delay"].astype("float64"))
        .groupby([*keys, "flight_date"], as_index=False)
        .agg(
            flights=("flight_id", "size"),
            cancelled=("is_cancelled", "sum"),
            delayed=("is_delayed", "sum"),
            departed=("is_delayed", "count"),
            delay_sum=("dep_delay", "sum"),
            delay_n=("dep_delay", "count"),
        )
    )
    days = pd.DataFrame(
        {"flight_date": pd.date_range(first - timedelta(days=LOOKBACK), last, freq="D").date}
    )
    grid = daily[keys].drop_duplicates().merge(days, how="cross")
    dense = grid.merge(daily, on=[*keys, "flight_date"], how="left")
    dense[list(COUNTS)] = dense[list(COUNTS)].fillna(0).astype("float64")
    dense = dense.sort_values([*keys, "flight_date"], ignore_index=True)

    shifted = dense.groupby(keys, sort=False)[list(COUNTS)].shift(1)
    shifted[keys] = dense[keys]
    out = dense[[*keys, "flight_date"]].copy()
    for n in WINDOWS:
        sums = (
            shifted.groupby(keys, sort=False)[list(COUNTS)]
            .rolling(n, min_periods=1)
            .sum()
            .reset_index(level=list(range(len(keys))), drop=True)
            .sort_index()
        )

        def ratio(num: str, den: str, sums: pd.DataFrame = sums) -> pd.Series:
            return (sums[num] / sums[den]).where(sums[den] > 0).astype("float32")

        out[f"flights_{n}d"] = sums["flights"].fillna(0).astype("int32")
        out[f"delay_rate_{n}d"] = ratio("delayed", "departed")
        out[f"mean_dep_delay_{n}d"] = ratio("delay_sum", "delay_n")
        out[f"cancel_rate_{n}d"] = ratio("cancelled", "flights")
    out = out[(out["flight_date"] >= first) & (out["flight_date"] <= last)]
    out = out[out[f"flights_{LOOKBACK}d"] > 0].reset_index(drop=True)
    valid_from = pd.to_datetime(out["flight_date"]).dt.tz_localize(NYC_TZ).dt.tz_convert("UTC")
    stats = [c for c in out.columns if c not in (*keys, "flight_date")]
    result = out[keys].copy()
    result["valid_from"] = valid_from
    result["day"] = out["flight_date"]
    result[stats] = out[stats]
    assert not np.any(result.duplicated([*keys, "valid_from"]))
    return result


def run_pandas(data_root: Path, start: date, end: date) -> dict[str, Any]:
    import pandas as pd
    from deltalake import write_deltalake

    h.use_repo_packages()
    from feature_pipeline.extract import bundled_data_dir

    data = bundled_data_dir()
    extra = h.REPO_ROOT / "feature_pipeline" / "reference" / "extra_airports.csv"
    baseline = h.peak_rss_mib()
    began = time.perf_counter()

    airports = set(pd.read_csv(data / "airports.csv", usecols=["faa"], dtype=str)["faa"].dropna())
    airports |= set(pd.read_csv(extra, usecols=["faa"], dtype=str)["faa"].dropna())
    raw_flights = read_raw_csv(data / "flights.csv.zip", FLIGHT_COLUMNS)
    flights, q_flights, flights_read = pandas_flights(raw_flights, airports, start, end)
    weather, q_weather, weather_read = pandas_weather(
        read_raw_csv(data / "weather.csv", WEATHER_COLUMNS), start, end
    )
    planes, q_planes, planes_read = pandas_planes(read_raw_csv(data / "planes.csv", PLANE_COLUMNS))
    for source, q, n in (
        ("flights", q_flights, flights_read),
        ("weather", q_weather, weather_read),
        ("planes", q_planes, planes_read),
    ):
        enforce_bad_share(source, len(q), n)
    last = end + timedelta(days=1)  # tomorrow's stats describe today
    tables = {
        "flights_v1": flights,
        "airport_weather_v1": weather,
        "planes_v1": planes,
        "route_stats_v1": pandas_rolling_stats(flights, ["origin", "dest"], start, last),
        "carrier_stats_v1": pandas_rolling_stats(flights, ["carrier"], start, last),
    }
    quarantined = pd.concat([q_flights, q_weather, q_planes], ignore_index=True)
    quarantined["key_time"] = pd.Timestamp("1970-01-01", tz="UTC")
    quarantined["first_run_id"] = "pandas-benchmark"
    quarantined["quarantined_at"] = pd.Timestamp(datetime.now(UTC))
    tables["quarantine_v1"] = quarantined
    offline = data_root / "offline"
    for name, frame in tables.items():
        write_deltalake(str(offline / name), frame, mode="append")
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "flights_rows_read": flights_read,
        "rows_written": {n: len(f) for n, f in tables.items()},
        "quarantined": {
            "flights": len(q_flights),
            "weather": len(q_weather),
            "planes": len(q_planes),
        },
        "rss_before_mib": baseline,
    }


# -- equivalence -----------------------------------------------------------------------------


def compare_stats(ours_root: Path, pandas_root: Path) -> dict[str, Any]:
    """Rows, keys and every value of route_stats/carrier_stats, ours vs pandas."""
    import polars as pl

    checks: dict[str, Any] = {}
    for table, keys in (("route_stats_v1", ["origin", "dest"]), ("carrier_stats_v1", ["carrier"])):
        ours = pl.read_delta(str(ours_root / "offline" / table))
        theirs = pl.read_delta(str(pandas_root / "offline" / table))
        on = [*keys, "day"]
        joined = ours.join(theirs, on=on, how="full", suffix="__pd", coalesce=True)
        missing = joined.filter(pl.col("flights_7d").is_null() | pl.col("flights_7d__pd").is_null())
        worst = 0.0
        mismatched = 0
        for c in ours.columns:
            if c in on or c == "valid_from":
                continue
            a, b = pl.col(c).cast(pl.Float64), pl.col(c + "__pd").cast(pl.Float64)
            diff = joined.select(
                ((a - b).abs() / b.abs().clip(lower_bound=1.0)).max().alias("d"),
                (a.is_null() != b.is_null()).sum().alias("n"),
            )
            worst = max(worst, diff["d"].item() or 0.0)
            mismatched += diff["n"].item()
        same_time = joined.select(
            (pl.col("valid_from") == pl.col("valid_from__pd").cast(ours.schema["valid_from"])).all()
        ).item()
        sample = ours.sort(on).gather_every(max(1, ours.height // 5)).head(3)
        samples = []
        for row in sample.iter_rows(named=True):
            match = theirs.filter(*[pl.col(k) == row[k] for k in on])
            samples.append(
                {
                    **{k: str(row[k]) for k in on},
                    "delay_rate_7d": [row["delay_rate_7d"], match["delay_rate_7d"].item()],
                    "mean_dep_delay_28d": [
                        row["mean_dep_delay_28d"],
                        match["mean_dep_delay_28d"].item(),
                    ],
                }
            )
        checks[table] = {
            "rows_ours": ours.height,
            "rows_pandas": theirs.height,
            "keys_only_in_one": missing.height,
            "null_mismatches": mismatched,
            "max_relative_difference": worst,
            "valid_from_equal": bool(same_time),
            "samples": samples,
            "equal": ours.height == theirs.height
            and missing.height == 0
            and mismatched == 0
            and worst < 1e-5
            and bool(same_time),
        }
    return checks


# -- CLI -------------------------------------------------------------------------------------


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["ours", "pandas"])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--end", type=date.fromisoformat, required=True)
    args = parser.parse_args(argv)
    run = run_ours if args.impl == "ours" else run_pandas
    h.report(impl=args.impl, **run(args.data_root, args.start, args.end))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2013, 1, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2013, 12, 31))
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    impls = ("ours", "pandas")
    runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    workdir = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    kept: dict[str, Path] = {}
    try:
        for rep in range(args.repeat):
            for impl in impls:
                root = workdir / f"{impl}-{rep}"
                result = h.run_child(
                    SCRIPT,
                    [
                        impl,
                        "--data-root",
                        str(root),
                        "--start",
                        str(args.start),
                        "--end",
                        str(args.end),
                    ],
                    timeout_s=args.timeout,
                )
                runs[impl].append(result)
                print(
                    f"  run {rep + 1}/{args.repeat} {impl}: {h.fmt_s(result['seconds'])}, "
                    f"peak {h.fmt_mib(result['peak_rss_mib'])}",
                    flush=True,
                )
                if impl in kept:
                    shutil.rmtree(root, ignore_errors=True)
                else:
                    kept[impl] = root
        checks = compare_stats(kept["ours"], kept["pandas"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {}
    for impl in impls:
        seconds = h.median(runs[impl], "seconds")
        rows = runs[impl][0]["flights_rows_read"]
        summary[impl] = {
            "median_seconds": seconds,
            "median_process_seconds": h.median(runs[impl], "process_s"),
            "rows_per_second": rows / seconds,
            "median_peak_rss_mib": h.median(runs[impl], "peak_rss_mib"),
            "median_rss_before_mib": h.median(runs[impl], "rss_before_mib"),
            "flights_rows_read": rows,
            "rows_written": runs[impl][0]["rows_written"],
        }
    ratio = summary["pandas"]["median_seconds"] / summary["ours"]["median_seconds"]
    for table, check in checks.items():
        print(
            f"check {table}: ours {check['rows_ours']:,} rows, pandas {check['rows_pandas']:,}; "
            f"max rel diff {check['max_relative_difference']:.2e}; "
            f"equal={check['equal']}; sample {check['samples'][0]}"
        )
    h.print_table(
        f"Full-year backfill {args.start}..{args.end} (median of {args.repeat}, "
        f"goal < {GOAL_S:.0f} s)",
        [
            "implementation",
            "wall",
            "process (incl. imports)",
            "flights rows/s",
            "peak RSS",
            "RSS before call",
            "vs ours",
        ],
        [
            [
                impl,
                h.fmt_s(s["median_seconds"]),
                h.fmt_s(s["median_process_seconds"]),
                h.fmt_rate(s["rows_per_second"]),
                h.fmt_mib(s["median_peak_rss_mib"]),
                h.fmt_mib(s["median_rss_before_mib"]),
                f"{s['median_seconds'] / summary['ours']['median_seconds']:.2f}x",
            ]
            for impl, s in summary.items()
        ],
    )
    verdict = "met" if summary["ours"]["median_seconds"] < GOAL_S else "NOT met"
    print(f"pandas / ours wall-time ratio: {ratio:.2f}; goal (< {GOAL_S:.0f} s): {verdict}")
    path = h.write_results(
        NAME,
        {
            "window": [str(args.start), str(args.end)],
            "repeat": args.repeat,
            "goal_seconds": GOAL_S,
            "goal_met": summary["ours"]["median_seconds"] < GOAL_S,
            "pandas_over_ours": ratio,
            "summary": summary,
            "equivalence": checks,
            "runs": runs,
        },
    )
    print(f"wrote {path.relative_to(h.REPO_ROOT)}")
    if not all(c["equal"] for c in checks.values()):
        sys.exit("pandas and ours disagree on the rolling statistics: the comparison is not fair")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
