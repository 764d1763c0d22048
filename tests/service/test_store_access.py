"""`StoreAccess`: a store read answers by its deadline, whatever the store's client does with
the cancellation. Against a real redis-server paused with SIGSTOP (connections are accepted,
nothing is answered) and the online store's own asyncio read."""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest
import uvloop

from inference_pipeline.service.store_access import StoreAccess
from shared.errors import StoreUnavailable
from shared.feature_definitions import DEPARTURE_EVENTS
from shared.feature_store.online_redis import RedisOnlineStore
from shared.feature_store.protocol import OnlineRangeLookup
from shared.recent_departures import epoch_us
from tests.service.conftest import RedisServer

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0
T0 = epoch_us(datetime(2013, 12, 31, 14, 0, tzinfo=UTC))
HOUR_US = 3_600_000_000
LGA_BEFORE_T0 = OnlineRangeLookup(DEPARTURE_EVENTS, ("origin",), [("LGA",)], [T0 - HOUR_US], [T0])


def run_on_uvloop(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The service's loop (uvicorn picks uvloop where it is installed)."""
    uvloop.run(test())


@pytest.mark.parametrize("left_s", [-0.001, 0.0, 0.0005, 0.2])
def test_a_paused_redis_read_answers_503_by_its_deadline(
    redis_server: RedisServer, left_s: float
) -> None:
    """A read on a connected client, due now, just past or just ahead (a request queued behind
    a hung read), or later. On Python 3.11 redis-py's asyncio client swallowed a cancellation
    that met its send (``asyncio.wait_for``), and such a read ran on to its socket timeout and
    retry: 2.0 s for each of the first three cases."""
    store = RedisOnlineStore(
        redis_server.url, namespace=f"deadline-{uuid.uuid4().hex[:8]}", timeout_s=TIMEOUT_S
    )
    access = StoreAccess(store, TIMEOUT_S)  # type: ignore[arg-type]  # its online part suffices

    async def read_when_paused() -> None:
        loop = asyncio.get_running_loop()
        await access.awaited(store.read_rows_and_ranges_async([], [LGA_BEFORE_T0]))  # connected
        redis_server.signal(signal.SIGSTOP)
        try:
            began = loop.time()
            with pytest.raises(StoreUnavailable, match="did not answer within 1 s"):
                await access.awaited(
                    store.read_rows_and_ranges_async([], [LGA_BEFORE_T0]), due=began + left_s
                )
            # The margin is for a busy machine; the bug this guards against took 2.0 s.
            assert loop.time() - began < max(left_s, 0.0) + 0.5
        finally:
            redis_server.signal(signal.SIGCONT)
        # The read left behind ends by its client's timeouts; the next read answers at once.
        began = loop.time()
        rows, ranges = await access.awaited(store.read_rows_and_ranges_async([], [LGA_BEFORE_T0]))
        assert (rows, ranges) == ([], [[[]]])  # no lookups; one range, of one key, empty
        assert loop.time() - began < TIMEOUT_S
        await store.aclose()

    try:
        run_on_uvloop(read_when_paused)
    finally:
        store.close()


def test_a_read_due_already_is_not_started() -> None:
    """Queued past its deadline, a request's read is not sent at all: the coroutine is closed
    unstarted and a thread call is cancelled before it runs."""
    store = RedisOnlineStore("redis://127.0.0.1:1/0", namespace="unused", timeout_s=TIMEOUT_S)
    access = StoreAccess(store, TIMEOUT_S)  # type: ignore[arg-type]
    started: list[str] = []

    async def read() -> None:
        started.append("coroutine")

    async def due_reads() -> None:
        loop = asyncio.get_running_loop()
        coroutine = read()
        with pytest.raises(StoreUnavailable):
            await access.awaited(coroutine, due=loop.time())
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # never run
        with pytest.raises(StoreUnavailable):
            await access.call(lambda: started.append("thread"), due=loop.time() - 1)
        await asyncio.sleep(0.1)

    try:
        run_on_uvloop(due_reads)
    finally:
        store.close()
    assert started == []


def test_a_cancelled_request_cancels_its_read() -> None:
    """A request cancelled while its read is in flight (shutdown) takes the read with it."""
    store = RedisOnlineStore("redis://127.0.0.1:1/0", namespace="unused", timeout_s=TIMEOUT_S)
    access = StoreAccess(store, TIMEOUT_S)  # type: ignore[arg-type]
    outcome: list[str] = []

    async def slow_read() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("read cancelled")
            raise

    async def cancel_the_request() -> None:
        request = asyncio.ensure_future(access.awaited(slow_read()))
        await asyncio.sleep(0.05)
        request.cancel()
        began = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0)
        assert time.monotonic() - began < 1.0  # not the read's 10 s

    try:
        run_on_uvloop(cancel_the_request)
    finally:
        store.close()
    assert outcome == ["read cancelled"]
