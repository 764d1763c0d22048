"""Log lines for failing dependencies, at most about one per dependency per interval.

During an outage every request fails the same way: one warning per failed request wrote
37,801 lines in 90 s of a Triton outage, burying everything else in the log (the Prometheus
counter ``fti_prediction_errors`` counts every one of them anyway). Here the first failure
of a dependency is logged in full; the ones after it within ``FTI_FAILURE_LOG_INTERVAL_S``
are counted, and one line at the end of the interval sums them up with the latest message::

    POST /v1/predictions -> 503: Triton at 127.0.0.1:8000 unreachable: ...
    triton: 4,211 more failures in the last 10 s (latest: POST /v1/predictions -> 503: ...)

While failures go on, each interval ends with such a line; once they stop, the next failure
is logged in full again. The summary is written by a timer on the event loop, armed only by
a suppressed failure: nothing runs while nothing fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass


@dataclass
class _Window:
    ends: float  # time.monotonic()
    suppressed: int = 0
    latest: str = ""
    summary_armed: bool = False


class FailureLog:
    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._windows: dict[str, _Window] = {}

    def failed(
        self,
        dependency: str,
        message: str,
        *,
        level: int = logging.WARNING,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log ``message`` (a failure of ``dependency``) unless that dependency's failures
        were logged within the interval; then it is counted for the interval's summary."""
        now = time.monotonic()
        window = self._windows.get(dependency)
        if window is None or now >= window.ends:
            if window is not None and window.suppressed:  # no loop ran its summary timer
                self._summarise(dependency, window)
            self._windows[dependency] = _Window(ends=now + self.interval_s)
            self._log.log(level, message, exc_info=exc_info)
            return
        window.suppressed += 1
        window.latest = message
        if not window.summary_armed:
            window.summary_armed = self._arm_summary(dependency, window)

    def _arm_summary(self, dependency: str, window: _Window) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # summed up at the next failure after the interval instead
        loop.call_later(max(0.0, window.ends - time.monotonic()), self._end, dependency, window)
        return True

    def _end(self, dependency: str, window: _Window) -> None:
        """The interval is over: sum it up, and count what follows into a new interval."""
        if self._windows.get(dependency) is not window or not window.suppressed:
            return
        self._summarise(dependency, window)
        self._windows[dependency] = _Window(ends=time.monotonic() + self.interval_s)

    def _summarise(self, dependency: str, window: _Window) -> None:
        self._log.warning(
            "%s: %s more failure%s in the last %g s (latest: %s)",
            dependency,
            f"{window.suppressed:,}",
            "" if window.suppressed == 1 else "s",
            self.interval_s,
            window.latest,
        )
