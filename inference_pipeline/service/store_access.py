"""Calls into the feature store with a deadline: awaited on the loop, or on threads of their own.

A network online store with asyncio reads (Redis) is read on the loop (`awaited`). One without
(Hopsworks) is read on a store thread: a hung store leaves threads blocked in its client's
socket timeouts, and must not starve the default pool that registry calls use. Each call
answers by a deadline (``FTI_ONLINE_TIMEOUT_S`` unless the caller gives one) or raises
`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
        if due is not None and due <= loop.time():
            raise self._late()  # not handed to a thread that would run it anyway
        return await self.awaited(loop.run_in_executor(self._threads, fn, *args), due=due)

    async def awaited(self, read: Awaitable[T], *, due: float | None = None) -> T:
        """Await a store read (an asyncio one, or `call`'s thread), answered by ``due`` (loop
        time; default: within the online timeout from now) or `StoreUnavailable`.

        The read runs as a task of its own that is cancelled, not waited for, at ``due``: the
        answer's deadline does not rest on the client honouring the cancellation. On Python
        3.11 redis-py's asyncio client sends each command inside ``asyncio.wait_for``, which
        swallows a cancellation that arrives as the send completes (fixed in 3.12). A read
        cancelled then went on to the client's socket timeout and its retry: a queued request
        got its 503 after two or three timeouts instead of one (tests/service/test_failures.py
        and tests/service/test_store_access.py). A read left behind ends by its client's own
        timeouts; its outcome is dropped."""
        loop = asyncio.get_running_loop()
        left = self.timeout_s if due is None else due - loop.time()
        if left <= 0:  # queued past the deadline behind a hung read: no read to start
            if inspect.iscoroutine(read):
                read.close()
            else:
                _abandon(asyncio.ensure_future(read))
            raise self._late()
        task = asyncio.ensure_future(read)
        try:
            await asyncio.wait((task,), timeout=left)
        except asyncio.CancelledError:  # the request itself is cancelled (shutdown)
            _abandon(task)
            raise
        if not task.done():
            _abandon(task)
            raise self._late()
        return task.result()

    def _late(self) -> StoreUnavailable:
        return StoreUnavailable(f"online feature store did not answer within {self.timeout_s:g} s")

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        reads = self.store.online_async
        if reads is not None:
            await reads.aclose()
        self.store.close()


def _abandon(task: asyncio.Future[T]) -> None:
    """Cancel ``task`` and leave it: its outcome, whenever it comes, is retrieved and dropped
    (no "exception was never retrieved" in the log)."""
    task.cancel()
    task.add_done_callback(_drop_outcome)


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
