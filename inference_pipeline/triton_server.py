"""Triton Inference Server, as the inference pipeline sees it: either a managed local subprocess
of the ``tritonserver`` binary from the ``nvidia-pytriton`` wheel (laptops, CI, CPU), or an
existing server reached by URL (production: the official Triton container).

Models are loaded and unloaded explicitly (``--model-control-mode=explicit`` locally), so a new
registered version is served by loading the model again: Triton brings up the latest version
directory and retires the previous one, without a restart.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shared.errors import FTIError

logger = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.1
_PORT_IN_USE = "already in use"
# Triton gets stop_timeout_s to drain requests and unload models; we wait this much longer
# before SIGKILL, so that a clean exit is never cut short.
_KILL_GRACE_S = 5.0


class TritonServerError(FTIError):
    """Triton cannot be started, reached, or cannot load or unload a model."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the ``nvidia-pytriton`` wheel keeps the server, its libraries and Python backend."""

    binary: Path
    libraries: Path
    python_backend: Path
    python_stub: Path


@dataclass(frozen=True)
class TritonEndpoints:
    """``host:port`` addresses, the form tritonclient takes."""

    http: str
    grpc: str | None = None
    metrics: str | None = None


def find_tritonserver() -> TritonDistribution | None:
    """The wheel's server for this Python version, or None when the wheel (or a part) is missing.

    Found through the import system without importing ``pytriton`` (whose import is heavy).
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    server = package / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = TritonDistribution(
        binary=server / "bin" / "tritonserver",
        libraries=package.parent / "nvidia_pytriton.libs",
        python_backend=server / "backends" / "python",
        python_stub=server / "python_backend_stubs" / python_version / "triton_python_backend_stub",
    )
    parts = (dist.binary, dist.libraries, dist.python_backend, dist.python_stub)
    return dist if all(p.exists() for p in parts) else None


def _require_distribution() -> TritonDistribution:
    dist = find_tritonserver()
    if dist is None:
        raise TritonServerError(
            "tritonserver binary not found: install the 'inference' extra (nvidia-pytriton) "
            "or connect to a running server"
        )
    return dist


def prepare_backends(dist: TritonDistribution, runtime_dir: Path) -> Path:
    """Copy the Python backend with the stub for this interpreter beside ``libtriton_python.so``
    into ``runtime_dir/backends`` (never into site-packages); return the backend directory."""
    backends = runtime_dir / "backends"
    python_backend = backends / "python"
    shutil.copytree(
        dist.python_backend,
        python_backend,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy2(dist.python_stub, python_backend / dist.python_stub.name)
    return backends


def free_loopback_port() -> int:
    """A port the kernel just reported free; a race with another process is caught at start-up
    (the server dies with "already in use") and retried with new ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def server_environment(dist: TritonDistribution) -> dict[str, str]:
    """The server's environment: the wheel's libraries on LD_LIBRARY_PATH, and this project's
    site-packages on PYTHONPATH so the Python-backend stub (which embeds the system libpython)
    imports the same numpy and torch as the project. The caller's environment is not changed."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = _prepend(str(dist.libraries), env.get("LD_LIBRARY_PATH"))
    site_packages = [p for p in sys.path if Path(p).name in {"site-packages", "dist-packages"}]
    env["PYTHONPATH"] = os.pathsep.join([*site_packages, *_split(env.get("PYTHONPATH"))])
    env["PATH"] = _prepend(str(Path(sys.executable).parent), env.get("PATH"))
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep model version directories as written
    return env


def _prepend(first: str, rest: str | None) -> str:
    return os.pathsep.join([first, *_split(rest)])


def _split(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


def server_command(
    dist: TritonDistribution,
    model_repository: Path,
    backends: Path,
    endpoints: TritonEndpoints,
    exit_timeout_s: int,
) -> list[str]:
    """Command line of a loopback-only server whose models are loaded on request."""
    http_port = endpoints.http.rsplit(":", 1)[1]
    grpc_port = (endpoints.grpc or "").rsplit(":", 1)[-1]
    metrics_port = (endpoints.metrics or "").rsplit(":", 1)[-1]
    return [
        str(dist.binary),
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backends}",
        "--disable-auto-complete-config",
        "--strict-readiness=false",  # server readiness; models are checked one by one
        "--exit-on-error=true",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--http-address={_LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-address={_LOOPBACK}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        f"--metrics-address={_LOOPBACK}",
        f"--metrics-port={metrics_port}",
        "--log-verbose=0",
    ]


def _loopback_endpoints() -> TritonEndpoints:
    return TritonEndpoints(
        http=f"{_LOOPBACK}:{free_loopback_port()}",
        grpc=f"{_LOOPBACK}:{free_loopback_port()}",
        metrics=f"{_LOOPBACK}:{free_loopback_port()}",
    )


def log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of the server log, for error messages that explain themselves."""
    if not log_path.exists():
        return "<no server log>"
    with log_path.open(errors="replace") as handle:
        return "".join(deque(handle, maxlen=lines))


class TritonServer:
    """A Triton server the pipeline can load models into and send requests to.

    Build it with `TritonServer.start_local` (a managed subprocess, stopped by `stop` or on
    leaving the ``with`` block) or `TritonServer.connect` (someone else's server; `stop` only
    forgets it).
    """

    def __init__(
        self,
        endpoints: TritonEndpoints,
        *,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
        stop_timeout_s: float = 15.0,
        request_timeout_s: float = 120.0,
    ) -> None:
        self.endpoints = endpoints
        self.log_path = log_path
        self._process = process
        self._stop_timeout_s = stop_timeout_s
        self._request_timeout_s = request_timeout_s
        self._http: httpclient.InferenceServerClient | None = None
        self._grpc_control: grpcclient.InferenceServerClient | None = None

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def start_local(
        cls,
        model_repository: Path,
        runtime_dir: Path,
        *,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        extra_args: Sequence[str] = (),
        attempts: int = 3,
    ) -> TritonServer:
        """Start the wheel's ``tritonserver`` on free loopback ports and wait until it is ready.

        ``runtime_dir`` receives the backend copy and ``tritonserver.log``; ``extra_args`` go to
        the server as they are (``--log-verbose=1``, ``--backend-config=...``).
        """
        dist = _require_distribution()
        if not model_repository.is_dir():
            raise TritonServerError(f"model repository {model_repository} is not a directory")
        runtime_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(dist, runtime_dir)
        command_tail = list(extra_args)
        for attempt in range(1, attempts + 1):
            server = cls._spawn(
                dist, model_repository, backends, runtime_dir, stop_timeout_s, command_tail
            )
            try:
                server.wait_until_ready(startup_timeout_s)
                return server
            except TritonServerError:
                server.stop()
                if attempt == attempts or not _port_was_taken(server.log_path):
                    raise
                logger.warning("Triton port taken by another process; retrying with new ports")
        raise AssertionError("unreachable")  # the loop returns or raises

    @classmethod
    def _spawn(
        cls,
        dist: TritonDistribution,
        model_repository: Path,
        backends: Path,
        runtime_dir: Path,
        stop_timeout_s: float,
        extra_args: list[str],
    ) -> TritonServer:
        endpoints = _loopback_endpoints()
        command = server_command(
            dist, model_repository.resolve(), backends.resolve(), endpoints, int(stop_timeout_s)
        )
        command.extend(extra_args)
        log_path = runtime_dir / "tritonserver.log"
        logger.info("starting tritonserver on http %s, grpc %s", endpoints.http, endpoints.grpc)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(dist),
                start_new_session=True,  # its own process group: the stubs go down with it
            )
        return cls(endpoints, process=process, log_path=log_path, stop_timeout_s=stop_timeout_s)

    @classmethod
    def connect(
        cls,
        http_url: str,
        grpc_url: str | None = None,
        *,
        ready_timeout_s: float = 30.0,
        request_timeout_s: float = 120.0,
    ) -> TritonServer:
        """Use an existing server (production: the official container) without managing it.

        URLs are ``host:port`` as tritonclient takes them; a scheme is tolerated and dropped.
        """
        endpoints = TritonEndpoints(http=_host_port(http_url), grpc=_optional_host_port(grpc_url))
        server = cls(endpoints, request_timeout_s=request_timeout_s)
        server.wait_until_ready(ready_timeout_s)
        return server

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def managed(self) -> bool:
        """Whether this object started the server (and therefore stops it)."""
        return self._process is not None

    def wait_until_ready(self, timeout_s: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._raise_if_exited()
            if self.is_ready():
                logger.info("Triton ready at %s", self.endpoints.http)
                return
            time.sleep(_POLL_INTERVAL_S)
        raise TritonServerError(
            f"Triton at {self.endpoints.http} not ready after {timeout_s:.0f} s"
            + self._log_suffix()
        )

    def is_ready(self) -> bool:
        """Server readiness straight from the HTTP health endpoint (cheap, no client state)."""
        url = f"http://{self.endpoints.http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _raise_if_exited(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            code = self._process.returncode
            raise TritonServerError(f"tritonserver exited with code {code}" + self._log_suffix())

    def _log_suffix(self) -> str:
        if self.log_path is None:
            return ""
        return f"; last lines of {self.log_path}:\n{log_tail(self.log_path)}"

    def stop(self) -> None:
        """SIGTERM (Triton drains and unloads within ``stop_timeout_s``), then SIGKILL to the
        whole process group, Python-backend stubs included, if it is still there."""
        self._close_clients()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        logger.info("stopping tritonserver (pid %d)", process.pid)
        process.send_signal(signal.SIGTERM)
        grace = self._stop_timeout_s + _KILL_GRACE_S
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.warning("tritonserver still running %.0f s after SIGTERM; killing", grace)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _close_clients(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._grpc_control is not None:
            self._grpc_control.close()
            self._grpc_control = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients and model control ----------------------------------------------------------

    def http_client(self) -> httpclient.InferenceServerClient:
        """One shared synchronous HTTP client (connection reuse) for model control and simple
        requests, from one thread; an async service builds its own ``tritonclient.http.aio``
        client on ``endpoints.http``."""
        if self._http is None:
            self._http = httpclient.InferenceServerClient(
                self.endpoints.http,
                connection_timeout=self._request_timeout_s,
                network_timeout=self._request_timeout_s,
            )
        return self._http

    def grpc_client(self) -> grpcclient.InferenceServerClient:
        """A new gRPC client; the caller owns (and closes) it."""
        if self.endpoints.grpc is None:
            raise TritonServerError(f"no gRPC endpoint known for Triton at {self.endpoints.http}")
        return grpcclient.InferenceServerClient(self.endpoints.grpc)

    def _control_client(self) -> Any:
        """The client for model control: gRPC when its address is known. Triton's HTTP
        frontend answers no HTTP inference while it handles an HTTP load request (seconds
        for a Python-backend model); a load over gRPC leaves HTTP inference flowing."""
        if self.endpoints.grpc is None:
            return self.http_client()
        if self._grpc_control is None:
            self._grpc_control = grpcclient.InferenceServerClient(self.endpoints.grpc)
        return self._grpc_control

    def _control_timeout(self) -> dict[str, float]:
        """The per-call deadline as the control client takes it (the HTTP one has its own)."""
        return {} if self.endpoints.grpc is None else {"client_timeout": self._request_timeout_s}

    def load_model(self, name: str) -> None:
        """Load, or reload, ``name``: Triton serves the latest version directory and retires the
        one it served before, without dropping in-flight requests."""
        logger.info("loading model %s", name)
        try:
            self._control_client().load_model(name, **self._control_timeout())
        except InferenceServerException as err:
            raise TritonServerError(
                f"Triton could not load model {name!r}: {err.message()}" + self._log_suffix()
            ) from err
        if not self.is_model_ready(name):
            raise TritonServerError(f"model {name!r} loaded but not ready" + self._log_suffix())

    def unload_model(self, name: str, timeout_s: float = 30.0) -> None:
        """Unload ``name`` and wait until Triton no longer reports it ready."""
        logger.info("unloading model %s", name)
        try:
            self._control_client().unload_model(name, **self._control_timeout())
        except InferenceServerException as err:
            raise TritonServerError(
                f"Triton could not unload model {name!r}: {err.message()}"
            ) from err
        deadline = time.monotonic() + timeout_s
        while self.is_model_ready(name):
            if time.monotonic() > deadline:
                raise TritonServerError(
                    f"model {name!r} still ready {timeout_s:.0f} s after unload"
                )
            time.sleep(_POLL_INTERVAL_S)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (a given ``version``, or the one served) answers requests."""
        try:
            return bool(self._control_client().is_model_ready(name, version))
        except InferenceServerException as err:
            raise TritonServerError(f"Triton at {self.endpoints.http}: {err.message()}") from err


def _port_was_taken(log_path: Path | None) -> bool:
    return log_path is not None and _PORT_IN_USE in log_tail(log_path)


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _optional_host_port(url: str | None) -> str | None:
    return None if url is None else _host_port(url)
