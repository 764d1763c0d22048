"""Prediction logging off the response path: the route hands rows to an in-memory queue, and one
background task writes them to the ``predictions`` group in batches (one upsert per flush).

A full queue drops rows (counted in the metrics) rather than slowing predictions down, and a
failed write is logged and counted, never raised into a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pyarrow as pa
from deltalake.exceptions import DeltaError

from inference_pipeline.service.metrics import ServiceMetrics
from shared.errors import FTIError
from shared.feature_store import FeatureStore
from shared.prediction_log import PREDICTIONS, LoggedPredictions, logged_prediction_rows

log = logging.getLogger(__name__)

_NICE = 10
_KEYS = [*PREDICTIONS.primary_key, PREDICTIONS.event_time]


class PredictionWriter:
    def __init__(
        self,
        store: FeatureStore,
        metrics: ServiceMetrics,
        *,
        flush_rows: int,
        flush_s: float,
        max_pending: int = 100_000,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._flush_rows = flush_rows
        self._flush_s = flush_s
        self._max_pending = max_pending
        self._pending: list[LoggedPredictions] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._thread = ThreadPoolExecutor(1, "prediction-log", initializer=_background_priority)

    def start(self) -> None:
        self._store.register(PREDICTIONS)
        self._task = asyncio.create_task(self._run(), name="prediction-writer")

    def submit(self, predictions: LoggedPredictions) -> None:
        """Queue predictions for the next flush, which turns them into rows in the flush
        thread, off the request path. Never blocks or raises."""
        rows = len(predictions)
        if self._pending_rows + rows > self._max_pending:
            self._metrics.prediction_log_rows.labels("dropped").inc(rows)
            log.warning("prediction log queue full: %d rows dropped", rows)
            return
        self._pending.append(predictions)
        self._pending_rows += rows
        if self._pending_rows >= self._flush_rows:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending, rows = self._pending, [], self._pending_rows
        self._pending_rows = 0
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            frame = await loop.run_in_executor(self._thread, _frame, batch)
            # Append, not upsert: every record's key holds its own request id and scoring
            # time, so it is new by construction, and an upsert's read of the table would
            # cost more with every flush.
            await loop.run_in_executor(self._thread, self._store.append, PREDICTIONS, frame)
        except (
            FTIError,
            DeltaError,
            pa.ArrowException,
            pl.exceptions.PolarsError,
            OSError,
            ValueError,
        ) as exc:
            self._metrics.prediction_log_rows.labels("failed").inc(rows)
            log.error("could not log %d predictions: %s", rows, exc)
            return
        self._metrics.prediction_log_rows.labels("written").inc(frame.height)
        log.debug("logged %d predictions in %.3f s", frame.height, time.perf_counter() - began)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()  # what arrived after the loop's last flush
        self._thread.shutdown(wait=False)


def _background_priority() -> None:
    """Lower this thread's CPU priority (Linux: a thread's own nice value): building and
    writing a flush's records must not take the cores from requests in flight."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, _NICE)


def _frame(batch: list[LoggedPredictions]) -> pl.DataFrame:
    rows = logged_prediction_rows(batch)
    return rows.unique(subset=_KEYS, keep="last", maintain_order=True)
