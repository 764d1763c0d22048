"""A lean asyncio client for Triton's HTTP inference protocol, for the online request path.

KServe v2 over HTTP/1.1 with Triton's binary tensor extension: the request is a small JSON
header followed by the raw tensor bytes, and so is the answer. Connections are kept alive and
pooled on the event loop. ``tritonclient``'s aio clients do the same wire work with several
times the Python per call (aiohttp's machinery, or gRPC's protobuf messages and its own
threads); for a one-flight prediction that client cost was the largest single stage.

Only what the online service needs: ``infer`` with tensors in and one tensor out, model
readiness, and server liveness. Failures raise `TritonHttpError`; a call cancelled by its
caller's deadline closes its connection (its state is unknown) instead of pooling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

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


class _Connection:
    """One keep-alive HTTP/1.1 connection: one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False  # has answered before: may have been closed by the server since

    async def exchange(self, head: bytes, body: bytes) -> _Answer:
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
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
        if headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._chunked()
        else:
            content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.used = True
        return _Answer(status, headers, content)

    async def _chunked(self) -> bytes:
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readuntil(b"\r\n")  # no trailers from Triton: the final CRLF
        return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


class TritonHttpClient:
    """Pooled keep-alive connections to one Triton HTTP endpoint (``host:port``)."""

    def __init__(self, url: str, *, max_connections: int = 16, connect_timeout_s: float = 5.0):
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Triton HTTP address {url!r} is not host:port")
        self.url = f"{host}:{port}"
        self._host, self._port = host, int(port)
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

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
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                connection.close()
                if not connection.used:
                    raise TritonHttpError(f"connection lost: {exc}") from exc
                # A kept-alive connection the server closed while idle: once more, afresh.
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
            if not connection.writer.is_closing() and not connection.reader.at_eof():
                return connection
            connection.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, limit=_HEAD_LIMIT),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise TritonHttpError(f"cannot connect to {self.url}: {exc or 'timed out'}") from exc
        return _Connection(reader, writer)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()


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
