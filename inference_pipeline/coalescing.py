"""Request coalescing: concurrent calls for the same key share one batch.

Whatever arrives while a batch is in flight waits and goes in the next one. A lone caller waits
for nothing (its batch runs at once, in its own task); sixteen concurrent callers pay one
feature read, one MDT and one Triton call between them instead of sixteen, which is where an
online service on a few cores spends its time (the per-call Python work, not the per-row
arithmetic). The service-side twin of Triton's dynamic batching, without its queue delay.
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
    ``max_size`` units of ``size(item)`` (always at least one item). A caller that gives up
    (cancelled, e.g. by its deadline) is dropped from batches not yet started."""

    def __init__(
        self,
        run: Callable[[K, list[T]], Awaitable[list[R]]],
        *,
        size: Callable[[T], int],
        max_size: int,
    ) -> None:
        self._run = run
        self._size = size
        self._max_size = max_size
        self._pending: dict[K, list[tuple[T, asyncio.Future[R]]]] = {}
        self._drains: dict[K, asyncio.Task[None]] = {}
        self._busy: set[K] = set()  # keys with a batch in flight (a caller's own, or a drain)

    async def submit(self, key: K, item: T) -> R:
        loop = asyncio.get_running_loop()
        if key in self._busy:  # a batch in flight: wait for the next one
            future: asyncio.Future[R] = loop.create_future()
            self._pending.setdefault(key, []).append((item, future))
            return await future
        # Idle: run this item at once, in the caller's own task (no hand-over to pay).
        self._busy.add(key)
        try:
            return (await self._run(key, [item]))[0]
        finally:
            self._busy.discard(key)
            if self._pending.get(key):  # arrived meanwhile: one task drains them
                self._busy.add(key)
                self._drains[key] = loop.create_task(self._drain(key))

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
            del self._drains[key]
            self._busy.discard(key)
            # Left over only when this task itself was cancelled (shutdown): nobody waits forever.
            for _, future in batch + self._pending.pop(key, []):
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
