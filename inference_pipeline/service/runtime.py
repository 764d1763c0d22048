"""What the service holds between requests: the feature store, the registry, the model being
served, Triton (managed subprocess or external) and its async client, the prediction writer.

Built in the app lifespan (model loading happens there, before the first request), torn down
after the last. Every downstream call has a deadline; a failure is a typed error naming the
dependency, and the service heals itself: when Triton answers again but has lost the model
(a restarted server in explicit model-control mode), the model is loaded again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import polars as pl

from inference_pipeline.coalescing import Coalescer
from inference_pipeline.model_artifact import (
    ServingModel,
    load_serving_model,
    publish_for_triton,
    retire_versions,
)
from inference_pipeline.scoring import AsyncTritonClient, OnlineInputs, online_inputs
from inference_pipeline.service.downloads import Downloads
from inference_pipeline.service.errors import failure_log
from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.prediction_writer import PredictionWriter
from inference_pipeline.service.triton_supervisor import TritonSupervisor
from inference_pipeline.settings import InferenceSettings, TritonMode, TritonProtocol
from inference_pipeline.triton_server import TritonEndpoints, TritonServer, TritonServerError
from shared.errors import ModelServerUnavailable, RegistryUnavailable, StoreUnavailable
from shared.feature_definitions import CARRIER_STATS
from shared.feature_store import FeatureStore, open_feature_store
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry
from shared.triton_repository import MAX_BATCH_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed inference, check Triton's model at most this often (seconds).
_HEAL_INTERVAL_S = 1.0
# Threads for reads of a network online store (Redis, Hopsworks); coalescing keeps one read in
# flight per served version, and a hung store holds a thread for its client's socket timeouts.
_STORE_THREADS = 8

CHALLENGER_SUFFIX = "__challenger"


def canary_bucket(key: str) -> float:
    """A stable number in [0, 1) per key (not Python's salted ``hash``): the same flight goes to
    the same version in every worker, replica and restart."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class OnlineScores:
    """One request's share of a scored batch."""

    inputs: OnlineInputs
    probabilities: list[float]
    triton_s: float  # the batch's Triton call


@dataclass(slots=True)
class _Job:
    """One request's flights, queued for a batch (see `ServiceRuntime._store_deadline`)."""

    model: ServingModel
    flights: list[dict[str, Any]]
    arrived: float  # event loop time


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str = ""


class ServiceRuntime:
    def __init__(
        self,
        settings: InferenceSettings,
        metrics: ServiceMetrics,
        failures: FailureLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.failures = failures or failure_log(settings.failure_log_interval_s)
        self.store: FeatureStore | None = None
        self.registry: ModelRegistry | None = None
        self.triton: TritonServer | None = None
        self.client: AsyncTritonClient | None = None
        self.writer: PredictionWriter | None = None
        self.supervisor: TritonSupervisor | None = None  # of a managed Triton
        self.downloads = Downloads(settings.serving_dir / "artifacts")
        self._client_endpoints: TritonEndpoints | None = None  # what `client` was built for
        self._models: dict[str, ServingModel] = {}  # role -> the version serving it
        self._champion_alias = settings.model_alias  # admin reload may point it elsewhere
        self._switch_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._heal_lock = asyncio.Lock()
        self._last_heal = 0.0
        # tritonclient's synchronous HTTP client (model control) is gevent-based and must stay
        # on the thread that created it: every control call goes through this one thread.
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-control")
        # Network store reads on threads of their own: a hung store leaves threads blocked in
        # its client's socket timeouts, and must not starve the default pool (registry calls).
        self._store_threads = ThreadPoolExecutor(
            max_workers=_STORE_THREADS, thread_name_prefix="online-store"
        )
        # Per batch key: when the batch last in flight passed its store read (see
        # `_store_deadline`).
        self._store_passed: dict[tuple[str, str], float] = {}
        self._batches: Coalescer[tuple[str, str], _Job, OnlineScores] = Coalescer(
            self._score_batch, size=lambda job: len(job.flights), max_size=MAX_BATCH_SIZE
        )

    async def _on_control_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._control, fn, *args)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await asyncio.to_thread(self.downloads.open)
        self.store = await asyncio.to_thread(open_feature_store, s.store_settings())
        self.registry = await asyncio.to_thread(ModelRegistry, s.registry_settings())
        model = await asyncio.to_thread(self._fetch, CHAMPION, s.model_alias)
        await self._publish(model)  # first: a managed Triton starts on this repository
        self.triton = await self._on_control_thread(self._triton_server)
        await self._load(CHAMPION, model)
        if s.serves_challenger:
            await self._follow_challenger()
        self.client = self._triton_client()
        if self.triton.managed:
            self.supervisor = TritonSupervisor(
                self.triton,
                s,
                self.metrics,
                on_control_thread=self._on_control_thread,
                restore=self._restore_triton,
                spawn=self.spawn,
            )
            self.supervisor.start()
        if s.prediction_log:
            self.writer = PredictionWriter(
                self.store,
                self.metrics,
                flush_rows=s.prediction_log_flush_rows,
                flush_s=s.prediction_log_flush_s,
            )
            self.writer.start()
        if s.alias_poll_s > 0:
            self.spawn(self._follow_aliases(), "alias-follower")
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

    def _triton_client(self) -> AsyncTritonClient:
        assert self.triton is not None
        endpoints = self._client_endpoints = self.triton.endpoints
        # Inference over gRPC only when asked for: the lean HTTP client is cheaper per call.
        grpc = endpoints.grpc if self.settings.triton_protocol is TritonProtocol.grpc else None
        return AsyncTritonClient(endpoints.http, self.settings.triton_timeout_s, grpc)

    async def _restore_triton(self) -> None:
        """After the managed Triton was restarted (`TritonSupervisor`): load every served
        model again, and a client for its new ports if they changed."""
        triton = self.triton
        assert triton is not None
        for model in list(self._models.values()):
            await self._on_control_thread(triton.load_model, model.triton_name)
        client = self.client
        if client is None or self._client_endpoints != triton.endpoints:
            self.client = self._triton_client()
            if client is not None:
                await client.close()

    def liveness_problem(self) -> str | None:
        """Why the process should be restarted by its supervisor (`/healthz` 503), or None."""
        return None if self.supervisor is None else self.supervisor.liveness_problem()

    def _fetch(self, role: str, ref: str) -> ServingModel:
        """Download and verify ``ref``; the challenger is served under a Triton name of its own,
        so both versions answer side by side."""
        assert self.registry is not None
        destination = self.downloads.destination()
        try:
            model = load_serving_model(
                self.registry, ref, destination, flavour=self.settings.triton_flavour
            )
        except BaseException:
            self.downloads.discard(destination)
            raise
        if role == CHALLENGER:
            model = replace(model, triton_name=model.triton_name + CHALLENGER_SUFFIX)
        return model

    async def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writer is not None:
            await self.writer.close()
        if self.client is not None:
            await self.client.close()
        if self.triton is not None:
            await self._on_control_thread(self.triton.stop)
        self._control.shutdown(wait=False)
        self._store_threads.shutdown(wait=False, cancel_futures=True)
        self.downloads.close()
        if self.store is not None:
            self.store.close()

    # -- the models -------------------------------------------------------------------------

    @property
    def model(self) -> ServingModel:
        """The champion (or the version ``FTI_MODEL_ALIAS`` names)."""
        found = self._models.get(CHAMPION)
        if found is None:
            raise ModelServerUnavailable("no model loaded yet")
        return found

    @property
    def challenger(self) -> ServingModel | None:
        return self._models.get(CHALLENGER)

    def model_for(self, role: str) -> ServingModel:
        """The role's model; the champion's while no challenger is served."""
        if role == CHALLENGER and self.challenger is not None:
            return self.challenger
        return self.model

    @property
    def canary_active(self) -> bool:
        return self.settings.canary_share > 0 and self.challenger is not None

    def canary_role(self, flight_id: str) -> str:
        """Which role answers this flight: sticky, since the bucket is a hash of the key."""
        if self.canary_active and canary_bucket(flight_id) < self.settings.canary_share:
            return CHALLENGER
        return CHAMPION

    def _alias(self, role: str) -> str:
        return self._champion_alias if role == CHAMPION else self.settings.challenger_alias

    def _set_model(self, role: str, model: ServingModel) -> None:
        previous, self._models[role] = self._models.get(role), model
        self.metrics.role_version.labels(role).set(float(model.version))
        if role == CHAMPION:
            self.metrics.set_model(model.version, model.alias, model.triton_name)
        if previous is not None and previous.path != model.path:
            # Requests in flight hold the previous model's MDT in memory, not its files.
            self.downloads.discard(previous.path)

    async def _deploy(self, role: str, model: ServingModel) -> None:
        """Zero-downtime switch: publish the version beside the one served, load (Triton now
        serves both), move traffic, and retire the old version only after every worker had
        the time to notice the move (see `_retire_grace_s`)."""
        await self._publish(model)
        await self._load(role, model)

    async def _publish(self, model: ServingModel) -> None:
        s = self.settings
        await asyncio.to_thread(
            publish_for_triton, model, s.model_repository, s.triton_flavour, retire_others=False
        )

    async def _load(self, role: str, model: ServingModel) -> None:
        assert self.triton is not None
        await self._on_control_thread(self.triton.load_model, model.triton_name)
        self._set_model(role, model)
        self.spawn(self._retire_later(role, model), f"retire-{role}")

    @property
    def _retire_grace_s(self) -> float:
        """Other workers and replicas check the aliases every ``alias_poll_s``; a request they
        sent just before switching may still be in flight for up to the inference timeout."""
        s = self.settings
        return 2 * s.alias_poll_s + s.triton_timeout_s + 1.0

    async def _retire_later(self, role: str, model: ServingModel) -> None:
        await asyncio.sleep(self._retire_grace_s)
        # Under the switch lock: a switch in progress has published its version but not yet
        # switched to it, and retiring "all but the served one" then would delete it.
        async with self._switch_lock:
            if self._models.get(role) is not model:
                return  # switched again meanwhile: that switch retires
            retired = await asyncio.to_thread(
                retire_versions, self.settings.model_repository, model.triton_name, model.version
            )
            if retired and self.triton is not None:
                try:
                    await self._on_control_thread(self.triton.load_model, model.triton_name)
                except TritonServerError as exc:
                    log.warning("could not unload retired versions %s: %s", retired, exc)
                else:
                    log.info("%s: retired versions %s of %s", role, retired, model.triton_name)
        # Downloads of siblings that are gone (the served ones' own went with each switch).
        await asyncio.to_thread(self.downloads.sweep)

    async def switch(
        self, role: str, ref: str | None = None
    ) -> tuple[ServingModel | None, ServingModel]:
        """Serve ``ref`` (default: the role's alias now) for ``role``; requests in flight finish
        on the previous version, and a failure leaves it serving."""
        async with self._switch_lock:
            previous = self._models.get(role)
            try:
                model = await asyncio.to_thread(self._fetch, role, ref or self._alias(role))
                if previous is not None and model.version == previous.version:
                    self.downloads.discard(model.path)
                    return previous, previous
                await self._deploy(role, model)
            except Exception:
                self.metrics.reloads.labels("failed").inc()
                raise
            self.metrics.reloads.labels("ok").inc()
            log.info(
                "%s: version %s -> %s", role, previous.version if previous else "-", model.version
            )
            return previous, model

    async def reload(self, alias: str) -> tuple[ServingModel, ServingModel]:
        """Admin reload: serve what ``alias`` points to now, and follow that alias from now on."""
        previous, model = await self.switch(CHAMPION, alias)
        self._champion_alias = alias
        return previous or model, model

    async def _follow_challenger(self) -> None:
        """Serve the challenger alias if it exists (its absence is not an error)."""
        assert self.registry is not None
        alias = self.settings.challenger_alias
        version = await asyncio.to_thread(self.registry.version_for, alias)
        if version is None:
            if (gone := self._models.pop(CHALLENGER, None)) is not None:
                self.downloads.discard(gone.path)
                log.info("alias %s removed: champion answers everything", alias)
            return
        current = self.challenger
        if current is None or current.version != version:
            await self.switch(CHALLENGER, version)

    async def _follow_aliases(self) -> None:
        """Promotion and rollback without a restart: when an alias moves in the registry,
        switch to its new version (every worker and replica does this on its own)."""
        assert self.registry is not None
        registry = self.registry
        while True:
            await asyncio.sleep(self.settings.alias_poll_s)
            try:
                version = await asyncio.wait_for(
                    asyncio.to_thread(registry.version_for, self._champion_alias),
                    self.settings.registry_timeout_s,
                )
                if version is not None and version != self.model.version:
                    await self.switch(CHAMPION, version)
                if self.settings.serves_challenger:
                    await self._follow_challenger()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry or Triton may be down: keep serving
                log.warning("could not follow registry aliases: %s", exc)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def heal(self) -> None:
        """After an inference failure: if Triton is back but lost the model, load it again."""
        if self._heal_lock.locked() or time.monotonic() - self._last_heal < _HEAL_INTERVAL_S:
            return
        async with self._heal_lock:
            self._last_heal = time.monotonic()
            triton, client = self.triton, self.client
            if triton is None or client is None:
                return
            if self.supervisor is not None and self.supervisor.restarting:
                return  # the supervisor loads the models once the new server is up
            try:
                if not await self._on_control_thread(triton.is_ready):
                    return
                for model in list(self._models.values()):
                    if await client.model_ready(model.triton_name, model.version):
                        continue
                    log.warning(
                        "Triton is up without %s v%s; loading it", model.triton_name, model.version
                    )
                    await self._on_control_thread(triton.load_model, model.triton_name)
            except (TritonServerError, ModelServerUnavailable) as exc:
                log.warning("Triton not healed yet: %s", exc)

    # -- downstream calls with deadlines ----------------------------------------------------

    async def score(self, model: ServingModel, flights: list[dict[str, Any]]) -> OnlineScores:
        """Online features, on-demand features, MDT and Triton for ``flights``. Concurrent
        requests for the same model version share one store read, one MDT (one thread hop)
        and one Triton call: on a few cores the per-call Python work, not the per-row
        arithmetic, is where an online service spends its time."""
        job = _Job(model, flights, asyncio.get_running_loop().time())
        return await self._batches.submit((model.triton_name, model.version), job)

    async def _score_batch(self, key: tuple[str, str], batch: list[_Job]) -> list[OnlineScores]:
        if self.store is None:
            raise StoreUnavailable("feature store not opened")
        if self.client is None:
            raise ModelServerUnavailable("Triton client not connected")
        model = batch[0].model
        flights = batch[0].flights if len(batch) == 1 else [f for job in batch for f in job.flights]
        if self.store.online_reads_in_process:
            # A local SQLite file (bounded by its busy timeout, the online timeout): on a worker
            # thread the read and MDT only traded the GIL back and forth with this loop, which
            # cost a third of the throughput at 16 connections (benchmarks/online_load.py).
            inputs = online_inputs(self.store, model, flights)
        else:
            deadline = self._store_deadline(key, batch[0].arrived)
            inputs = await self.with_store(online_inputs, self.store, model, flights, due=deadline)
            self._store_passed[key] = asyncio.get_running_loop().time()
        began = time.perf_counter()
        probabilities = await self.client.infer(model.triton_name, model.version, inputs.matrices)
        triton_s = time.perf_counter() - began
        sizes = [len(job.flights) for job in batch]
        bounds = itertools.accumulate(sizes, initial=0)
        return [
            OnlineScores(part, probabilities[start:stop].tolist(), triton_s)
            for part, (start, stop) in zip(
                inputs.split(sizes), itertools.pairwise(bounds), strict=True
            )
        ]

    def _store_deadline(self, key: tuple[str, str], first_arrived: float) -> float:
        """When this batch's store read must have answered: one deadline per request, the
        online timeout from its arrival, whatever it waited for.

        A request that arrives while a batch is in flight waits for the next batch. When the
        batch ahead hangs on the store, that wait is store time too: with a deadline per store
        call, a request queued behind a hung read got a 503 after up to twice the timeout. The
        time queued while the batch ahead was in Triton does not count (Triton has its own
        deadline, and a 503 must name the dependency at fault). The batch's earliest request
        has waited longest, so its deadline is the batch's."""
        now = asyncio.get_running_loop().time()
        passed = self._store_passed.pop(key, None)  # None: the batch ahead failed its read
        waited = now - first_arrived if passed is None else max(0.0, passed - first_arrived)
        return now + self.settings.online_timeout_s - waited

    async def with_store(self, fn: Callable[..., T], *args: object, due: float | None = None) -> T:
        """Run a blocking feature store call on a store thread, answered by ``due`` (loop time;
        default: within the online timeout from now)."""
        loop = asyncio.get_running_loop()
        timeout = self.settings.online_timeout_s
        try:
            # asyncio.timeout, not wait_for: no extra task per call (Python 3.11).
            async with asyncio.timeout_at(loop.time() + timeout if due is None else due):
                return await loop.run_in_executor(self._store_threads, fn, *args)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"online feature store did not answer within {timeout:g} s"
            ) from exc

    # -- readiness --------------------------------------------------------------------------

    async def check_store(self) -> CheckResult:
        """The store the next process would open (a deleted or replaced SQLite file shows
        here, not only in a fresh process) with the served view's tables, and a read."""
        if self.store is None:
            return CheckResult(False, "not opened")
        store = self.store
        probe = pl.DataFrame({"carrier": ["__readiness__"]})
        groups = {j.group.table_name: j.group for m in self._models.values() for j in m.view.joins}
        try:
            await self.with_store(store.check_online, list(groups.values()))
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
            self.spawn(self.heal(), "heal")
            return CheckResult(False, f"{model.triton_name} v{model.version} not loaded")
        return CheckResult(True, f"{model.triton_name} v{model.version} ready")
