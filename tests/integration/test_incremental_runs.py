"""Invariant 8: daily runs fed only their own day's extract equal one full backfill.

The rolling statistics of a daily run sum the 28 days before it, which its extract does not hold:
they come from the store's `flights` group. When neither holds a day the statistics need, or the
source holds nothing for the window, the run fails with one line and writes nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from feature_pipeline.extract import Source, bundled_data_dir, raw_flight_date
from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings
from shared.feature_definitions import FEATURE_GROUPS, QUARANTINE
from shared.feature_group import FeatureGroup
from shared.feature_view import local_day_start_utc
from tests.feature_tables import offline_table, online_table

pytestmark = [pytest.mark.integration, pytest.mark.data]
ROOT = Path(__file__).resolve().parents[2]
GROUPS: tuple[FeatureGroup, ...] = (*FEATURE_GROUPS.values(), QUARANTINE)
MARCH = [date(2013, 3, 1) + timedelta(days=i) for i in range(31)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feature_pipeline", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def raw_year() -> dict[str, pl.DataFrame]:
    """The bundled raw tables as strings, exactly as an upstream system would export them."""
    source = Source()
    return {name: source.table(name).collect() for name in ("flights", "weather")}


def write_day_extract(folder: Path, raw: dict[str, pl.DataFrame], day: date, fmt: str) -> Path:
    """An upstream daily extract: that local day's flights and weather only, plus the reference
    tables (planes, airports) every extract carries."""
    folder.mkdir(parents=True, exist_ok=True)
    start, end = local_day_start_utc(day), local_day_start_utc(day + timedelta(days=1))
    at = pl.col("time_hour").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
    tables = {
        "flights": raw["flights"].filter(raw_flight_date() == day),
        "weather": raw["weather"].filter((at >= start) & (at < end)),
    }
    for name, frame in tables.items():
        if fmt == "parquet":
            frame.write_parquet(folder / f"{name}.parquet")
        else:
            frame.write_csv(folder / f"{name}.csv")
    for name in ("planes", "airports"):
        (folder / f"{name}.csv").write_bytes((bundled_data_dir() / f"{name}.csv").read_bytes())
    return folder


def table_versions(root: Path) -> dict[str, int]:
    return {g.name: DeltaTable(str(root / "offline" / g.table_name)).version() for g in GROUPS}


@pytest.fixture(scope="module")
def january_february(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store backfilled with January and February (copied by each test that writes)."""
    root = tmp_path_factory.mktemp("jan-feb")
    summary = run_backfill(
        FeaturePipelineSettings(data_root=root), date(2013, 1, 1), MARCH[0] - timedelta(days=1)
    )
    assert summary.error is None, summary.error
    yield root


def _copy(root: Path, to: Path) -> Path:
    shutil.copytree(root, to)
    return to


@pytest.mark.slow
def test_daily_runs_fed_only_their_day_equal_one_backfill(
    tmp_path: Path, raw_year: dict[str, pl.DataFrame], january_february: Path
) -> None:
    daily = _copy(january_february, tmp_path / "daily")
    for i, day in enumerate(MARCH):
        extract = write_day_extract(
            tmp_path / "extracts" / str(day), raw_year, day, "parquet" if i % 2 else "csv"
        )
        if day == MARCH[-1]:  # the last one as cron runs it
            result = _cli(
                "run", "--date", str(day), "--source", str(extract), "--data-root", str(daily)
            )
            assert result.returncode == 0, result.stderr
            summary = json.loads(result.stdout.splitlines()[-1])
            assert summary["status"] == "success"
            assert (summary["lookback_days_from_source"], summary["lookback_days_from_store"]) == (
                0,
                28,
            )
            continue
        settings = FeaturePipelineSettings(data_root=daily, source=str(extract))
        run = run_backfill(settings, day, day, command="run")
        assert run.error is None, run.error
        assert run.exit_code == 0
        assert (run.lookback_days_from_source, run.lookback_days_from_store) == (0, 28)
        assert (
            run.sources["flights"].rows_read
            == raw_year["flights"].filter(raw_flight_date() == day).height
        )

    full = tmp_path / "full"
    summary = run_backfill(FeaturePipelineSettings(data_root=full), date(2013, 1, 1), MARCH[-1])
    assert summary.error is None, summary.error
    for group in GROUPS:
        expected = offline_table(full, group)
        assert expected.height > 0
        assert_frame_equal(offline_table(daily, group), expected)
    for group in (g for g in GROUPS if g.online):
        assert_frame_equal(online_table(daily, group), online_table(full, group))


def test_a_daily_run_without_its_history_fails_naming_the_days(
    tmp_path: Path, raw_year: dict[str, pl.DataFrame], january_february: Path
) -> None:
    root = _copy(january_february, tmp_path / "store")
    before = table_versions(root)
    day = date(2013, 3, 5)  # the store ends on 02-28: 03-01..03-04 are in neither
    extract = write_day_extract(tmp_path / "extract", raw_year, day, "csv")
    result = _cli("run", "--date", str(day), "--source", str(extract), "--data-root", str(root))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert "no flights for 2013-03-01..2013-03-04 (4 days)" in " ".join(result.stderr.split())
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "failure"
    assert table_versions(root) == before  # nothing written


@pytest.mark.parametrize("case", ["header_only", "wrong_day"])
def test_a_source_with_no_flights_in_the_window_is_an_error(
    tmp_path: Path, raw_year: dict[str, pl.DataFrame], case: str
) -> None:
    extract = write_day_extract(tmp_path / "extract", raw_year, date(2013, 1, 2), "csv")
    if case == "header_only":
        (extract / "flights.csv").write_text(",".join(raw_year["flights"].columns) + "\n")
        args = ["backfill", "--start", "2013-01-01", "--end", "2013-06-30"]
    else:  # the extract of 01-02 given to the run of 01-03
        args = ["run", "--date", "2013-01-03"]
    root = tmp_path / "store"
    result = _cli(*args, "--source", str(extract), "--data-root", str(root))
    assert result.returncode == 1, result.stderr
    text = " ".join(result.stderr.split())
    window = "2013-01-01..2013-06-30" if case == "header_only" else "2013-01-03..2013-01-03"
    assert f"{extract} holds no flights for {window}" in text, text
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
    assert not (root / "offline").exists() or not any((root / "offline").iterdir())
