"""Which served version answers which flight: the champion, a canary challenger
(``FTI_CANARY_SHARE``), and the challenger in shadow (``FTI_SHADOW``).

A canary takes a share of flights, sticky per flight id (the same flight goes to the same
version in every worker, replica and restart); a failing canary never fails a client: its
flights go to the champion. In shadow, the challenger scores every request after the response,
for the comparison once labels arrive. A version retired by a switch while a request was on
its way is retried once with the version serving the role now.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inference_pipeline.model_artifact import ServingModel
from inference_pipeline.scoring import OnlineInputs, request_flight_id
from inference_pipeline.service.background import BackgroundTasks
from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.pipeline import OnlineScores, ScoringPipeline
from inference_pipeline.service.prediction_handoff import PredictionHandoff
from inference_pipeline.service.served_models import ServedModels
from inference_pipeline.settings import InferenceSettings
from shared.errors import FTIError, ModelServerUnavailable
from shared.prediction_log import ONLINE_SOURCE, SHADOW_SOURCE, LoggedPredictions
from shared.registry import CHALLENGER, CHAMPION


def canary_bucket(key: str) -> float:
    """A stable number in [0, 1) per key (not Python's salted ``hash``): the same flight goes to
    the same version in every worker, replica and restart."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass
class Scored:
    """One version's share of a request: its model, inputs and probabilities, and which rows
    of the request they are."""

    rows: list[int]
    model: ServingModel
    inputs: OnlineInputs
    probabilities: list[float]


class Traffic:
    def __init__(
        self,
        settings: InferenceSettings,
        metrics: ServiceMetrics,
        failures: FailureLog,
        models: ServedModels,
        pipeline: ScoringPipeline,
        tasks: BackgroundTasks,
        prediction_log: PredictionHandoff | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.failures = failures
        self.models = models
        self.pipeline = pipeline
        self.prediction_log = prediction_log
        self._tasks = tasks

    @property
    def canary_active(self) -> bool:
        return self.settings.canary_share > 0 and self.models.challenger is not None

    def canary_role(self, flight_id: str) -> str:
        """Which role answers this flight: sticky, since the bucket is a hash of the key."""
        if self.canary_active and canary_bucket(flight_id) < self.settings.canary_share:
            return CHALLENGER
        return CHAMPION

    async def answer(
        self, flights: list[dict[str, Any]], request_id: str, test: bool, began: float
    ) -> list[Scored]:
        """Score ``flights`` with the version(s) that answer them (and log them); in shadow,
        the challenger scores them too, after the response."""
        scored = await self._score_by_role(flights)
        if self.prediction_log is not None:
            total_s = time.perf_counter() - began
            entries = [
                _log_entry(part, request_id, ONLINE_SOURCE, total_s, test) for part in scored
            ]
            appended = self.prediction_log.submit(entries)
            if appended is not None:  # in the sink before the response: nothing answered is lost
                await appended
        if self.settings.shadow and self.models.challenger is not None:
            self._tasks.spawn(self._shadow(flights, request_id, test), "shadow")
        return scored

    async def _score_by_role(self, flights: list[dict[str, Any]]) -> list[Scored]:
        roles: dict[str, list[int]] = {}
        if self.canary_active:
            for row, flight in enumerate(flights):
                roles.setdefault(self.canary_role(request_flight_id(flight)), []).append(row)
        else:  # the usual case: no per-flight routing work on the hot path
            roles[CHAMPION] = list(range(len(flights)))
        scored = []
        for role, rows in roles.items():
            part = flights if len(rows) == len(flights) else [flights[i] for i in rows]
            try:
                model, scores = await self._score(role, part)
            except ModelServerUnavailable:
                if role != CHALLENGER:
                    raise
                self.failures.failed(
                    "challenger", "canary challenger failed; the champion answers its flights"
                )
                model, scores = await self._score(CHAMPION, part)
            if self.settings.canary_share > 0:
                self.metrics.role_flights.labels(role, "canary").inc(len(rows))
            scored.append(Scored(rows, model, scores.inputs, scores.probabilities))
        return scored

    async def _score(
        self, role: str, flights: list[dict[str, Any]]
    ) -> tuple[ServingModel, OnlineScores]:
        """Score with ``role``'s model; when a switch retired that version meanwhile, once more
        with the version serving the role now."""
        stages = self.metrics.stages
        model = self.models.for_role(role)
        try:
            scored = await self.pipeline.score(model, flights)
        except ModelServerUnavailable:
            now = self.models.for_role(role)
            if now is model:
                raise
            model, scored = now, await self.pipeline.score(now, flights)
        stages.features.observe(scored.inputs.features_s)
        stages.transform.observe(scored.inputs.transform_s)
        stages.triton.observe(scored.triton_s)
        return model, scored

    async def _shadow(self, flights: list[dict[str, Any]], request_id: str, test: bool) -> None:
        """The challenger scores the same flights, logged beside the champion's predictions
        (source ``shadow``). Never raises."""
        began = time.perf_counter()
        try:
            model, scores = await self._score(CHALLENGER, flights)
        except FTIError as exc:
            self.metrics.shadow_failures.inc()
            self.failures.failed("shadow", f"shadow scoring failed: {exc}")
            return
        self.metrics.role_flights.labels(CHALLENGER, "shadow").inc(len(flights))
        if self.prediction_log is not None:
            part = Scored(list(range(len(flights))), model, scores.inputs, scores.probabilities)
            elapsed = time.perf_counter() - began
            self.prediction_log.submit([_log_entry(part, request_id, SHADOW_SOURCE, elapsed, test)])


def _log_entry(
    part: Scored, request_id: str, source: str, total_s: float, test: bool
) -> LoggedPredictions:
    """What the log needs of one scored part: references only; the hand-off serialises a
    batch's raw values once, and the log writer, in its own process, turns them into rows."""
    inputs = part.inputs
    return LoggedPredictions(
        flight_ids=inputs.flight_ids,
        columns=inputs.features.columns,
        window=inputs.features.window,
        features=part.model.input_features,
        probabilities=part.probabilities,
        missing=[report.missing_features for report in inputs.reports],
        model_version=part.model.version,
        request_id=request_id,
        scored_at=datetime.now(UTC),
        source=source,
        latency_ms=total_s * 1000.0,
        test_traffic=test,
    )
