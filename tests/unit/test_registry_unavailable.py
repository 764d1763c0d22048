"""A tracking server that cannot be reached is RegistryUnavailable, told by the HTTP client's
exception types in MLflow's exception chain (never by matching message text); any other MLflow
error stays what it is."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from mlflow.exceptions import MlflowException

from shared.errors import RegistryUnavailable
from shared.registry import ModelRegistry, RegistrySettings, _unreachable

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _few_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow retries a failed request with exponential back-off for minutes by default.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def _registry(url: str) -> ModelRegistry:
    return ModelRegistry(RegistrySettings(mlflow_tracking_uri=url))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serving(status: int, body: bytes) -> Iterator[str]:
    class Answer(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def failing_server() -> Iterator[str]:
    yield from _serving(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "down"}')


@pytest.fixture
def refusing_server() -> Iterator[str]:
    body = b'{"error_code": "PERMISSION_DENIED", "message": "not yours"}'
    yield from _serving(403, body)


def test_nothing_listening_is_unavailable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(RegistryUnavailable, match="cannot be reached"):
        _registry(url).next_version()


def test_a_server_answering_5xx_until_retries_run_out_is_unavailable(failing_server: str) -> None:
    with pytest.raises(RegistryUnavailable, match="cannot be reached"):
        _registry(failing_server).next_version()


def test_a_server_that_answers_an_error_is_not_an_outage(refusing_server: str) -> None:
    with pytest.raises(MlflowException) as raised:
        _registry(refusing_server).next_version()
    assert not isinstance(raised.value, RegistryUnavailable)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"error_code": "INTERNAL_ERROR", "message": "database is down"}'),
        (504, b"<html>gateway timeout</html>"),  # a proxy's page: MLflow names it by its status
        (429, b'{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}'),
    ],
    ids=["500 from MLflow", "504 from a proxy", "429"],
)
def test_every_answer_mlflow_retries_is_unavailable_once_retries_run_out(
    status: int, body: bytes
) -> None:
    for url in _serving(status, body):
        with pytest.raises(RegistryUnavailable, match="cannot be reached") as raised:
            _registry(url).next_version()
        assert isinstance(raised.value.__cause__, MlflowException)


def test_an_mlflow_error_raised_without_a_server_is_not_an_outage() -> None:
    # INTERNAL_ERROR is also the default code of MLflow's client-side errors.
    assert not _unreachable(MlflowException("no such artifact path"))
