"""What the service holds between requests: the feature store, the registry, the model being
served, Triton (managed subprocess or external) and its async client, the prediction writer.

Built in the app lifespan (model loading happens there, before the first request), torn down
after the last. Every downstream call has a deadline; a failure is a typed error naming the
dependency, and the service heals itself: when Triton answers again but has lost the model
(a restarted server in explicit model-control mode), the model is loaded again.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import polars as pl

from inference_pipeline.model_artifact import ServingModel, load_serving_model, publish_for_triton
from inference_pipeline.scoring import AsyncTritonClient
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.prediction_writer import PredictionWriter
from inference_pipeline.settings import InferenceSettings, TritonMode
from inference_pipeline.triton_server import TritonServer, TritonServerError
from shared.errors import ModelServerUnavailable, RegistryUnavailable, StoreUnavailable
from shared.feature_definitions import CARRIER_STATS
from shared.feature_store import FeatureStore, open_feature_store
from shared.registry import ModelRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed inference, check Triton's model at most this often (seconds).
_HEAL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str = ""


class ServiceRuntime:
    def __init__(self, settings: InferenceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: FeatureStore | None = None
        self.registry: ModelRegistry | None = None
        self.triton: TritonServer | None = None
        self.client: AsyncTritonClient | None = None
        self.writer: PredictionWriter | None = None
        self._model: ServingModel | None = None
        self._reload_lock = asyncio.Lock()
        self._heal_lock = asyncio.Lock()
        self._last_heal = 0.0
        # tritonclient's synchronous HTTP client (model control) is gevent-based and must stay
        # on the thread that created it: every control call goes through this one thread.
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-control")

    async def _on_control_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.store = await asyncio.to_thread(open_feature_store, s.store_settings())
        self.registry = await asyncio.to_thread(ModelRegistry, s.registry_settings())
        model = await asyncio.to_thread(self._fetch, s.model_alias)
        await asyncio.to_thread(publish_for_triton, model, s.model_repository, s.triton_flavour)
        self.triton = await self._on_control_thread(self._triton_server)
        await self._on_control_thread(self.triton.load_model, model.triton_name)
        endpoints = self.triton.endpoints
        self.client = AsyncTritonClient(endpoints.http, s.triton_timeout_s, endpoints.grpc)
        self._set_model(model)
        if s.prediction_log:
            self.writer = PredictionWriter(
                self.store,
                self.metrics,
                flush_rows=s.prediction_log_flush_rows,
                flush_s=s.prediction_log_flush_s,
            )
            self.writer.start()
        log.info("serving %s version %s (%s)", model.triton_name, model.version, model.alias)

    def _triton_server(self) -> TritonServer:
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

    def _fetch(self, alias: str) -> ServingModel:
        assert self.registry is not None
        destination = self.settings.serving_dir / "artifacts" / uuid.uuid4().hex
        return load_serving_model(
            self.registry, alias, destination, flavour=self.settings.triton_flavour
        )

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        if self.client is not None:
            await self.client.close()
        if self.triton is not None:
            await self._on_control_thread(self.triton.stop)
        self._control.shutdown(wait=False)
        if self.store is not None:
            self.store.close()

    # -- the model --------------------------------------------------------------------------

    @property
    def model(self) -> ServingModel:
        if self._model is None:
            raise ModelServerUnavailable("no model loaded yet")
        return self._model

    def _set_model(self, model: ServingModel) -> None:
        previous, self._model = self._model, model
        self.metrics.set_model(model.version, model.alias, model.triton_name)
        if previous is not None and previous.path != model.path:
            shutil.rmtree(previous.path.parent, ignore_errors=True)

    async def reload(self, alias: str) -> tuple[ServingModel, ServingModel]:
        """Load ``alias`` from the registry, publish it to Triton, then switch to it.
        Requests in flight finish on the previous model; a failure leaves it serving."""
        async with self._reload_lock:
            previous = self.model
            try:
                model = await asyncio.to_thread(self._fetch, alias)
                await asyncio.to_thread(
                    publish_for_triton,
                    model,
                    self.settings.model_repository,
                    self.settings.triton_flavour,
                )
                assert self.triton is not None
                await self._on_control_thread(self.triton.load_model, model.triton_name)
            except Exception:
                self.metrics.reloads.labels("failed").inc()
                raise
            self._set_model(model)
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded %s: version %s -> %s", alias, previous.version, model.version)
            return previous, model

    async def heal(self) -> None:
        """After an inference failure: if Triton is back but lost the model, load it again."""
        if self._heal_lock.locked() or time.monotonic() - self._last_heal < _HEAL_INTERVAL_S:
            return
        async with self._heal_lock:
            self._last_heal = time.monotonic()
            model, triton = self.model, self.triton
            if triton is None or self.client is None:
                return
            try:
                if not await self._on_control_thread(triton.is_ready):
                    return
                if await self.client.model_ready(model.triton_name, model.version):
                    return
                log.warning(
                    "Triton is up without %s v%s; loading it", model.triton_name, model.version
                )
                await self._on_control_thread(triton.load_model, model.triton_name)
            except (TritonServerError, ModelServerUnavailable) as exc:
                log.warning("Triton not healed yet: %s", exc)

    # -- downstream calls with deadlines ----------------------------------------------------

    async def with_store(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking feature store call in a thread, within the online timeout."""
        timeout = self.settings.online_timeout_s
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"online feature store did not answer within {timeout:g} s"
            ) from exc

    # -- readiness --------------------------------------------------------------------------

    async def check_store(self) -> CheckResult:
        if self.store is None:
            return CheckResult(False, "not opened")
        store = self.store
        probe = pl.DataFrame({"carrier": ["__readiness__"]})
        try:
            await self.with_store(store.get_online_features, CARRIER_STATS, probe)
        except StoreUnavailable as exc:
            return CheckResult(False, str(exc))
        return CheckResult(True)

    async def check_registry(self) -> CheckResult:
        if self.registry is None:
            return CheckResult(False, "not opened")
        registry = self.registry
        alias = self.model.alias
        try:
            version = await asyncio.wait_for(
                asyncio.to_thread(registry.version_for, alias), self.settings.registry_timeout_s
            )
        except (TimeoutError, RegistryUnavailable) as exc:
            return CheckResult(False, str(exc) or "registry timed out")
        if version is None:
            return CheckResult(False, f"alias {alias!r} points to no version")
        stale = "" if version == self.model.version else f"; {alias} is now v{version}"
        return CheckResult(True, f"{alias} -> v{version}{stale}")

    async def check_triton(self) -> CheckResult:
        if self.client is None:
            return CheckResult(False, "not connected")
        model = self.model
        try:
            ready = await self.client.model_ready(model.triton_name, model.version)
        except ModelServerUnavailable as exc:
            return CheckResult(False, str(exc))
        if not ready:
            asyncio.get_running_loop().create_task(self.heal())
            return CheckResult(False, f"{model.triton_name} v{model.version} not loaded")
        return CheckResult(True, f"{model.triton_name} v{model.version} ready")
