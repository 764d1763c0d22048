"""A measurement prototype, not a product path: the online service split into an HTTP front and
a scoring process, to learn whether spreading the service over both cores can reach issue 17's
floor share (`online_load.py --service service-split`).

The front is a raw ASGI app under uvicorn (uvloop, httptools, as ``serve``): it reads each
prediction request's body and hands it, with its headers and request id, to the scoring
process over one Unix socket (a length-prefixed frame), then answers with the bytes that come
back. The scoring process runs the service's own runtime (`ServiceRuntime`: store, MDT,
coalescing, Triton, the prediction log) and answers each frame with
`prediction_requests.answer_predictions`, the function both HTTP paths of the service call, so
its requests still coalesce into batches there. Only the happy path is built: a refused
request is answered 500 with the error's text; no metrics endpoint, reload, or restart.

    python benchmarks/split_service_prototype.py front --port 8000   # FTI_* settings as serve
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from _harness import use_repo_packages

use_repo_packages()

from inference_pipeline.service.app import (  # noqa: E402
    _GIL_SWITCH_INTERVAL_S,
    _prediction_headers,
    request_id_for,
)
from inference_pipeline.service.prediction_requests import PREDICTIONS_PATH  # noqa: E402

# request: id, body length, meta length; meta is "content-type\0test-traffic\0request-id"
_REQUEST = struct.Struct("!III")
# answer: id, HTTP status, body length
_ANSWER = struct.Struct("!IHI")


def _request_length(fields: tuple[int, ...]) -> int:
    return fields[1] + fields[2]


def _answer_length(fields: tuple[int, ...]) -> int:
    return fields[2]


_METRICS = b"metrics"  # the meta of a request for the scoring process's Prometheus text


class Frames(asyncio.Protocol):
    """Length-prefixed frames over a stream socket; ``on_frame(header, payload)`` per frame."""

    def __init__(
        self,
        header: struct.Struct,
        length: Callable[[tuple[int, ...]], int],
        on_frame: Any,
    ) -> None:
        self.header, self.length, self.on_frame = header, length, on_frame
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        size = self.header.size
        start = 0
        while len(buffer) - start >= size:
            fields = self.header.unpack_from(buffer, start)
            end = start + size + self.length(fields)
            if len(buffer) < end:
                break
            self.on_frame(fields, bytes(buffer[start + size : end]))
            start = end
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


# -- the scoring process ---------------------------------------------------------------------


async def score(socket_path: str) -> None:
    from prometheus_client import generate_latest

    from inference_pipeline.service.app import _freeze_startup_objects
    from inference_pipeline.service.metrics import ServiceMetrics
    from inference_pipeline.service.prediction_requests import answer_predictions
    from inference_pipeline.service.runtime import ServiceRuntime
    from inference_pipeline.settings import InferenceSettings

    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)  # as create_app
    runtime = ServiceRuntime(InferenceSettings(), ServiceMetrics())
    await runtime.start()
    _freeze_startup_objects()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    running: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references

    def connection() -> Frames:
        protocol: Frames

        def on_frame(fields: tuple[int, int, int], payload: bytes) -> None:
            number, body_len, _ = fields
            task = loop.create_task(one(protocol, number, payload[:body_len], payload[body_len:]))
            running.add(task)
            task.add_done_callback(running.discard)

        def front_gone(_: asyncio.Future[Any]) -> None:
            if not done.done():
                done.set_result(None)

        protocol = Frames(_REQUEST, _request_length, on_frame)
        protocol.lost.add_done_callback(front_gone)
        return protocol

    async def one(protocol: Frames, number: int, body: bytes, meta: bytes) -> None:
        assert protocol.transport is not None
        if meta == _METRICS:
            text = generate_latest(runtime.metrics.registry)
            protocol.transport.write(_ANSWER.pack(number, 200, len(text)) + text)
            return
        content_type, test_traffic, request_id = meta.decode("latin-1").split("\0")
        try:
            content = await answer_predictions(
                runtime, None, content_type or None, body, request_id, test_traffic or None
            )
            status = 200
        except Exception as exc:  # the prototype answers every refusal alike
            status, content = 500, repr(exc).encode()
        protocol.transport.write(_ANSWER.pack(number, status, len(content)) + content)

    server = await loop.create_unix_server(connection, socket_path)
    print("ready", runtime.models.champion.lead_minutes, flush=True)
    try:
        await done  # the front went away
    finally:
        server.close()
        await runtime.close()


# -- the HTTP front --------------------------------------------------------------------------


class Front:
    """The ASGI app: ``/readyz``, and ``POST /v1/predictions`` handed to the scoring process."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.next_id = 0
        self.link: Frames | None = None
        self.scorer: subprocess.Popen[bytes] | None = None
        self.ready = b"{}"

    async def start(self) -> None:
        folder = tempfile.mkdtemp(prefix="split_")
        socket_path = os.path.join(folder, "scorer.sock")
        self.scorer = subprocess.Popen(
            [sys.executable, __file__, "score", "--socket", socket_path], stdout=subprocess.PIPE
        )
        assert self.scorer.stdout is not None
        line = b"-"
        while line and not line.startswith(b"ready "):
            line = await asyncio.to_thread(self.scorer.stdout.readline)
        if not line:
            raise RuntimeError("the scoring process did not start")
        self.ready = b'{"status":"ok","lead_minutes":%d}' % int(line.split()[1])
        loop = asyncio.get_running_loop()
        _, self.link = await loop.create_unix_connection(
            lambda: Frames(_ANSWER, _answer_length, self._answered), socket_path
        )

    def _answered(self, fields: tuple[int, int, int], content: bytes) -> None:
        future = self.pending.pop(fields[0], None)
        if future is not None and not future.done():
            future.set_result((fields[1], content))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] == PREDICTIONS_PATH and scope["method"] == "POST":
            await self._predict(scope, receive, send)
        elif scope["path"] == "/metrics":
            status, text = await self._ask(b"", _METRICS)
            await _answer(send, status, text)
        elif scope["path"] in ("/readyz", "/healthz"):
            await _answer(send, 200 if self.link is not None else 503, self.ready)
        else:
            await _answer(send, 404, b"{}")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.link is not None and self.link.transport is not None:
                    self.link.transport.close()
                if self.scorer is not None:
                    await asyncio.to_thread(self.scorer.wait, 30)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _predict(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # The service's own header reading (the API key is not handed on: happy path only).
        _, content_type, given_id, test_traffic = _prediction_headers(scope["headers"])
        request_id = request_id_for(given_id)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        meta = f"{content_type or ''}\0{test_traffic or ''}\0{request_id}".encode("latin-1")
        status, content = await self._ask(body, meta)
        await _answer(send, status, content, request_id)

    def _ask(self, body: bytes, meta: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self.next_id = number = (self.next_id + 1) & 0xFFFFFFFF
        future = asyncio.get_running_loop().create_future()
        self.pending[number] = future
        assert self.link is not None and self.link.transport is not None
        self.link.transport.write(_REQUEST.pack(number, len(body), len(meta)) + body + meta)
        return future


async def _answer(send: Any, status: int, content: bytes, request_id: str = "") -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["front", "score"])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--socket")
    args = parser.parse_args()
    if args.role == "score":
        import uvloop

        uvloop.run(score(args.socket))
        return
    import uvicorn

    uvicorn.run(Front(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
