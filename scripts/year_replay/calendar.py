"""The replay's calendar: operations start on Monday 2013-07-01 and run week by week to the end
of the year (26 full weeks and the two days of 30-31 December as a short 27th week)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from shared.errors import ConfigurationError

YEAR_START = date(2013, 1, 1)
REPLAY_START = date(2013, 7, 1)  # a Monday: the first half of the year is history
YEAR_END = date(2013, 12, 31)


@dataclass(frozen=True)
class Week:
    index: int  # 1 = the week of REPLAY_START
    start: date
    end: date  # inclusive

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    @property
    def label(self) -> str:
        return f"W{self.index:02d} {self.start:%b %d}-{self.end:%b %d}"


def replay_weeks(first: date = REPLAY_START, last: date = YEAR_END) -> list[Week]:
    """Consecutive 7-day weeks from ``first``; the last one ends at ``last`` (may be shorter)."""
    weeks = []
    start = first
    while start <= last:
        end = min(start + timedelta(days=6), last)
        weeks.append(Week(index=len(weeks) + 1, start=start, end=end))
        start = end + timedelta(days=1)
    return weeks


def selected_weeks(start_week: int, weeks: int | None) -> list[Week]:
    """Weeks ``start_week`` .. ``start_week + weeks - 1`` of the replay calendar (1-based)."""
    calendar = replay_weeks()
    if not 1 <= start_week <= len(calendar):
        raise ConfigurationError(
            f"--start-week {start_week}: the replay has weeks 1..{len(calendar)}"
        )
    chosen = calendar[start_week - 1 :]
    return chosen if weeks is None else chosen[:weeks]
