"""The Redis Streams sink: one ``XADD`` per answered batch, read by the log writer through a
consumer group; the broker the streaming feature pipeline already uses (docs/streaming.md), so a
deployment with several service replicas on several hosts needs no shared volume.

Durability is the broker's: run Redis with ``appendonly yes`` (compose does); with
``appendfsync everysec`` a crash of the broker loses at most the last second of appended
records. The writer reads its own pending entries first after a restart (``XREADGROUP ... 0``:
fetched before, maybe committed, so flagged ``replayed``), then new ones (``>``), and once their
rows are committed acknowledges and deletes them (``XACK`` + ``XDEL``), which keeps the stream
as short as the writer's backlog. One writer (consumer ``log-writer``) per stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from inference_pipeline.prediction_sink.protocol import LogRecord, SinkUnavailable
from shared.feature_store.online_redis import redacted

FIELD = b"r"
GROUP = "log-writer"
CONSUMER = "log-writer"
_PROBE_TIMEOUT_S = 2.0


def _client(url: str, timeout_s: float | None) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=5.0, socket_timeout=timeout_s, decode_responses=False
    )


class RedisStreamSink:
    """The service's side: ``append`` is one ``XADD`` (no trimming: the writer deletes what it
    committed)."""

    def __init__(self, url: str, stream: str, *, timeout_s: float) -> None:
        self.url, self.stream = redacted(url), stream
        self._client = _client(url, timeout_s)

    def append(self, record: bytes) -> None:
        try:
            self._client.xadd(self.stream, {FIELD: record})
        except redis.RedisError as exc:
            raise SinkUnavailable(
                f"prediction log stream {self.stream} at {self.url}: {exc}"
            ) from exc

    def tick(self) -> None:
        return None

    def close(self) -> None:
        self._client.close()


class RedisStreamSource:
    """The log writer's side (see the module docstring)."""

    def __init__(self, url: str, stream: str) -> None:
        self.url, self.stream = redacted(url), stream
        self._client = _client(url, None)
        # The backlog is read by metrics scrapes, from their own threads: bounded, so a broker
        # that stopped answering cannot pile up stuck scrapes.
        self._probe = _client(url, _PROBE_TIMEOUT_S)
        self._pending_after: bytes | None = b"0"  # reading own pending entries; None: done
        self._call(self._create_group)

    @property
    def name(self) -> str:
        return f"stream {self.stream} at {self.url}"

    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _call(self, action: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return action(*args, **kwargs)
        except redis.RedisError as exc:
            raise SinkUnavailable(f"prediction log {self.name}: {exc}") from exc

    def fetch(self, max_records: int, wait_s: float) -> list[LogRecord]:
        if self._pending_after is not None:
            # After a restart: this consumer's entries fetched before and never acknowledged,
            # page by page (they stay pending until acknowledged, so each read starts after
            # the last one returned).
            reply = self._read(self._pending_after, max_records, None)
            if reply:
                self._pending_after = reply[-1][0]
                return [LogRecord(i.decode(), f.get(FIELD, b""), True) for i, f in reply]
            self._pending_after = None
        reply = self._read(b">", max_records, max(1, int(wait_s * 1000)))
        return [LogRecord(i.decode(), f.get(FIELD, b""), False) for i, f in reply]

    def _read(self, start: bytes, count: int, block_ms: int | None) -> list[Any]:
        reply = self._call(
            self._client.xreadgroup,
            GROUP,
            CONSUMER,
            {self.stream: start},
            count=count,
            block=block_ms,
        )
        if not reply:
            return []
        return [(entry_id, fields or {}) for entry_id, fields in reply[0][1]]

    # Acknowledged entries are deleted: the stream's length is what is not acknowledged.
    backlog_unit = "records"

    def backlog(self) -> int:
        return int(self._call(self._probe.xlen, self.stream))

    def ack(self, records: Sequence[LogRecord]) -> None:
        ids = [record.position for record in records]
        if not ids:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, *ids)
        pipe.xdel(self.stream, *ids)
        self._call(pipe.execute)

    def close(self) -> None:
        self._client.close()
        self._probe.close()
