"""What the service holds between requests, started in the app lifespan (model loading
happens there, before the first request) and closed after the last.

It only assembles the parts, each a module of its own concern:

- `store_access.StoreAccess`: the feature store, called with a deadline;
- `triton_link.TritonLink`: Triton (managed subprocess or external), its client, restarts
  and healing;
- `served_models.ServedModels`: the versions served by role, rollouts, alias following;
- `pipeline.ScoringPipeline`: features -> MDT -> Triton, coalesced per version;
- `traffic.Traffic`: which version answers which flight (canary, shadow);
- `readiness.DependencyChecks`: ``/readyz``;
- the prediction log's hand-off to its sink (the log writer is another process).

A prediction request passes through each once: HTTP (`app`, `routes`) -> the endpoint
(`prediction_requests`) -> `Traffic` -> `ScoringPipeline`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from inference_pipeline.prediction_sink.configured import open_sink
from inference_pipeline.service.background import BackgroundTasks
from inference_pipeline.service.downloads import Downloads
from inference_pipeline.service.errors import failure_log
from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.pipeline import ScoringPipeline
from inference_pipeline.service.prediction_handoff import PredictionHandoff
from inference_pipeline.service.readiness import DependencyChecks
from inference_pipeline.service.served_models import ServedModels
from inference_pipeline.service.store_access import StoreAccess
from inference_pipeline.service.traffic import Traffic
from inference_pipeline.service.triton_link import TritonLink
from inference_pipeline.settings import InferenceSettings
from shared.feature_store import open_feature_store
from shared.registry import ModelRegistry

log = logging.getLogger(__name__)


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
        self.tasks = BackgroundTasks()
        self.downloads = Downloads(settings.serving_dir / "artifacts")
        self.triton = TritonLink(settings, metrics, self.tasks, served=lambda: self.models.all())
        self.models = ServedModels(settings, metrics, self.triton, self.downloads, self.tasks)
        self.store: StoreAccess | None = None
        self.prediction_log: PredictionHandoff | None = None
        self._traffic: Traffic | None = None
        self._checks: DependencyChecks | None = None

    async def start(self) -> None:
        s = self.settings
        await asyncio.to_thread(self.downloads.open)
        store = await asyncio.to_thread(open_feature_store, s.store_settings())
        self.store = StoreAccess(store, s.online_timeout_s)
        self.models.registry = await asyncio.to_thread(ModelRegistry, s.registry_settings())
        champion = await self.models.fetch_champion()  # first: a managed Triton serves it
        await self.triton.start()
        await self.models.serve_first(champion)
        if s.prediction_log:
            sink = await asyncio.to_thread(open_sink, s)
            self.prediction_log = PredictionHandoff(sink, self.metrics, self.failures)
            self.prediction_log.start(self.tasks)
        pipeline = ScoringPipeline(self.store, self.triton, self.metrics.batch_requests.observe)
        self._traffic = Traffic(
            s, self.metrics, self.failures, self.models, pipeline, self.tasks, self.prediction_log
        )
        self._checks = DependencyChecks(self.store, self.models, self.triton, s.registry_timeout_s)
        if s.alias_poll_s > 0:
            self.tasks.spawn(self.models.follow_aliases(), "alias-follower")
        log.info(
            "serving %s version %s (%s)", champion.triton_name, champion.version, champion.alias
        )

    @property
    def traffic(self) -> Traffic:
        if self._traffic is None:
            raise RuntimeError("the service runtime is not started")
        return self._traffic

    @property
    def checks(self) -> DependencyChecks:
        if self._checks is None:
            raise RuntimeError("the service runtime is not started")
        return self._checks

    def liveness_problem(self) -> str | None:
        """Why the process should be restarted by its supervisor (`/healthz` 503), or None."""
        return self.triton.liveness_problem()

    async def close(self) -> None:
        """Stop the background work and release every dependency, in order. Every step runs,
        whatever the steps before it did (the prediction log sealed, the downloads removed,
        the store closed): one that hangs is left behind after `CLOSE_STEP_S` and logged with
        what every task and thread was doing; one that fails is logged, and the first failure
        is raised once every step has run."""
        shutdown = _Shutdown()
        if self.triton.supervisor is not None:
            shutdown.run("Triton supervisor", self.triton.supervisor.close)
        await shutdown.bounded("background tasks", self.tasks.close())
        if self.prediction_log is not None:
            shutdown.run("prediction log", self.prediction_log.close)
        await shutdown.bounded("Triton client", self.triton.close())
        shutdown.run("downloads", self.downloads.close)
        if self.store is not None:
            await shutdown.bounded("feature store", self.store.close())
        shutdown.raise_first()


# How long one step of the shutdown may take before it is left behind. A worker's shutdown
# once hung in CI past the 60 s its supervisor was given, with nothing in its log to say on
# what; Kubernetes gives a pod 30 s before it kills it.
CLOSE_STEP_S = 5.0


class _Shutdown:
    """The steps of one shutdown: each runs whatever the others did, and their failures are
    kept for the end."""

    def __init__(self) -> None:
        self._failures: list[Exception] = []

    def run(self, what: str, close: Callable[[], None]) -> None:
        try:
            close()
        except Exception as exc:
            self._failed(what, exc)

    async def bounded(self, what: str, closing: Coroutine[Any, Any, None]) -> None:
        """Await ``closing`` for at most `CLOSE_STEP_S`; past that, log the stacks of every
        task and thread (what it waits on) and leave it: it is cancelled with the loop's other
        tasks when the server stops, and a failure it ends with later is logged then."""
        step = asyncio.ensure_future(closing)
        done, _ = await asyncio.wait({step}, timeout=CLOSE_STEP_S)
        if step in done:
            if step.cancelled():
                log.error("shutdown: closing the %s was cancelled", what)
            elif isinstance(exc := step.exception(), Exception):
                self._failed(what, exc)
            elif exc is not None:  # KeyboardInterrupt, SystemExit: not ours to hold
                raise exc
            return
        log.error(
            "shutdown: %s did not close within %g s; left behind. What each task and thread "
            "was doing:\n%s",
            what,
            CLOSE_STEP_S,
            _stacks(),
        )
        step.add_done_callback(functools.partial(_failed_late, what))

    def raise_first(self) -> None:
        if self._failures:
            raise self._failures[0]

    def _failed(self, what: str, exc: Exception) -> None:
        log.error("shutdown: closing the %s failed: %s: %s", what, type(exc).__name__, exc)
        self._failures.append(exc)


def _failed_late(what: str, step: asyncio.Future[None]) -> None:
    """A step left behind ended: its failure, if any, is logged (retrieved, so asyncio does not
    report it as never retrieved)."""
    if not step.cancelled() and (exc := step.exception()) is not None:
        log.error(
            "shutdown: closing the %s failed after it was left behind: %s: %s",
            what,
            type(exc).__name__,
            exc,
        )


def _stacks() -> str:
    """The stack of every pending asyncio task of this loop and of every thread."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        if not task.done():
            out.write(f"task {task.get_name()}:\n")
            task.print_stack(limit=12, file=out)
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident) if thread.ident is not None else None
        if frame is not None:
            out.write(f"thread {thread.name}:\n{''.join(traceback.format_stack(frame, 12))}")
    return out.getvalue()
