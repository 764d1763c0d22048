"""Where the stream consumer reads events from: a Protocol any broker's client can fulfil.

The consumer needs four things of a source, all of which a Kafka consumer has too (a poll, a
commit of offsets after processing, a close, a name): `fetch` a micro-batch, `ack` it once
both stores hold it (at-least-once delivery: anything fetched and not acked comes again after a
crash), and `close`. Redis Streams is the production source (`redis_streams`); the embedded
default reads a replay in this process (`ReplaySource`), through the same consumer code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from feature_pipeline.stream.replay import Pacer


class Message(NamedTuple):
    """One message as the broker delivered it; ``id`` is what `ack` takes back. (A named
    tuple: a micro-batch makes thousands, and a frozen dataclass costs several times more.)"""

    id: str
    payload: bytes


@runtime_checkable
class EventSource(Protocol):
    @property
    def name(self) -> str:
        """Where the events come from, for logs and summaries."""
        ...

    def fetch(self, max_messages: int, wait_s: float) -> list[Message]:
        """Up to ``max_messages`` messages not yet acknowledged, waiting at most ``wait_s``
        for the first; messages delivered earlier and never acknowledged (this consumer's
        before a restart, or a dead member's) come first."""
        ...

    def ack(self, ids: Sequence[str]) -> None:
        """The messages are processed and stored: never deliver them again."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when no message will ever come again (a finite replay); a broker: never."""
        ...

    def close(self) -> None: ...


class ReplaySource:
    """The embedded default: a paced replay read in-process (nothing to acknowledge to)."""

    def __init__(self, pacer: Pacer, name: str = "replay") -> None:
        self._pacer = pacer
        self._name = name
        self.acked = 0

    @property
    def name(self) -> str:
        return self._name

    def fetch(self, max_messages: int, wait_s: float) -> list[Message]:
        deadline = time.monotonic() + wait_s
        while True:
            start = self._pacer.released
            due = self._pacer.due(max_messages)
            if due or self._pacer.done:
                return [Message(str(start + i), m.payload) for i, m in enumerate(due)]
            pause = min(self._pacer.wait_s(), deadline - time.monotonic())
            if pause <= 0:
                return []
            time.sleep(pause)

    def ack(self, ids: Sequence[str]) -> None:
        self.acked += len(ids)

    @property
    def exhausted(self) -> bool:
        return self._pacer.done

    def close(self) -> None:
        return None
