"""Continuous training's newest window: derived backwards from the last day with outcomes."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from training_pipeline.config import RecentWindows, Window

pytestmark = pytest.mark.unit


def test_windows_end_with_the_last_known_day_and_touch_without_overlap() -> None:
    windows = RecentWindows(train_days=120, validation_days=14, test_days=14).ending(
        date(2013, 7, 7)
    )
    assert windows.test == Window(start=date(2013, 6, 24), end=date(2013, 7, 8))  # end exclusive
    assert windows.validation == Window(start=date(2013, 6, 10), end=date(2013, 6, 24))
    assert windows.train == Window(start=date(2013, 2, 10), end=date(2013, 6, 10))
    assert (windows.train.end - windows.train.start).days == 120


def test_a_window_too_short_to_train_on_is_refused() -> None:
    with pytest.raises(ValidationError, match="train_days"):
        RecentWindows(train_days=3)
