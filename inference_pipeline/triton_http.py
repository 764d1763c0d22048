"""A lean asyncio client for Triton's HTTP inference protocol, for the online request path.

KServe v2 over HTTP/1.1 with Triton's binary tensor extension: the request is a small JSON
header followed by the raw tensor bytes, and so is the answer. Connections are kept alive and
pooled on the event loop. ``tritonclient``'s aio clients do the same wire work with several
times the Python per call (aiohttp's machinery, or gRPC's protobuf messages and its own
threads); for a one-flight prediction that client cost was the largest single stage.

Only what the online service needs: ``infer`` with tensors in and one tensor out, model
readiness, and server liveness. Failures raise `TritonHttpError`; a call cancelled by its
caller's deadline closes its connection (its state is unknown) instead of pooling it. A request
is sent again at most once, on a fresh connection, and only when a kept-alive connection was
found closed before any byte of its answer came back (the server's idle timeout racing our
reuse); a server that hangs up mid-answer is an error, never a silent second request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

_DATATYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}
_NUMPY_TYPES = {name: dtype for dtype, name in _DATATYPES.items()}
_HEAD_LIMIT = 64 * 1024  # status line + headers; Triton's are a few hundred bytes


class TritonHttpError(Exception):
    """Triton could not be reached, broke the protocol, or refused the request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, its answer parsed as the
    bytes arrive. A protocol rather than asyncio's stream reader and writer, whose per-read
    waiters cost about a fifth of a one-flight Triton call's latency on the event loop."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.used = False  # has answered before: may have been closed by the server since
        self.closed = False
        self.answering = False  # a byte of the current answer has arrived
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str]] | None = None  # of the answer being read
        self._waiter: asyncio.Future[_Answer] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not registered as an asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    async def exchange(self, head: bytes, body: bytes) -> _Answer:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed by the server")
        self._waiter = asyncio.get_running_loop().create_future()
        self.answering = False
        self.transport.write(head + body)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.answering = True
        if self._waiter is None or self._waiter.done():
            self._fail(TritonHttpError("bytes from the server with no request in flight"))
            return
        try:
            answer = self._answer()
        except TritonHttpError as exc:
            self._fail(exc)
            return
        if answer is not None:
            self.used = True
            self._waiter.set_result(answer)

    def _answer(self) -> _Answer | None:
        """The answer, once all of it is in the buffer."""
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _HEAD_LIMIT:
                    raise TritonHttpError(f"answer headers longer than {_HEAD_LIMIT} bytes")
                return None
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        status, headers = self._head
        if headers.get("transfer-encoding", "").lower() == "chunked":
            found = _dechunk(self._buffer)
            if found is None:
                return None
            content, used = found
        else:
            used = _content_length(headers)
            if len(self._buffer) < used:
                return None
            content = bytes(self._buffer[:used])
        del self._buffer[:used]
        self._head = None
        return _Answer(status, headers, content)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise TritonHttpError(f"not an HTTP answer: {lines[0][:80]!r}") from exc
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _content_length(headers: dict[str, str]) -> int:
    value = headers.get("content-length", "0")
    if not (value.isascii() and value.isdigit()):
        raise TritonHttpError(f"bad Content-Length {value[:20]!r} in the answer")
    return int(value)


def _dechunk(buffer: bytearray) -> tuple[bytes, int] | None:
    """(content, bytes used) of a complete chunked body at the start of ``buffer``; None
    while part of it has yet to arrive."""
    parts: list[bytes] = []
    at = 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        except ValueError as exc:
            raise TritonHttpError(f"bad chunk size {bytes(buffer[at:line_end])[:20]!r}") from exc
        start = line_end + 2
        if size == 0:  # no trailers from Triton: the final CRLF
            return (b"".join(parts), start + 2) if len(buffer) >= start + 2 else None
        if len(buffer) < start + size + 2:
            return None
        parts.append(bytes(buffer[start : start + size]))
        at = start + size + 2


class TritonHttpClient:
    """Pooled keep-alive connections to one Triton HTTP endpoint (``host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 16,
        connect_timeout_s: float = 5.0,
        on_retry: Callable[[], None] = lambda: None,
    ):
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Triton HTTP address {url!r} is not host:port")
        self.url = f"{host}:{port}"
        self._host, self._port = host, int(port)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False
        self._on_retry = on_retry  # told of each request sent a second time

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[tuple[str, np.ndarray]],
        output: str,
    ) -> np.ndarray:
        """``output`` of ``model`` ``version`` ("" for the policy's latest) for the named input
        tensors (batch first)."""
        tensors = [np.ascontiguousarray(array) for _, array in inputs]
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": list(array.shape),
                        "datatype": _datatype(name, array),
                        "parameters": {"binary_data_size": array.nbytes},
                    }
                    for (name, _), array in zip(inputs, tensors, strict=True)
                ],
                "outputs": [{"name": output, "parameters": {"binary_data": True}}],
            },
            separators=(",", ":"),
        ).encode()
        body = b"".join([header, *(array.tobytes() for array in tensors)])
        path = f"{_model_path(model, version)}/infer"
        extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
        answer = await self._request("POST", path, body, extra)
        if answer.status != 200:
            raise TritonHttpError(_error_text(answer), answer.status)
        return _output(answer, output)

    async def model_ready(self, model: str, version: str) -> bool:
        answer = await self._request("GET", f"{_model_path(model, version)}/ready")
        return answer.status == 200

    async def server_live(self) -> bool:
        answer = await self._request("GET", "/v2/health/live")
        return answer.status == 200

    async def _request(self, method: str, path: str, body: bytes = b"", extra: str = "") -> _Answer:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.url}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        async with self._slots:
            connection = await self._acquire()
            try:
                answer = await connection.exchange(head, body)
            except ConnectionError as exc:
                connection.close()
                if not connection.used or connection.answering:
                    raise TritonHttpError(f"connection lost: {exc}") from exc
                # A kept-alive connection the server closed while idle, before any byte of
                # the answer: once more (and only once), afresh.
                self._on_retry()
                connection = await self._connect()
                try:
                    answer = await connection.exchange(head, body)
                except BaseException:
                    connection.close()
                    raise
            except BaseException:  # cancelled by a deadline, or a protocol error
                connection.close()
                raise
            if answer.headers.get("connection", "").lower() == "close" or self._closed:
                connection.close()
            else:
                self._idle.append(connection)
            return answer

    async def _acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(_Connection, self._host, self._port)
        except (OSError, TimeoutError) as exc:
            raise TritonHttpError(f"cannot connect to {self.url}: {exc or 'timed out'}") from exc
        return connection

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        await asyncio.sleep(0)  # let the transports finish closing


def _model_path(model: str, version: str) -> str:
    """The model's URL path: one ``version``, or ("") the one Triton's version policy picks."""
    return f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"


def _datatype(name: str, array: np.ndarray) -> str:
    try:
        return _DATATYPES[array.dtype]
    except KeyError:
        raise TritonHttpError(f"input {name}: dtype {array.dtype} is not supported") from None


def _error_text(answer: _Answer) -> str:
    try:
        return str(json.loads(answer.body)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {answer.status}: {answer.body[:200].decode('utf-8', 'replace')}"


def _output(answer: _Answer, name: str) -> np.ndarray:
    """The named output tensor of an inference answer (binary, or JSON data as a fallback)."""
    size = int(answer.headers.get("inference-header-content-length", len(answer.body)))
    try:
        header = json.loads(answer.body[:size])
        offset = size
        for tensor in header["outputs"]:
            dtype = _NUMPY_TYPES[tensor["datatype"]]
            length = tensor.get("parameters", {}).get("binary_data_size")
            if tensor["name"] == name:
                if length is None:
                    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
                data = np.frombuffer(answer.body, dtype, length // dtype.itemsize, offset)
                return data.reshape(tensor["shape"])
            offset += length or 0
    except (ValueError, KeyError, TypeError) as exc:
        raise TritonHttpError(f"unreadable inference answer: {exc}") from exc
    raise TritonHttpError(f"inference answer has no output {name!r}")
