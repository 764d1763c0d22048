"""The feature pipeline on the real 2013 data: figures, idempotence, interruption, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings
from shared.feature_definitions import (
    AIRPORT_WEATHER,
    CARRIER_STATS,
    FEATURE_GROUPS,
    FLIGHTS,
    PLANES,
    QUARANTINE,
    ROUTE_STATS,
)
from shared.feature_group import FeatureGroup
from shared.feature_store import (
    FeatureStore,
    JoinRequest,
    PitJoinMethod,
    open_feature_store,
    point_in_time_join,
)
from shared.feature_view import FLIGHT_DELAY_VIEW

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RUN_METADATA = ["first_run_id", "quarantined_at"]  # differ between runs by design
SPINE_KEYS = ["origin", "dest", "carrier", "tailnum"]
WIDE = os.environ | {"COLUMNS": "300"}  # rich tables of a CLI unwrapped, to read them here


def _table(root: Path, group: FeatureGroup) -> pl.DataFrame:
    frame = pl.read_delta(str(root / "offline" / group.table_name))
    frame = frame.drop([c for c in RUN_METADATA if c in frame.columns])
    return frame.sort([*group.primary_key, group.event_time])


def _versions(root: Path) -> dict[str, int]:
    from deltalake import DeltaTable

    return {
        g.name: DeltaTable(str(root / "offline" / g.table_name)).version()
        for g in (*FEATURE_GROUPS.values(), QUARANTINE)
    }


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feature_pipeline", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.data
def test_full_year_figures(year_store: FeatureStore) -> None:
    flights = year_store.read(FLIGHTS)
    assert flights.height == 336_776  # every departure, none dropped
    assert flights["is_cancelled"].sum() == 8_255
    assert flights["is_delayed"].null_count() == 8_255
    assert 0.19 < flights["is_delayed"].mean() < 0.22  # type: ignore[operator]
    quarantine = year_store.read(QUARANTINE)
    assert quarantine["rules"].to_list() == ["wind_speed: in_range(0, 150)"]  # the 1048 mph reading
    assert year_store.read(AIRPORT_WEATHER).height == 26_114
    assert year_store.read(PLANES).height == 3_322
    routes = year_store.read(ROUTE_STATS)
    assert routes.select("origin", "dest").unique().height == 224
    assert routes["day"].max() == date(2014, 1, 1)  # tomorrow's stats, for serving


@pytest.mark.data
def test_online_store_holds_the_latest_row_per_key(year_store: FeatureStore) -> None:
    keys = pl.DataFrame({"carrier": ["UA", "AA", "ZZ"]})
    online = year_store.get_online_features(CARRIER_STATS, keys)
    assert online["carrier"].to_list() == ["UA", "AA", "ZZ"]
    assert online["day"].to_list()[:2] == [date(2014, 1, 1)] * 2
    assert online["day"][2] is None  # unknown key: nulls, in place
    weather = year_store.get_online_features(AIRPORT_WEATHER, pl.DataFrame({"origin": ["JFK"]}))
    history = year_store.read(AIRPORT_WEATHER).filter(pl.col("origin") == "JFK")
    assert weather["observed_at"][0] == history["observed_at"].max()


@pytest.mark.data
@pytest.mark.parametrize("method", list(PitJoinMethod))
def test_point_in_time_join_of_real_flights_never_sees_the_future(
    year_root: Path, method: PitJoinMethod
) -> None:
    store = open_feature_store(FeaturePipelineSettings(data_root=year_root, pit_join=method))
    spine = store.read(FLIGHTS, columns=["flight_id", "sched_dep_utc", "origin", "dest", "carrier"])
    try:
        joined = store.point_in_time_join(
            spine.sample(fraction=1.0, shuffle=True, seed=7),
            "sched_dep_utc",
            [
                JoinRequest(ROUTE_STATS, ["delay_rate_7d"], prefix="route_"),
                JoinRequest(CARRIER_STATS, ["delay_rate_7d"], prefix="carrier_"),
                JoinRequest(AIRPORT_WEATHER, ["temp"], prefix="wx_"),
            ],
            keep_event_times=True,
        )
    finally:
        store.close()
    assert joined.height == spine.height
    for prefix in ("route_", "carrier_", "wx_"):
        matched = joined.filter(pl.col(f"{prefix}event_time").is_not_null())
        assert (matched[f"{prefix}event_time"] <= matched["sched_dep_utc"]).all()
    # Stats valid at local midnight: a 23:59 flight still sees its own day's row, never the next.
    late = joined.filter(pl.col("flight_id").str.ends_with("-2359")).head(50)
    day = late["sched_dep_utc"].dt.convert_time_zone("America/New_York").dt.date()
    seen = late["carrier_event_time"].dt.convert_time_zone("America/New_York").dt.date()
    assert (seen <= day).all()
    assert joined["wx_temp"].null_count() < 0.01 * joined.height


@pytest.mark.data
def test_both_join_methods_give_the_same_rows_for_the_whole_year(year_store: FeatureStore) -> None:
    """The training view's joins of every 2013 flight (spine shuffled, a null timestamp and a
    duplicated row added): Polars join_asof and the hand-written join agree to the last value."""
    spine = year_store.read(FLIGHTS, columns=["flight_id", "sched_dep_utc", *SPINE_KEYS])
    spine = pl.concat([spine, spine.head(3), spine.head(1).with_columns(sched_dep_utc=None)])
    spine = spine.sample(fraction=1.0, shuffle=True, seed=11)
    groups = [(request, year_store.read(request.group)) for request in FLIGHT_DELAY_VIEW.joins]
    library, native = (
        point_in_time_join(spine, "sched_dep_utc", groups, keep_event_times=True, method=m)
        for m in (PitJoinMethod.library, PitJoinMethod.native)
    )
    assert library.height == spine.height
    assert library["plane_seats"].null_count() < library.height / 4  # matches, not all nulls
    assert_frame_equal(library, native)


@pytest.mark.data
def test_quarantine_lists_rejected_rows_with_filters_through_the_cli(
    year_root: Path, tmp_path: Path
) -> None:
    root = ["--data-root", str(year_root)]
    listed = _cli("quarantine", *root, env=WIDE)
    assert listed.returncode == 0, listed.stderr
    assert "wind_speed: in_range(0, 150)" in listed.stdout and "weather" in listed.stdout
    assert "1 shown of 1 matching, 1 quarantined in all" in listed.stderr
    as_json = _cli("quarantine", *root, "--rule", "WIND_SPEED", "--source", "weather", "--json")
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert row["source"] == "weather" and "1048" in row["raw"] and row["first_run_id"]
    assert row["quarantined_at"].startswith("20")
    for filters in (["--source", "flights"], ["--since", "2999-01-01"], ["--run", "no-such-run"]):
        none = _cli("quarantine", *root, *filters)
        assert none.returncode == 0 and "0 shown of 0 matching, 1 quarantined" in none.stderr
    empty = _cli("quarantine", "--data-root", str(tmp_path))  # no store yet: nothing to list
    assert empty.returncode == 0 and "0 quarantined in all" in empty.stderr
    bad = _cli("quarantine", *root, "--since", "yesterday")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


@pytest.mark.data
def test_catalog_describes_every_column(year_root: Path) -> None:
    result = _cli("catalog", "--data-root", str(year_root), env=WIDE)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for group in (ROUTE_STATS, PLANES, QUARANTINE):
        assert " ".join(group.description.split()) in text
        for name, description in group.descriptions().items():
            assert name in text and " ".join(description.split()[:4]) in text, (group, name)


@pytest.mark.data
def test_daily_runs_give_the_same_rows_as_a_backfill(tmp_path: Path, year_root: Path) -> None:
    settings = FeaturePipelineSettings(data_root=tmp_path)
    for day in (date(2013, 7, 4), date(2013, 7, 5)):
        summary = run_backfill(settings, day, day, command="run")
        assert summary.error is None
    for group in (FLIGHTS, ROUTE_STATS, CARRIER_STATS, AIRPORT_WEATHER):
        daily = _table(tmp_path, group)
        full = _table(year_root, group).join(
            daily.select([*group.primary_key, group.event_time]),
            on=[*group.primary_key, group.event_time],
            how="semi",
        )
        assert daily.height > 0
        assert_frame_equal(daily, full)


@pytest.mark.data
def test_rerunning_a_window_changes_nothing(tmp_path: Path) -> None:
    settings = FeaturePipelineSettings(data_root=tmp_path)
    first = run_backfill(settings, date(2013, 2, 1), date(2013, 2, 28))
    before = {g.name: _table(tmp_path, g) for g in (*FEATURE_GROUPS.values(), QUARANTINE)}
    versions = _versions(tmp_path)
    second = run_backfill(settings, date(2013, 2, 1), date(2013, 2, 28))
    assert first.exit_code == second.exit_code
    assert _versions(tmp_path) == versions  # not even a new table version
    assert all(g.inserted == g.updated == 0 for g in second.groups.values())
    for name, frame in before.items():
        group = FEATURE_GROUPS.get(name, QUARANTINE)
        assert_frame_equal(_table(tmp_path, group), frame)


@pytest.mark.data
@pytest.mark.slow
def test_a_killed_backfill_completes_on_rerun_like_a_clean_run(tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = ["backfill", "--start", "2013-01-01", "--end", "2013-06-30", "--chunk-days", "14"]
    assert _cli(*args, "--data-root", str(clean)).returncode == 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "feature_pipeline", *args, "--data-root", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = killed / "offline" / FLIGHTS.table_name / "_delta_log"
    deadline = time.monotonic() + 120
    while not (log / "00000000000000000003.json").exists():  # a few chunks in: mid-run
        assert proc.poll() is None and time.monotonic() < deadline, "backfill ended too early"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = open_feature_store(FeaturePipelineSettings(data_root=killed))
    partial = store.read(FLIGHTS)  # every table is readable at a consistent version
    store.close()
    assert 0 < partial.height < _table(clean, FLIGHTS).height
    assert partial.select("flight_id").is_duplicated().sum() == 0
    assert _cli(*args, "--data-root", str(killed)).returncode == 3
    for group in (*FEATURE_GROUPS.values(), QUARANTINE):
        assert_frame_equal(_table(killed, group), _table(clean, group))
    online = open_feature_store(FeaturePipelineSettings(data_root=killed))
    keys = pl.DataFrame({"carrier": ["UA", "9E"]})
    got = online.get_online_features(CARRIER_STATS, keys)
    online.close()
    assert got["day"].to_list() == [date(2013, 7, 1)] * 2


def _write_source(folder: Path, flights: pl.DataFrame) -> None:
    from feature_pipeline.extract import bundled_data_dir

    folder.mkdir(parents=True, exist_ok=True)
    flights.write_csv(folder / "flights.csv")
    for name in ("weather", "planes", "airports"):
        (folder / f"{name}.csv").write_bytes((bundled_data_dir() / f"{name}.csv").read_bytes())


def _january(n: int = 2_000) -> pl.DataFrame:
    from feature_pipeline.extract import Source, Window

    return Source().flights(Window(date(2013, 1, 1), date(2013, 1, 31))).head(n)


def _backfill_january(source: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return _cli(
        "backfill", "--start", "2013-01-01", "--end", "2013-01-31",
        "--data-root", str(root), "--source", str(source),
    )  # fmt: skip


def _nothing_written(root: Path) -> bool:
    offline = root / "offline"
    return not offline.exists() or not any(offline.iterdir())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_column", "lacks columns ['dest']"),
        ("wrong_types", "flights: 2,000 of 2,000 rows (100.0%) broke the data contract"),
        ("corrupted", "is not a readable CSV file"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_is_written(
    tmp_path: Path, damage: str, message: str
) -> None:
    source = tmp_path / "source"
    flights = _january()
    if damage == "missing_column":
        _write_source(source, flights.drop("dest"))
    elif damage == "wrong_types":
        _write_source(source, flights.with_columns(pl.lit("n/a").alias("distance")))
    else:
        _write_source(source, flights)
        (source / "flights.csv").write_bytes(b"year,month,day\n2013,1\n2013,1,1,1,1,1,1\n")
    root = tmp_path / "store"
    result = _backfill_january(source, root)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in " ".join(result.stderr.split()), result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "failure"
    assert _nothing_written(root)


def test_a_few_bad_rows_are_quarantined_and_the_rest_written(tmp_path: Path) -> None:
    source = tmp_path / "source"
    flights = _january().with_columns(
        pl.when(pl.int_range(pl.len()) < 5)
        .then(pl.lit("ZZZ"))
        .otherwise(pl.col("dest"))
        .alias("dest")
    )
    _write_source(source, flights)
    root = tmp_path / "store"
    result = _backfill_january(source, root)
    assert result.returncode == 3  # partial
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["sources"]["flights"] == {
        "rows_read": 2_000,
        "quarantined": 5,
        "deduplicated": 0,
    }
    assert summary["groups"]["flights"]["inserted"] == 1_995
    quarantine = pl.read_delta(str(root / "offline" / QUARANTINE.table_name))
    assert (
        quarantine.filter(pl.col("source") == "flights")["rules"].to_list()
        == ["dest: known_airport"] * 5
    )


def test_cli_rejects_a_bad_date_with_usage_exit_code() -> None:
    result = _cli("backfill", "--start", "2013-13-01", "--end", "2013-12-31")
    assert result.returncode == 2
    assert "not a date; use YYYY-MM-DD" in result.stderr
