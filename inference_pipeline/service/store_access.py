"""Calls into the feature store with a deadline: awaited on the loop, or on threads of their own.

A network online store with asyncio reads (Redis) is read on the loop (`awaited`). One without
(Hopsworks) is read on a store thread: a hung store leaves threads blocked in its client's
socket timeouts, and must not starve the default pool that registry calls use. Each call
answers by a deadline (``FTI_ONLINE_TIMEOUT_S`` unless the caller gives one) or raises
`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from shared.errors import StoreUnavailable
from shared.feature_store import FeatureStore

T = TypeVar("T")

# Coalescing keeps one read in flight per served version; a hung store holds a thread for its
# client's socket timeouts.
_STORE_THREADS = 8


class StoreAccess:
    def __init__(self, store: FeatureStore, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self._threads = ThreadPoolExecutor(
            max_workers=_STORE_THREADS, thread_name_prefix="online-store"
        )

    async def call(self, fn: Callable[..., T], *args: object, due: float | None = None) -> T:
        """Run a blocking store call on a store thread, answered by ``due`` (loop time;
        default: within the online timeout from now)."""
        loop = asyncio.get_running_loop()
        return await self.awaited(loop.run_in_executor(self._threads, fn, *args), due=due)

    async def awaited(self, read: Awaitable[T], *, due: float | None = None) -> T:
        """Await a store read (an asyncio one, or `call`'s thread), answered by ``due`` (loop
        time; default: within the online timeout from now) or `StoreUnavailable`."""
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: no extra task per call (Python 3.11).
            async with asyncio.timeout_at(loop.time() + self.timeout_s if due is None else due):
                return await read
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"online feature store did not answer within {self.timeout_s:g} s"
            ) from exc

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        reads = self.store.online_async
        if reads is not None:
            await reads.aclose()
        self.store.close()
