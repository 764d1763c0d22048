"""The service's link to Triton: the server (a managed subprocess or an external one), the
async client the request path infers with, and keeping both usable.

Control calls (load a model, readiness of the server) go through one thread: tritonclient's
synchronous HTTP client is gevent-based and must stay on the thread that created it. The
inference client is rebuilt when a restarted managed Triton comes back on other ports. Healing:
after an inference failure, a Triton that answers again but lost a model (a restarted server in
explicit model-control mode) gets the served models loaded again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from inference_pipeline.model_artifact import ServingModel
from inference_pipeline.scoring import AsyncTritonClient
from inference_pipeline.service.background import BackgroundTasks
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.triton_supervisor import TritonSupervisor
from inference_pipeline.settings import InferenceSettings, TritonMode, TritonProtocol
from inference_pipeline.triton_server import TritonEndpoints, TritonServer, TritonServerError
from shared.errors import ModelServerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed inference, check Triton's models at most this often (seconds).
_HEAL_INTERVAL_S = 1.0


class TritonLink:
    def __init__(
        self,
        settings: InferenceSettings,
        metrics: ServiceMetrics,
        tasks: BackgroundTasks,
        served: Callable[[], Iterable[ServingModel]],
    ) -> None:
        """``served()``: the model versions the service serves now (loaded again after a
        restart or when Triton lost them)."""
        self.settings = settings
        self.metrics = metrics
        self.server: TritonServer | None = None
        self.client: AsyncTritonClient | None = None
        self.supervisor: TritonSupervisor | None = None  # of a managed Triton
        self._tasks = tasks
        self._served = served
        self._client_endpoints: TritonEndpoints | None = None  # what `client` was built for
        self._heal_lock = asyncio.Lock()
        self._last_heal = 0.0
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-control")

    async def control(self, fn: Callable[..., T], *args: object) -> T:
        """Run a Triton control call on the control thread."""
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    async def start(self) -> None:
        """Start (managed) or reach (external) Triton, and its inference client. A managed
        Triton serves the model repository as it is now: publish the first version before."""
        self.server = server = await self.control(self._server)
        self.client = self._new_client()
        if server.managed:
            self.supervisor = TritonSupervisor(
                server,
                self.settings,
                self.metrics,
                on_control_thread=self.control,
                restore=self._restore,
                spawn=self._tasks.spawn,
            )
            self.supervisor.start()

    def _server(self) -> TritonServer:
        s = self.settings
        if s.triton_mode is TritonMode.external:
            assert s.triton_url is not None  # the settings refuse external mode without it
            return TritonServer.connect(
                s.triton_url,
                s.triton_grpc_url,
                ready_timeout_s=s.triton_startup_timeout_s,
                request_timeout_s=s.triton_load_timeout_s,
            )
        return TritonServer.start_local(
            s.model_repository,
            s.serving_dir / "triton",
            startup_timeout_s=s.triton_startup_timeout_s,
        )

    def _new_client(self) -> AsyncTritonClient:
        assert self.server is not None
        endpoints = self._client_endpoints = self.server.endpoints
        # Inference over gRPC only when asked for: over HTTP with binary tensors the call's
        # p50 was 3-22% and its client CPU 0-27% lower (benchmarks/triton_protocol.py).
        grpc = endpoints.grpc if self.settings.triton_protocol is TritonProtocol.grpc else None
        return AsyncTritonClient(endpoints.http, self.settings.triton_timeout_s, grpc)

    async def load(self, model: ServingModel) -> None:
        """Load (or reload: newest version directory) ``model`` into Triton."""
        assert self.server is not None
        await self.control(self.server.load_model, model.triton_name)

    async def _restore(self) -> None:
        """After the managed Triton was restarted (`TritonSupervisor`): load every served
        model again, and a client for its new ports if they changed."""
        for model in list(self._served()):
            await self.load(model)
        client = self.client
        if client is None or self._client_endpoints != self._require_server().endpoints:
            self.client = self._new_client()
            if client is not None:
                await client.close()

    def _require_server(self) -> TritonServer:
        if self.server is None:
            raise ModelServerUnavailable("Triton not started")
        return self.server

    def liveness_problem(self) -> str | None:
        """Why the process should be restarted by its supervisor (`/healthz` 503), or None."""
        return None if self.supervisor is None else self.supervisor.liveness_problem()

    def heal_soon(self) -> None:
        """After an inference failure: check Triton in the background (see `heal`)."""
        if not self._heal_lock.locked() and time.monotonic() - self._last_heal >= _HEAL_INTERVAL_S:
            self._tasks.spawn(self.heal(), "triton-heal")

    async def heal(self) -> None:
        """If Triton is back but lost a served model, load it again."""
        if self._heal_lock.locked() or time.monotonic() - self._last_heal < _HEAL_INTERVAL_S:
            return
        async with self._heal_lock:
            self._last_heal = time.monotonic()
            server, client = self.server, self.client
            if server is None or client is None:
                return
            if self.supervisor is not None and self.supervisor.restarting:
                return  # the supervisor loads the models once the new server is up
            try:
                if not await self.control(server.is_ready):
                    return
                for model in list(self._served()):
                    if await client.model_ready(model.triton_name, model.version):
                        continue
                    log.warning(
                        "Triton is up without %s v%s; loading it", model.triton_name, model.version
                    )
                    await self.load(model)
            except (TritonServerError, ModelServerUnavailable) as exc:
                log.warning("Triton not healed yet: %s", exc)

    async def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            await self.control(self.server.stop)
        self._control.shutdown(wait=False)
