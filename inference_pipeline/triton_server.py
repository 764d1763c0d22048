"""Triton Inference Server, as the inference pipeline sees it: either a managed local subprocess
of the ``tritonserver`` binary from the ``nvidia-pytriton`` wheel (laptops, CI, CPU), or an
existing server reached by URL (production: the official Triton container).

Models are loaded and unloaded explicitly (``--model-control-mode=explicit`` locally), so a new
registered version is served by loading the model again, without a restart. Which version
directories a load serves is the model config's ``version_policy``: inference publishes with
``all`` (:func:`inference_pipeline.model_artifact.publish_for_triton`), so during a rollout the
old and the new version are both served until traffic has moved and the old directory is
retired; the batch job retires every other version before it loads, so it serves exactly one.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inference_pipeline.process_group import (
    become_subreaper,
    end_group,
    exit_status,
    wait_for_exit,
    watch_exit,
)
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
class _Launch:
    """How a managed server was started, to start it again the same way."""

    dist: TritonDistribution
    model_repository: Path
    backends: Path
    runtime_dir: Path
    stop_timeout_s: float
    extra_args: tuple[str, ...]


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
    leaving the ``with`` block; `restart` starts it again after it died, and `watch` reports
    its death) or `TritonServer.connect` (someone else's server; `stop` only forgets it).
    """

    def __init__(
        self,
        endpoints: TritonEndpoints,
        *,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
        stop_timeout_s: float = 15.0,
        request_timeout_s: float = 120.0,
        launch: _Launch | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.log_path = log_path
        self._process = process
        self._stop_timeout_s = stop_timeout_s
        self._request_timeout_s = request_timeout_s
        self._launch = launch
        self._on_exit: Callable[[int, str], None] | None = None
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
        launch = _Launch(
            dist,
            model_repository.resolve(),
            prepare_backends(dist, runtime_dir).resolve(),
            runtime_dir,
            stop_timeout_s,
            tuple(extra_args),
        )
        become_subreaper()  # a killed server's stubs become ours to reap (see process_group)
        server = cls(
            _loopback_endpoints(),
            log_path=runtime_dir / "tritonserver.log",
            stop_timeout_s=stop_timeout_s,
            launch=launch,
        )
        server._start(startup_timeout_s, attempts)
        return server

    def _start(self, startup_timeout_s: float, attempts: int) -> None:
        """Spawn the server on ``endpoints`` and wait until it is ready; when another process
        took a port meanwhile, again on new ports."""
        for attempt in range(1, attempts + 1):
            self._spawn()
            try:
                self.wait_until_ready(startup_timeout_s)
                return
            except TritonServerError:
                self._end_process()
                if attempt == attempts or not _port_was_taken(self.log_path):
                    raise
                logger.warning("Triton port taken by another process; retrying with new ports")
                self.endpoints = _loopback_endpoints()

    def _spawn(self) -> None:
        launch = self._launch
        assert launch is not None and self.log_path is not None  # managed servers only
        command = server_command(
            launch.dist,
            launch.model_repository,
            launch.backends,
            self.endpoints,
            int(launch.stop_timeout_s),
        )
        command.extend(launch.extra_args)
        logger.info(
            "starting tritonserver on http %s, grpc %s", self.endpoints.http, self.endpoints.grpc
        )
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(launch.dist),
                start_new_session=True,  # its own process group: the stubs go down with it
            )

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
        if self._process is not None and (how := exit_status(self._process)) is not None:
            raise TritonServerError(f"tritonserver {how}" + self._log_suffix())

    def _log_suffix(self) -> str:
        if self.log_path is None:
            return ""
        return f"; last lines of {self.log_path}:\n{log_tail(self.log_path)}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def watch(self, on_exit: Callable[[int, str], None]) -> None:
        """Call ``on_exit(pid, how it ended)`` (from another thread) whenever the managed
        server dies without being asked to: now, and after every `restart`."""
        self._on_exit = on_exit
        self._watch_current()

    def _watch_current(self) -> None:
        process, on_exit = self._process, self._on_exit
        if process is None or on_exit is None:
            return

        def ended(how: str) -> None:
            if self._process is process:  # not stopped nor replaced meanwhile
                on_exit(process.pid, how)

        watch_exit(process, ended, name=f"tritonserver-{process.pid}")

    def restart(self, startup_timeout_s: float) -> None:
        """Start the managed server again after it died: what is left of its process group
        (Python-backend stubs) is killed and reaped, then a new server starts on the same
        ports (new ones if another process took them meanwhile), with nothing loaded."""
        if self._launch is None or self.log_path is None:
            raise TritonServerError(f"Triton at {self.endpoints.http} is not managed here")
        self._close_clients()
        self._end_process()
        if self.log_path.exists():  # the dead server's log, for the post-mortem
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        self._start(startup_timeout_s, attempts=3)
        self._watch_current()

    def _end_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            end_group(process)

    def stop(self) -> None:
        """SIGTERM (Triton drains and unloads within ``stop_timeout_s``), then SIGKILL to the
        whole process group, Python-backend stubs included, and every member reaped."""
        self._close_clients()
        process, self._process = self._process, None
        if process is None:
            return
        if exit_status(process) is None:
            logger.info("stopping tritonserver (pid %d)", process.pid)
            process.send_signal(signal.SIGTERM)
            grace = self._stop_timeout_s + _KILL_GRACE_S
            if not wait_for_exit(process, grace):
                logger.warning("tritonserver still running %.0f s after SIGTERM; killing", grace)
        end_group(process)

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
        requests, from one thread (the batch job scores with it). The online service calls
        Triton with its own asyncio client (:class:`inference_pipeline.scoring.AsyncTritonClient`:
        ``tritonclient.http.aio``, or ``tritonclient.grpc.aio``)."""
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
        """Load, or reload, ``name``: Triton serves the version directories present that the
        config's ``version_policy`` selects (see the module docstring) and retires versions no
        longer selected, without dropping in-flight requests."""
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
