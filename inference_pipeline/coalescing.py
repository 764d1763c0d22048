"""Request coalescing: concurrent calls for the same key share one batch.

Whatever arrives while a batch is in flight waits and goes in the next one. A lone caller waits
for nothing (its batch runs at once, in its own task); sixteen concurrent callers pay one
feature read, one MDT and one Triton call between them instead of sixteen, which is where an
online service on a few cores spends its time (the per-call Python work, not the per-row
arithmetic). The service-side twin of Triton's dynamic batching, without its queue delay.

Up to ``in_flight`` batches of a key may run at once (default one). More than one pays where a
batch spends most of its time waiting rather than computing: with a network feature store, a
batch waits on the store and then on Triton, and a second batch in flight reads the store while
the first is in Triton.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[K, T, R]):
    """``submit(key, item)`` -> the result for ``item`` from ``run(key, batch)``.

    ``run`` gets the items of one batch in arrival order and returns one result per item, in
    the same order; its exception reaches every caller of that batch. A batch holds at most
    ``max_size`` units of ``size(item)`` (always at least one item), and at most ``in_flight``
    batches of a key run at once. A caller that gives up (cancelled, e.g. by its deadline) is
    dropped from batches not yet started."""

    def __init__(
        self,
        run: Callable[[K, list[T]], Awaitable[list[R]]],
        *,
        size: Callable[[T], int],
        max_size: int,
        in_flight: int = 1,
    ) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self._run = run
        self._size = size
        self._max_size = max_size
        self._in_flight = in_flight
        self._pending: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._drains: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self._busy: dict[K, int] = {}  # batches in flight per key (callers' own, or drains)

    async def submit(self, key: K, item: T) -> R:
        loop = asyncio.get_running_loop()
        if self._busy.get(key, 0) >= self._in_flight:  # wait for the next batch
            future: asyncio.Future[R] = loop.create_future()
            self._pending.setdefault(key, []).append((item, future))
            return await future
        # A free slot: run this item at once, in the caller's own task (no hand-over to pay).
        self._take_slot(key)
        try:
            return (await self._run(key, [item]))[0]
        finally:
            self._free_slot(key)
            if self._pending.get(key):  # arrived meanwhile: one task drains them
                self._take_slot(key)
                drain = loop.create_task(self._drain(key))
                self._drains.add(drain)
                drain.add_done_callback(self._drains.discard)

    def _take_slot(self, key: K) -> None:
        self._busy[key] = self._busy.get(key, 0) + 1

    def _free_slot(self, key: K) -> None:
        left = self._busy.pop(key) - 1
        if left:
            self._busy[key] = left

    async def _drain(self, key: K) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while batch := self._next_batch(key):
                try:
                    results = await self._run(key, [item for item, _ in batch])
                except Exception as exc:  # every caller of the batch gets the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._free_slot(key)
            # Left over only when this task itself was cancelled (shutdown): its batch, and
            # what waits unless another batch of the key is still in flight to drain it.
            waiting = [] if key in self._busy else self._pending.pop(key, [])
            for _, future in batch + waiting:
                future.cancel()

    def _next_batch(self, key: K) -> list[tuple[T, asyncio.Future[R]]]:
        queue = [entry for entry in self._pending.pop(key, []) if not entry[1].done()]
        taken, total = 0, 0
        while taken < len(queue):
            total += self._size(queue[taken][0])
            if taken and total > self._max_size:
                break
            taken += 1
        if taken < len(queue):
            self._pending[key] = queue[taken:]
        return queue[:taken]
