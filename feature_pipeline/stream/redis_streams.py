"""Redis Streams as the departure events' broker: a stream, one consumer group, N members.

Why Redis Streams (rather than NATS JetStream, also on our machines): the online store already
runs on Redis, so production gains no new system to operate, secure and monitor, and the
client is already a dependency. A consumer group gives what the stream needs: members share
the entries (`XREADGROUP >`), each entry stays *pending* on its member until acknowledged
(`XACK`), a restarted member re-reads its own pending entries first (`XREADGROUP 0`), and a
live member claims a dead member's entries once they have been idle long enough (`XPENDING`,
`XCLAIM`). The price: durability is Redis's (AOF with ``appendfsync everysec`` loses at most
a second of appended entries on a crash of the broker; JetStream would fsync each append),
and a stream is held in memory (trimmed with ``MAXLEN``). The events are replayable from
their source, and the batch run rewrites a day's events from the flights' outcomes, which
bounds what such a loss costs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import redis

from feature_pipeline.stream.metrics import GroupBacklog
from feature_pipeline.stream.source import Message
from shared.errors import BrokerUnavailable, ConfigurationError
from shared.feature_store.online_redis import redacted

log = logging.getLogger(__name__)

T = TypeVar("T")
FIELD = b"e"
_ACK_CHUNK = 10_000
# Broker errors that mean "wait and try again" (down, restarting, loading its AOF).
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
# A metrics scrape's wait for the broker, connecting and reading: bounded, so a broker that
# stopped answering cannot pile up stuck scrapes.
_PROBE_TIMEOUT_S = 1.0


def _client(url: str, timeout_s: float, read_timeout_s: float | None = None) -> redis.Redis:
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=read_timeout_s,
            decode_responses=False,
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid broker URL {redacted(url)}: {exc}") from exc


class RedisStreamSource:
    """One member of the stream's consumer group (see the module docstring)."""

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_idle_s: float = 30.0,
        retry_max_s: float = 2.0,
        stop: threading.Event | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = redacted(url)
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._client = _client(url, timeout_s=2.0)
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._retry_max_s = retry_max_s
        self._stop = stop or threading.Event()
        self._on_failure = on_failure or (lambda _: None)  # each failed try (metrics)
        self._own_pending = True  # re-read what this member fetched and never acked, first
        self._next_claim = 0.0
        self._broker_down_since: float | None = None
        self._patiently(self._create_group)

    @property
    def name(self) -> str:
        return f"redis stream {self.stream} at {self.url}, group {self.group} as {self.consumer}"

    @property
    def exhausted(self) -> bool:
        return False

    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _patiently(self, action: Callable[[], T]) -> T:
        """Run ``action``, waiting out a broker that is down or restarting (backing off up to
        ``retry_max_s`` between tries) until it answers or the consumer is stopped."""
        pause = 0.05
        while True:
            try:
                result = action()
            except _TRANSIENT as exc:
                self._on_failure(exc)
                if self._broker_down_since is None:
                    self._broker_down_since = time.monotonic()
                    log.warning("broker %s unavailable (%s); waiting for it", self.url, exc)
                if self._stop.wait(pause):
                    raise BrokerUnavailable(
                        f"broker {self.url} unavailable while stopping: {exc}"
                    ) from exc
                pause = min(pause * 2, self._retry_max_s)
                continue
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._on_failure(exc)
                # The broker came back without the stream: it kept nothing on disk.
                log.error(
                    "stream %s or group %s vanished (a broker restarted without persistence? "
                    "run Redis with appendonly yes); recreating the group",
                    self.stream,
                    self.group,
                )
                self._create_group()
                continue
            if self._broker_down_since is not None:
                log.warning(
                    "broker %s back after %.1f s; resuming",
                    self.url,
                    time.monotonic() - self._broker_down_since,
                )
                self._broker_down_since = None
            return result

    def fetch(self, max_messages: int, wait_s: float) -> list[Message]:
        if self._own_pending:
            mine = self._patiently(lambda: self._read(b"0", max_messages, None))
            if mine:
                return mine
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            claimed = self._patiently(lambda: self._claim(max_messages))
            if claimed:
                return claimed
            self._next_claim = time.monotonic() + self._claim_idle_ms / 2000
        block = max(1, int(wait_s * 1000))
        return self._patiently(lambda: self._read(b">", max_messages, block))

    def _read(self, start: bytes, count: int, block_ms: int | None) -> list[Message]:
        reply: Any = self._client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
        )
        return self._messages(reply[0][1] if reply else [])

    def _claim(self, count: int) -> list[Message]:
        """Other members' entries idle longer than ``claim_idle_s`` (a dead member's) become
        this member's. Not XAUTOCLAIM: it would also take back this member's own entries
        waiting for their offline commit."""
        pending: Any = self._client.xpending_range(
            self.stream, self.group, min="-", max="+", count=count, idle=self._claim_idle_ms
        )
        theirs = [p["message_id"] for p in pending if p["consumer"].decode() != self.consumer]
        if not theirs:
            return []
        entries: Any = self._client.xclaim(
            self.stream, self.group, self.consumer, self._claim_idle_ms, theirs
        )
        claimed = self._messages(entries)
        if claimed:
            log.warning("claimed %d idle entries of another group member", len(claimed))
        return claimed

    def _messages(self, entries: Sequence[Any]) -> list[Message]:
        """Entries as messages; an entry trimmed away meanwhile (no fields) is acked."""
        out, gone = [], []
        for entry_id, fields in entries:
            name = entry_id.decode()
            if fields and FIELD in fields:
                out.append(Message(name, fields[FIELD]))
            elif fields:
                out.append(Message(name, b""))  # no event field: quarantined as unreadable
            else:
                gone.append(name)
        if gone:
            self.ack(gone)
        return out

    def ack(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _ACK_CHUNK):
            self._patiently(
                partial(
                    self._client.xack, self.stream, self.group, *ids[start : start + _ACK_CHUNK]
                )
            )

    def close(self) -> None:
        self._client.close()


class RedisGroupProbe:
    """The consumer group's lag and pending entries, for metrics scrapes: a client of its own
    with short timeouts, so a scrape never waits on the consumer's connection, nor long on a
    broker that does not answer."""

    def __init__(self, url: str, stream: str, group: str) -> None:
        self.url = redacted(url)
        self.stream = stream
        self.group = group
        self._client = _client(url, _PROBE_TIMEOUT_S, read_timeout_s=_PROBE_TIMEOUT_S)

    def backlog(self) -> GroupBacklog:
        """From ``XINFO GROUPS``: ``lag`` (Redis >= 7.0; NaN when it cannot tell, e.g. after
        entries were deleted from the middle of the stream) and ``pending``."""
        try:
            groups: Any = self._client.xinfo_groups(self.stream)
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"broker {self.url}: XINFO GROUPS {self.stream} failed: {exc}"
            ) from exc
        for found in groups:
            if found["name"].decode() == self.group:
                lag = math.nan if found.get("lag") is None else float(found["lag"])
                return GroupBacklog(lag, float(found["pending"]))
        raise BrokerUnavailable(f"broker {self.url}: no group {self.group} on {self.stream} yet")

    def close(self) -> None:
        self._client.close()


class RedisStreamPublisher:
    """Appends events to the stream (the replay's upstream role), trimmed to about ``maxlen``
    entries (None: never trimmed)."""

    def __init__(self, url: str, stream: str, *, maxlen: int | None = None) -> None:
        self.url = redacted(url)
        self.stream = stream
        self._maxlen = maxlen
        self._client = _client(url, timeout_s=2.0)

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        pipe = self._client.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(self.stream, {FIELD: payload}, maxlen=self._maxlen, approximate=True)
        try:
            return [entry.decode() for entry in pipe.execute()]
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"broker {self.url}: append to {self.stream} failed: {exc}"
            ) from exc

    def length(self) -> int:
        return int(self._client.xlen(self.stream))

    def close(self) -> None:
        self._client.close()
