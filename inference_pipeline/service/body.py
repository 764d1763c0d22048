"""Reading request bodies within a deadline (``FTI_BODY_TIMEOUT_S``).

Neither uvicorn nor Starlette bounds the time a body takes to arrive: a client that declares
``Content-Length: 1000000`` and sends ten bytes holds a connection and a request task for as
long as it likes. A body not complete within the deadline is answered 408 (`ApiError`, with
``Connection: close``: the rest of the body will never be read) by whichever path reads it,
the prediction fast path (`BodyDeadlines.read`) or FastAPI's (`BodyDeadlines.bounded`).

One timer serves every read in progress: a timer per request (``asyncio.timeout``) cost about
10 µs each on a loaded host, several times the whole body read of a one-flight prediction.
A read registers its task and deadline in a dict; the timer fires at the earliest deadline,
cancels the reads past theirs, and is armed again only while reads remain, so under steady
traffic it fires about once per timeout (a few µs), never per request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive

from inference_pipeline.service.errors import ApiError

_Task = asyncio.Task[Any]


class BodyDeadlines:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._reading: dict[_Task, float] = {}  # task -> loop time its body is due
        self._expired: set[_Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None when the client disconnected first; reading stops at the
        first chunk past ``limit`` (the caller refuses it), so a huge body is never held."""
        task = self._watch(None)
        try:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                if size > limit or not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise self.timed_out() from None
        finally:
            self._forget(task)

    def bounded(self, receive: Receive) -> Receive:
        """``receive`` whose waits for the body count against one deadline per request (set
        at the first wait); once the body is complete, messages pass through unbounded (a
        framework may wait for ``http.disconnect`` for the whole response)."""
        due: float | None = None
        complete = False

        async def receive_in_time() -> Message:
            nonlocal due, complete
            if complete:
                return await receive()
            task = self._watch(due)
            due = self._reading[task]
            try:
                message = await receive()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise
                task.uncancel()
                raise self.timed_out() from None
            finally:
                self._forget(task)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return receive_in_time

    def timed_out(self) -> ApiError:
        return ApiError(
            408,
            "body_timeout",
            f"request body not received within {self.timeout_s:g} s (FTI_BODY_TIMEOUT_S); "
            "send the whole body at once, with a Content-Length that matches it",
            headers={"Connection": "close"},
        )

    # -- the one timer ----------------------------------------------------------------------

    def _watch(self, due: float | None) -> _Task:
        task = asyncio.current_task()
        assert task is not None  # called from a request's coroutine
        loop = task.get_loop()
        deadline = loop.time() + self.timeout_s if due is None else due
        self._reading[task] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        return task

    def _forget(self, task: _Task) -> None:
        self._reading.pop(task, None)
        self._expired.discard(task)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the reads past their deadline; arm the timer for the next one due."""
        self._timer = None
        now, next_due = loop.time(), None
        for task, deadline in list(self._reading.items()):
            if deadline <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
            elif next_due is None or deadline < next_due:
                next_due = deadline
        if next_due is not None:
            self._timer = loop.call_at(next_due, self._expire, loop)
