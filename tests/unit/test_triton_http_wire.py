"""The lean Triton HTTP client's handling of the wire, against a small real HTTP server on
loopback that answers the way a server may: in pieces, chunked, closing a kept-alive connection
while it is idle, or with garbage. (Answers of the real Triton: tests/integration.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import uvloop

from inference_pipeline.triton_http import TritonHttpClient, TritonHttpError

pytestmark = pytest.mark.unit
Run = Callable[[Awaitable[int]], int]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Each test on asyncio's own loop and on uvloop (the service's)."""
    return asyncio.run if request.param == "asyncio" else uvloop.run  # type: ignore[return-value]


Answer = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


def inference_answer(probabilities: list[float]) -> tuple[bytes, bytes]:
    """(headers, body) of a binary KServe inference answer with one FP32 output."""
    data = np.asarray(probabilities, dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "outputs": [
                {
                    "name": "PROBABILITY",
                    "datatype": "FP32",
                    "shape": [len(probabilities), 1],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    body = header + data
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def with_server(
    answer: Answer,
    calls: Callable[[TritonHttpClient], Awaitable[None]],
    on_retry: Callable[[], None] = lambda: None,
) -> int:
    """Serve ``answer(writer, n)`` for the n-th request of each connection while ``calls``
    runs; returns how many connections the client opened."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            for n in range(1_000):
                await read_request(reader)
                await answer(writer, n)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = TritonHttpClient(f"127.0.0.1:{port}", connect_timeout_s=2.0, on_retry=on_retry)
    try:
        await calls(client)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    return connections


def one_row() -> list[tuple[str, np.ndarray]]:
    return [("NUMERIC", np.zeros((1, 3), np.float32))]


def test_an_answer_arriving_in_pieces_is_read_whole(run: Run) -> None:
    head, body = inference_answer([0.25, 0.75])

    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        raw = head + body
        for piece in (raw[:7], raw[7 : len(head) + 3], raw[len(head) + 3 : -2], raw[-2:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)

    async def calls(client: TritonHttpClient) -> None:
        for _ in range(3):  # kept alive: the pieces of one answer never leak into the next
            got = await client.infer("m", "1", one_row(), "PROBABILITY")
            np.testing.assert_allclose(got.reshape(-1), [0.25, 0.75])

    assert run(with_server(answer, calls)) == 1


def test_a_chunked_answer_is_joined(run: Run) -> None:
    _, body = inference_answer([0.5])
    header_length = body.index(b"}]}") + 3

    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            + f"Inference-Header-Content-Length: {header_length}\r\n\r\n".encode()
        )
        for part in (body[:5], body[5:]):
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")

    async def calls(client: TritonHttpClient) -> None:
        got = await client.infer("m", "1", one_row(), "PROBABILITY")
        np.testing.assert_allclose(got.reshape(-1), [0.5])
        assert await client.model_ready("m", "1") is True  # the next answer, read afresh

    run(with_server(answer, calls))


def test_a_kept_alive_connection_closed_while_idle_is_replaced_silently(run: Run) -> None:
    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()  # after every answer, as a server's idle timeout would

    async def calls(client: TritonHttpClient) -> None:
        for _ in range(3):
            assert await client.model_ready("m", "1") is True
            await asyncio.sleep(0.05)

    assert run(with_server(answer, calls)) == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * 70_000, "headers longer than"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "bad Content-Length"),
    ],
)
def test_garbage_from_the_server_is_a_clear_error(run: Run, raw: bytes, message: str) -> None:
    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(raw)
        await writer.drain()

    async def calls(client: TritonHttpClient) -> None:
        with pytest.raises(TritonHttpError, match=message):
            await client.model_ready("m", "1")

    run(with_server(answer, calls))


def test_a_server_that_hangs_up_mid_answer_is_an_error_not_a_hang(run: Run) -> None:
    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async def calls(client: TritonHttpClient) -> None:
        with pytest.raises(TritonHttpError, match="connection lost"):
            await asyncio.wait_for(client.model_ready("m", "1"), 5.0)

    run(with_server(answer, calls))


def test_a_reused_connection_closed_before_any_answer_is_retried_once_and_counted(
    run: Run,
) -> None:
    """The idle-timeout race: the server closes a kept-alive connection as our next request
    goes out, before a byte of its answer. Sent once more on a fresh connection, counted."""
    retries: list[int] = []

    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        else:
            writer.close()  # the second request on this connection: no answer at all

    async def calls(client: TritonHttpClient) -> None:
        assert await client.model_ready("m", "1") is True
        assert await client.model_ready("m", "1") is True  # retried on a fresh connection
        assert len(retries) == 1

    assert run(with_server(answer, calls, on_retry=lambda: retries.append(1))) == 2


def test_a_reused_connection_that_hangs_up_mid_answer_is_not_sent_again(run: Run) -> None:
    """A server that died while answering may have done the work: the request is an error,
    never silently sent a second time."""
    requests: list[int] = []
    retries: list[int] = []
    head, body = inference_answer([0.5])

    async def answer(writer: asyncio.StreamWriter, n: int) -> None:
        requests.append(n)
        if n == 0:
            writer.write(head + body)
        else:
            writer.write((head + body)[: len(head) + 5])  # part of the answer, then gone
            await writer.drain()
            writer.close()
        await writer.drain()

    async def calls(client: TritonHttpClient) -> None:
        await client.infer("m", "1", one_row(), "PROBABILITY")
        with pytest.raises(TritonHttpError, match="connection lost"):
            await asyncio.wait_for(client.infer("m", "1", one_row(), "PROBABILITY"), 5.0)

    assert run(with_server(answer, calls, on_retry=lambda: retries.append(1))) == 1
    assert requests == [0, 1]  # the second request reached the server once
    assert retries == []


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "tritonclient"])
def test_both_service_clients_turn_an_unreachable_triton_into_model_server_unavailable(
    lean: bool,
) -> None:
    """The service's client (`AsyncTritonClient`) with either HTTP client
    (``FTI_TRITON_CLIENT``): a refused connection is the typed 503 error, not a library's."""
    from inference_pipeline.scoring import AsyncTritonClient
    from shared.errors import ModelServerUnavailable
    from shared.transforms import FeatureMatrices

    async def call() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens there now
        client = AsyncTritonClient(f"127.0.0.1:{port}", 2.0, lean=lean)
        matrices = FeatureMatrices(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.int64))
        try:
            with pytest.raises(ModelServerUnavailable, match="Triton at 127.0.0.1"):
                await client.infer("m", "1", matrices)
            with pytest.raises(ModelServerUnavailable):
                await client.model_ready("m", "1")
        finally:
            await client.close()

    asyncio.run(call())
