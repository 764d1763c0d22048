"""Keeps the service's managed Triton running: a Triton that dies is started again.

A managed Triton (``FTI_TRITON_MODE=managed``) is a child of the service, so nobody else will
bring it back: killed, it left predictions and ``/readyz`` at 503 for good while ``/healthz``
stayed 200, so no orchestrator restarted the pod either. Here its death is noticed at once (a
thread blocked on the child's exit: no polling), what is left of its process group is killed
and reaped (`process_group`), and a new server starts on the same ports; the service then
loads the models it serves again (`ServiceRuntime`). A restart that fails is tried again after
a back-off that doubles up to a bound (``FTI_TRITON_RESTART_BACKOFF_S``, ``..._MAX_S``), and
so is a server that dies again soon after a restart (a crash loop must not spin). When Triton
has been down longer than ``FTI_TRITON_RESTART_LIMIT_S``, liveness fails (`liveness_problem`:
``/healthz`` answers 503) so that the service's own supervisor restarts the whole pod.

An external Triton (``FTI_TRITON_MODE=external``) belongs to its own deployment; the service
only heals it (loads its models again once it is back, see `ServiceRuntime.heal`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.settings import InferenceSettings
from inference_pipeline.triton_server import TritonServer
from shared.errors import FTIError

log = logging.getLogger(__name__)

# A server that ran this long before dying is restarted at once; one that died sooner is in
# a crash loop, and the next restart waits the back-off.
_STABLE_S = 60.0


class TritonSupervisor:
    def __init__(
        self,
        server: TritonServer,
        settings: InferenceSettings,
        metrics: ServiceMetrics,
        *,
        on_control_thread: Callable[..., Awaitable[Any]],
        restore: Callable[[], Awaitable[None]],
        spawn: Callable[..., None],
    ) -> None:
        """``on_control_thread(fn, *args)`` runs Triton control calls where the service runs
        them; ``restore()`` brings the service's view back after a restart (its clients, the
        models it serves); ``spawn(coroutine, name)`` runs a background task."""
        self.server = server
        self.settings = settings
        self.metrics = metrics
        self._on_control_thread = on_control_thread
        self._restore = restore
        self._spawn = spawn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._up_since = time.monotonic()
        self._down_since: float | None = None
        self._last_failure = ""
        self._next_delay_s = settings.triton_restart_backoff_s
        self._liveness_failed_logged = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.metrics.triton_up.set(1)
        self.server.watch(self._exited)

    def close(self) -> None:
        """The service stops: a Triton exit from now on is no death to heal."""
        self._closing = True

    @property
    def restarting(self) -> bool:
        return self._down_since is not None

    def liveness_problem(self) -> str | None:
        """Why the service should be restarted, or None: Triton down past the limit."""
        if self._down_since is None:
            return None
        down_s = time.monotonic() - self._down_since
        if down_s <= self.settings.triton_restart_limit_s:
            return None
        problem = (
            f"managed Triton down for {down_s:.0f} s, restarts failing (limit "
            f"FTI_TRITON_RESTART_LIMIT_S={self.settings.triton_restart_limit_s:g} s): "
            f"{self._last_failure}"
        )
        if not self._liveness_failed_logged:  # once per outage, when it first shows
            self._liveness_failed_logged = True
            log.error("%s; /healthz now answers 503", problem)
        return problem

    # -- a death, and the restarts --------------------------------------------------------

    def _exited(self, pid: int, how: str) -> None:
        """From the watching thread: hand over to the event loop."""
        loop = self._loop
        if loop is None or self._closing or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._died, pid, how)

    def _died(self, pid: int, how: str) -> None:
        if self._closing or self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._last_failure = f"tritonserver (pid {pid}) {how}"
        self.metrics.triton_up.set(0)
        ran_s = self._down_since - self._up_since
        first_delay = 0.0
        if ran_s >= _STABLE_S:
            self._next_delay_s = self.settings.triton_restart_backoff_s
        else:
            first_delay = self._next_delay_s
            self._grow_delay()
        log.warning(
            "managed Triton died: tritonserver (pid %d) %s after %.0f s; restarting it%s",
            pid,
            how,
            ran_s,
            f" in {first_delay:g} s (it died soon after its last start)" if first_delay else "",
        )
        self._spawn(self._restart(first_delay), "triton-restart")

    async def _restart(self, delay_s: float) -> None:
        attempt = 0
        while not self._closing:
            if delay_s:
                await asyncio.sleep(delay_s)
            attempt += 1
            began = time.monotonic()
            try:
                await self._on_control_thread(
                    self.server.restart, self.settings.triton_startup_timeout_s
                )
                await self._restore()
            except (FTIError, OSError) as exc:
                delay_s = self._next_delay_s
                self._grow_delay()
                self._failed(attempt, exc, delay_s)
                continue
            self._restarted(attempt, time.monotonic() - began)
            return

    def _failed(self, attempt: int, exc: Exception, delay_s: float) -> None:
        self.metrics.triton_restarts.labels("failed").inc()
        self._last_failure = " ".join(str(exc).split())[:500]
        log.warning(
            "restart %d of the managed Triton failed: %s; next attempt in %g s",
            attempt,
            self._last_failure,
            delay_s,
        )
        self.liveness_problem()  # logs the moment liveness fails

    def _restarted(self, attempts: int, took_s: float) -> None:
        assert self._down_since is not None
        down_s = time.monotonic() - self._down_since
        self._down_since = None
        self._up_since = time.monotonic()
        self._liveness_failed_logged = False
        self.metrics.triton_restarts.labels("ok").inc()
        self.metrics.triton_up.set(1)
        log.warning(
            "managed Triton restarted (pid %s, http %s) and its models loaded: down %.1f s, "
            "%d attempt%s, the last took %.1f s",
            self.server.pid,
            self.server.endpoints.http,
            down_s,
            attempts,
            "" if attempts == 1 else "s",
            took_s,
        )

    def _grow_delay(self) -> None:
        self._next_delay_s = min(2 * self._next_delay_s, self.settings.triton_restart_backoff_max_s)
