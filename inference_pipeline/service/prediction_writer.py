"""Prediction logging off the response path: the route hands rows to an in-memory queue, and one
background task writes them to the ``predictions`` group in batches (one upsert per flush).

A full queue drops rows (counted in the metrics) rather than slowing predictions down, and a
failed write is logged and counted, never raised into a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake.exceptions import DeltaError

from inference_pipeline.service.metrics import ServiceMetrics
from shared.errors import FTIError
from shared.feature_store import FeatureStore
from shared.prediction_log import PREDICTIONS, prediction_frame

log = logging.getLogger(__name__)

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
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._store.register(PREDICTIONS)
        self._task = asyncio.create_task(self._run(), name="prediction-writer")

    def submit(self, records: list[dict[str, Any]]) -> None:
        """Queue `prediction_record` records; never blocks, never raises."""
        if self._pending_rows + len(records) > self._max_pending:
            self._metrics.prediction_log_rows.labels("dropped").inc(len(records))
            log.warning("prediction log queue full: %d rows dropped", len(records))
            return
        self._pending.extend(records)
        self._pending_rows += len(records)
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
        batch, self._pending, self._pending_rows = self._pending, [], 0
        began = time.perf_counter()
        try:
            frame = await asyncio.to_thread(_frame, batch)
            await asyncio.to_thread(self._store.insert, PREDICTIONS, frame)
        except (
            FTIError,
            DeltaError,
            pa.ArrowException,
            pl.exceptions.PolarsError,
            OSError,
            ValueError,
        ) as exc:
            self._metrics.prediction_log_rows.labels("failed").inc(len(batch))
            log.error("could not log %d predictions: %s", len(batch), exc)
            return
        self._metrics.prediction_log_rows.labels("written").inc(frame.height)
        log.debug("logged %d predictions in %.3f s", frame.height, time.perf_counter() - began)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()


def _frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    return prediction_frame(records).unique(subset=_KEYS, keep="last", maintain_order=True)
