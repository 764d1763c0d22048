"""The service's only part in the prediction log: each answered batch is appended to the sink
(`inference_pipeline.prediction_sink`) before its responses are sent, as one record of raw
values. Building the rows and committing them to Delta is the log writer's work, in another
process (`python -m inference_pipeline log-writer`), so none of it shares the GIL with requests.

One append per answered batch: the requests of a coalesced batch resume in the same turn of the
event loop, each adds its predictions to the turn's group and awaits it, and the group is
appended once at the end of the turn (a request that was a batch of its own is appended at once,
without waiting for the turn). A response is sent only after its append returned, so every 200
has its predictions in the sink. A failed append (disk full, broker down) is logged and counted
in ``fti_prediction_log_rows{outcome="failed"}``; the request is still answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Sequence

from inference_pipeline.prediction_sink.protocol import PredictionSink, SinkUnavailable
from inference_pipeline.prediction_sink.records import encode_batch
from inference_pipeline.service.background import BackgroundTasks
from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from shared.on_demand import FLIGHT_DATE
from shared.prediction_log import LoggedPredictions

log = logging.getLogger(__name__)

_TICK_S = 0.25  # how often the sink's housekeeping runs (the spool seals old segments)


class PredictionHandoff:
    def __init__(self, sink: PredictionSink, metrics: ServiceMetrics, failures: FailureLog) -> None:
        self._sink = sink
        self._metrics = metrics
        self._failures = failures
        self._group: list[LoggedPredictions] = []
        self._appended: asyncio.Future[None] | None = None
        self._ids = itertools.count()
        self._prefix = f"{os.getpid()}-{id(self):x}"

    def start(self, tasks: BackgroundTasks) -> None:
        tasks.spawn(self._housekeeping(), "prediction-log-housekeeping")

    def submit(self, entries: Sequence[LoggedPredictions]) -> asyncio.Future[None] | None:
        """Hand ``entries`` (one request's predictions) to the sink: at once when they are
        their batch's only predictions (None returned), else with the rest of the turn's
        group (the future to await before answering). Never raises."""
        if not entries:
            return None
        if all(_whole_batch(entry) for entry in entries):
            self._append(entries)
            return None
        self._group.extend(entries)
        if self._appended is None:
            self._appended = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._append_group)
        return self._appended

    def _append_group(self) -> None:
        group, self._group = self._group, []
        appended, self._appended = self._appended, None
        if group:  # empty when close() appended it already
            self._append(group)
        if appended is not None and not appended.done():
            appended.set_result(None)

    def _append(self, entries: Sequence[LoggedPredictions]) -> None:
        rows = sum(len(entry) for entry in entries)
        try:
            self._sink.append(encode_batch(entries, f"{self._prefix}-{next(self._ids)}"))
        except (SinkUnavailable, TypeError, ValueError) as exc:
            self._metrics.prediction_log_rows.labels("failed").inc(rows)
            self._failures.failed("prediction-log", f"could not log {rows} predictions: {exc}")
            return
        self._metrics.prediction_log_rows.labels("appended").inc(rows)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            self._sink.tick()

    def close(self) -> None:
        if self._group:
            self._append_group()
        with contextlib.suppress(SinkUnavailable):
            self._sink.close()


def _whole_batch(entry: LoggedPredictions) -> bool:
    """Whether ``entry`` holds every row of its scored batch (no other request shares it)."""
    window = entry.window
    return window.start == 0 and window.stop == len(entry.columns[FLIGHT_DATE])
