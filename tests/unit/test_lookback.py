"""Which lookback days are missing, and how they are named in the one-line error."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from feature_pipeline.extract import Window
from feature_pipeline.lookback import describe_days, lookback_window, missing_days, unheld_days

pytestmark = pytest.mark.unit

MARCH_5 = Window(date(2013, 3, 5), date(2013, 3, 5))


def test_the_lookback_is_the_28_days_before_the_window() -> None:
    assert lookback_window(MARCH_5) == Window(date(2013, 2, 5), date(2013, 3, 4))


def test_days_after_the_beginning_of_history_are_missing() -> None:
    before = lookback_window(MARCH_5)
    store = {date(2013, 2, 5) + timedelta(days=i) for i in range(24)}  # up to 02-28
    unheld = unheld_days(before, store, {date(2013, 3, 2)})
    assert unheld == [date(2013, 3, 1), date(2013, 3, 3), date(2013, 3, 4)]
    assert missing_days(unheld, date(2013, 1, 1)) == unheld


def test_days_before_the_beginning_of_history_are_not_missing() -> None:
    # A first backfill of 2013: nothing anywhere before 01-01, the source starts there.
    before = lookback_window(Window(date(2013, 1, 1), date(2013, 1, 31)))
    unheld = unheld_days(before, set())
    assert len(unheld) == 28
    assert missing_days(unheld, date(2013, 1, 1)) == []
    assert missing_days(unheld, None) == []  # nothing held anywhere: history starts now
    # History that starts inside the lookback: only the gap after its first day is missing.
    assert missing_days([date(2013, 1, 2), date(2013, 1, 5)], date(2013, 1, 3)) == [
        date(2013, 1, 5)
    ]


def test_missing_days_are_named_as_ranges() -> None:
    days = [
        date(2013, 3, 4),
        date(2013, 3, 1),
        date(2013, 3, 2),
        date(2013, 3, 3),
        date(2013, 3, 9),
    ]
    assert describe_days(days) == "2013-03-01..2013-03-04, 2013-03-09 (5 days)"
    assert describe_days([date(2013, 3, 1)]) == "2013-03-01 (1 day)"
