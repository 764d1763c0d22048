"""Request hygiene against the real uvicorn process: a body that never completes is answered
408 within ``FTI_BODY_TIMEOUT_S`` and its connection closed (it held a connection for good
before), whether the prediction fast path or FastAPI reads it; a slow but complete body is
still served."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.service.conftest import (
    API_KEY,
    RegisteredModel,
    ServiceProcess,
    SharedTriton,
    start_service,
)
from tests.service.test_online_service import UA_1545

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def service(
    registered_model: RegisteredModel,
    triton: SharedTriton,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    work = tmp_path_factory.mktemp("hygiene")
    process = start_service(
        registered_model.root,
        work / "service.log",
        FTI_API_KEY=API_KEY,
        FTI_ADMIN_API_KEY="admin-key-0123456789abcdef",
        FTI_TRITON_MODE="external",
        FTI_TRITON_URL=triton.url,
        FTI_TRITON_GRPC_URL=str(triton.grpc_url),
        FTI_TRITON_MODEL_REPOSITORY=str(triton.repository),
        FTI_TRITON_RUNTIME_DIR=str(work / "serving"),
        FTI_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        FTI_PREDICTION_LOG="false",
        FTI_ALIAS_POLL_S="0",
    )
    try:
        yield process
    finally:
        process.stop()


def _connect(service: ServiceProcess) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {API_KEY}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _answer(sock: socket.socket) -> tuple[bytes, float, bool]:
    """(the whole answer, seconds until its first byte, whether the server then closed)."""
    began = time.monotonic()
    data = sock.recv(65536)
    first = time.monotonic() - began
    closed = False
    while True:
        more = sock.recv(65536)
        if not more:
            closed = True
            break
        data += more
    return data, first, closed


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("/v1/predictions", b'{"flights": [{"fl'),  # the prediction fast path
        ("/v1/predictions", b""),  # headers only, no body at all
        ("/admin/reload", b'{"alias'),  # a FastAPI route
    ],
)
def test_a_body_that_never_completes_gets_408_and_the_connection_closes(
    service: ServiceProcess, path: str, sent: bytes
) -> None:
    with _connect(service) as sock:
        extra = "X-API-Key: admin-key-0123456789abcdef\r\n" if path.startswith("/admin") else ""
        head = _head(path, 1_000_000, extra)
        if extra:  # the admin key instead of the prediction key
            head = head.replace(f"X-API-Key: {API_KEY}\r\n".encode(), b"")
        sock.sendall(head + sent)
        data, first, closed = _answer(sock)
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", data[:300]
    assert b"connection: close" in rest.lower()
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "body_timeout" and "FTI_BODY_TIMEOUT_S" in body["message"]
    assert BODY_TIMEOUT_S * 0.9 <= first < BODY_TIMEOUT_S + 2.0, first
    assert closed


def test_a_slow_but_complete_body_is_served(service: ServiceProcess) -> None:
    body = json.dumps({"flights": [UA_1545]}).encode()
    with _connect(service) as sock:
        sock.sendall(_head("/v1/predictions", len(body), "Connection: close\r\n"))
        for start in range(0, len(body), len(body) // 3 + 1):
            time.sleep(BODY_TIMEOUT_S / 5)
            sock.sendall(body[start : start + len(body) // 3 + 1])
        data, _, _ = _answer(sock)
    assert data.startswith(b"HTTP/1.1 200 OK"), data[:300]
    answer = json.loads(data.partition(b"\r\n\r\n")[2])
    assert answer["predictions"][0]["flight_id"] == "20130310-UA1545-EWR-0830"


def test_stalled_bodies_cost_no_request_after_them(service: ServiceProcess) -> None:
    """Ten stalled connections at once: each gets its 408, and a prediction sent meanwhile on
    another connection is answered at once."""
    stalled = [_connect(service) for _ in range(10)]
    try:
        for sock in stalled:
            sock.sendall(_head("/v1/predictions", 1_000_000) + b"{")
        body = json.dumps({"flights": [UA_1545]}).encode()
        with _connect(service) as sock:
            began = time.monotonic()
            sock.sendall(_head("/v1/predictions", len(body), "Connection: close\r\n") + body)
            data, _, _ = _answer(sock)
            assert data.startswith(b"HTTP/1.1 200 OK") and time.monotonic() - began < 1.0
        for sock in stalled:
            data, _, closed = _answer(sock)
            assert data.startswith(b"HTTP/1.1 408") and closed
    finally:
        for sock in stalled:
            sock.close()
