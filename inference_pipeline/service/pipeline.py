"""The request pipeline: flights -> online features as of T -> on-demand features -> MDT ->
Triton, for one model version.

Concurrent requests for the same version are coalesced (`inference_pipeline.coalescing`): they
share one store read, one MDT and one Triton call. On a few cores the per-call Python work, not
the per-row arithmetic, is where an online service spends its time. A store read has one
deadline per request, counted from its arrival (see `_store_deadline`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference_pipeline.coalescing import Coalescer
from inference_pipeline.model_artifact import ServingModel
from inference_pipeline.scoring import (
    OnlineInputs,
    model_inputs,
    model_inputs_async,
    reported_inputs,
)
from inference_pipeline.service.store_access import StoreAccess
from inference_pipeline.service.triton_link import TritonLink
from shared.errors import ModelServerUnavailable
from shared.triton_repository import MAX_BATCH_SIZE

# Loop turns the Triton client takes to send a request (measured for tritonclient.http.aio on
# aiohttp: 1 turn left the body unsent, and 1 ms of work after it added 1.4 ms to the request;
# after 2, 0.6 ms: Triton computed meanwhile). More cost a few microseconds each.
_TURNS_TO_SEND = 2


@dataclass(frozen=True)
class OnlineScores:
    """One request's share of a scored batch."""

    inputs: OnlineInputs
    probabilities: list[float]
    triton_s: float  # the batch's Triton call


@dataclass(slots=True)
class _Job:
    """One request's flights, queued for a batch."""

    model: ServingModel
    flights: list[dict[str, Any]]
    arrived: float  # event loop time


class ScoringPipeline:
    def __init__(
        self,
        store: StoreAccess,
        triton: TritonLink,
        batch_requests: Callable[[int], object] = lambda requests: None,
    ) -> None:
        self._store = store
        self._triton = triton
        self._batch_requests = batch_requests  # told each batch's number of requests
        # Per batch key: when the batch last in flight passed its store read.
        self._store_passed: dict[tuple[str, str], float] = {}
        self._batches: Coalescer[tuple[str, str], _Job, OnlineScores] = Coalescer(
            self._score_batch, size=lambda job: len(job.flights), max_size=MAX_BATCH_SIZE
        )

    async def score(self, model: ServingModel, flights: list[dict[str, Any]]) -> OnlineScores:
        """Features, MDT and Triton for ``flights`` (each with its T), in a batch shared with
        the concurrent requests for the same version."""
        job = _Job(model, flights, asyncio.get_running_loop().time())
        return await self._batches.submit((model.triton_name, model.version), job)

    async def _score_batch(self, key: tuple[str, str], batch: list[_Job]) -> list[OnlineScores]:
        client = self._triton.client
        if client is None:
            raise ModelServerUnavailable("Triton client not connected")
        self._batch_requests(len(batch))
        model = batch[0].model
        flights = batch[0].flights if len(batch) == 1 else [f for job in batch for f in job.flights]
        store = self._store.store
        if store.online_reads_in_process:
            # A local SQLite file (bounded by its busy timeout, the online timeout): on a worker
            # thread the read and MDT only traded the GIL back and forth with this loop, which
            # cost a third of the throughput at 16 connections (benchmarks/online_load.py).
            prepared = model_inputs(store, model, flights)
        else:
            deadline = self._store_deadline(key, batch[0].arrived)
            reads = store.online_async
            if reads is not None:  # Redis: the round trip awaited, the rest on this loop
                prepared = await self._store.awaited(
                    model_inputs_async(reads, model, flights), due=deadline
                )
            else:
                prepared = await self._store.call(model_inputs, store, model, flights, due=deadline)
            self._store_passed[key] = asyncio.get_running_loop().time()
        began = time.perf_counter()
        call = asyncio.ensure_future(
            client.infer(model.triton_name, model.version, prepared.matrices)
        )
        try:
            # Two turns of the loop put the request on the wire (aiohttp writes the body in a
            # task of its own); the reports, which the answer needs and the model does not,
            # are then built while Triton computes.
            for _ in range(_TURNS_TO_SEND):
                await asyncio.sleep(0)
            inputs = reported_inputs(prepared, model)
            probabilities = await call
        except ModelServerUnavailable:
            self._triton.heal_soon()
            raise
        finally:
            if not call.done():  # the reports failed, or this request was cancelled
                call.cancel()
            elif not call.cancelled():
                call.exception()  # retrieved: its failure, if any, was raised above or is moot
        triton_s = time.perf_counter() - began
        sizes = [len(job.flights) for job in batch]
        bounds = itertools.accumulate(sizes, initial=0)
        return [
            OnlineScores(part, probabilities[start:stop].tolist(), triton_s)
            for part, (start, stop) in zip(
                inputs.split(sizes), itertools.pairwise(bounds), strict=True
            )
        ]

    def _store_deadline(self, key: tuple[str, str], first_arrived: float) -> float:
        """When this batch's store read must have answered: one deadline per request, the
        online timeout from its arrival, whatever it waited for.

        A request that arrives while a batch is in flight waits for the next batch. When the
        batch ahead hangs on the store, that wait is store time too: with a deadline per store
        call, a request queued behind a hung read got a 503 after up to twice the timeout. The
        time queued while the batch ahead was in Triton does not count (Triton has its own
        deadline, and a 503 must name the dependency at fault). The batch's earliest request
        has waited longest, so its deadline is the batch's."""
        now = asyncio.get_running_loop().time()
        passed = self._store_passed.pop(key, None)  # None: the batch ahead failed its read
        waited = now - first_arrived if passed is None else max(0.0, passed - first_arrived)
        return now + self._store.timeout_s - waited
