"""HTTP routes: predictions, health and readiness, metrics, admin."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_pipeline.model_artifact import ServingModel
from inference_pipeline.scoring import (
    AsyncTritonClient,
    OnlineInputs,
    online_inputs,
    request_flight_id,
)
from inference_pipeline.service.dependencies import AdminKey, ApiKey, Runtime, Store, Triton
from inference_pipeline.service.runtime import CHALLENGER, CHAMPION, ServiceRuntime
from inference_pipeline.service.schemas import (
    DependencyCheck,
    ErrorBody,
    FlightPrediction,
    PredictionRequest,
    PredictionResponse,
    Readiness,
    ReloadRequest,
    ReloadResponse,
)
from shared.errors import FTIError, ModelServerUnavailable
from shared.feature_store import FeatureStore
from shared.prediction_log import ONLINE_SOURCE, SHADOW_SOURCE, prediction_record

log = logging.getLogger(__name__)

predictions = APIRouter(prefix="/v1", tags=["predictions"], dependencies=[ApiKey])
health = APIRouter(tags=["operations"])
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "a dependency is down or too slow"}
}


@dataclass
class _Scored:
    """One role's share of a request: its model, inputs and probabilities, in request order."""

    rows: list[int]
    model: ServingModel
    inputs: OnlineInputs
    probabilities: list[float]


async def _score(
    runtime: ServiceRuntime,
    store: FeatureStore,
    triton: AsyncTritonClient,
    role: str,
    flights: list[dict[str, Any]],
) -> tuple[ServingModel, OnlineInputs, list[float]]:
    """Features -> MDT -> Triton with ``role``'s model; when a switch retired that version
    meanwhile, once more with the version serving the role now."""
    metrics = runtime.metrics
    model = runtime.model_for(role)
    for attempt in (1, 2):
        inputs = await runtime.with_store(online_inputs, store, model, flights)
        metrics.stage_seconds.labels("features").observe(inputs.features_s)
        metrics.stage_seconds.labels("transform").observe(inputs.transform_s)
        stage = time.perf_counter()
        try:
            probability = await triton.infer(model.triton_name, model.version, inputs.matrices)
            return model, inputs, probability.tolist()
        except ModelServerUnavailable:
            if attempt == 1 and runtime.model_for(role) is not model:
                model = runtime.model_for(role)
                continue
            asyncio.get_running_loop().create_task(runtime.heal())
            raise
        finally:
            metrics.stage_seconds.labels("triton").observe(time.perf_counter() - stage)
    raise AssertionError("unreachable")


async def _score_by_role(
    runtime: ServiceRuntime,
    store: FeatureStore,
    triton: AsyncTritonClient,
    flights: list[dict[str, Any]],
) -> list[_Scored]:
    """Split the flights between champion and a canary challenger (sticky per flight id); a
    failing canary never fails a client: its flights go to the champion instead."""
    roles: dict[str, list[int]] = {}
    if runtime.canary_active:
        for row, flight in enumerate(flights):
            roles.setdefault(runtime.canary_role(request_flight_id(flight)), []).append(row)
    else:  # the usual case: no per-flight routing work on the hot path
        roles[CHAMPION] = list(range(len(flights)))
    scored = []
    for role, rows in roles.items():
        part = flights if len(rows) == len(flights) else [flights[i] for i in rows]
        try:
            model, inputs, probabilities = await _score(runtime, store, triton, role, part)
        except ModelServerUnavailable:
            if role != CHALLENGER:
                raise
            log.warning("canary challenger failed; the champion answers its flights")
            model, inputs, probabilities = await _score(runtime, store, triton, CHAMPION, part)
        if runtime.settings.canary_share > 0:
            runtime.metrics.role_flights.labels(role, "canary").inc(len(rows))
        scored.append(_Scored(rows, model, inputs, probabilities))
    return scored


@predictions.post(
    "/predictions",
    response_model=PredictionResponse,
    responses={422: {"model": ErrorBody}, **_UNAVAILABLE},
    summary="Probability that each scheduled departure leaves more than 15 minutes late",
)
async def predict(
    body: PredictionRequest,
    request: Request,
    runtime: Runtime,
    store: Store,
    triton: Triton,
    background: BackgroundTasks,
) -> Response:
    began = time.perf_counter()
    request_id = request.state.request_id
    settings, metrics = runtime.settings, runtime.metrics
    if len(body.flights) > settings.max_flights_per_request:
        raise _too_many(len(body.flights), settings.max_flights_per_request)
    flights = [f.model_dump() for f in body.flights]
    scored = await _score_by_role(runtime, store, triton, flights)
    total_s = time.perf_counter() - began
    metrics.stage_seconds.labels("total").observe(total_s)
    metrics.flights.inc(len(flights))
    answers: list[FlightPrediction | None] = [None] * len(flights)
    for part in scored:
        version = part.model.version
        for i, row in enumerate(part.rows):
            report = part.inputs.reports[i]
            for feature in report.missing_features:
                metrics.imputed.labels(feature).inc()
            answers[row] = FlightPrediction(
                flight_id=part.inputs.flight_ids[i],
                probability=part.probabilities[i],
                model_version=version,
                missing_features=report.missing_features,
                unknown_categories=report.unknown_categories,
                missing_groups=report.missing_groups,
            )
        if runtime.writer is not None:
            background.add_task(
                _log_predictions, runtime, part, flights, request_id, ONLINE_SOURCE, total_s
            )
    if settings.shadow and runtime.challenger is not None:
        background.add_task(_shadow, runtime, store, triton, flights, request_id)
    versions = {part.model.version for part in scored}
    body = PredictionResponse(
        request_id=request_id,
        # With a canary splitting one request, each prediction names its own version.
        model_version=versions.pop() if len(versions) == 1 else runtime.model.version,
        predictions=[a for a in answers if a is not None],
    )
    # Serialised once here: returning the model would have FastAPI validate it again first.
    return Response(body.model_dump_json(), media_type="application/json")


async def _shadow(
    runtime: ServiceRuntime,
    store: FeatureStore,
    triton: AsyncTritonClient,
    flights: list[dict[str, Any]],
    request_id: str,
) -> None:
    """After the response: the challenger scores the same flights, logged beside the champion's
    predictions (source ``shadow``) for the comparison once labels arrive. Never raises."""
    began = time.perf_counter()
    try:
        model, inputs, probabilities = await _score(runtime, store, triton, CHALLENGER, flights)
    except FTIError as exc:
        runtime.metrics.shadow_failures.inc()
        log.warning("shadow scoring failed: %s", exc)
        return
    runtime.metrics.role_flights.labels(CHALLENGER, "shadow").inc(len(flights))
    if runtime.writer is not None:
        part = _Scored(list(range(len(flights))), model, inputs, probabilities)
        elapsed = time.perf_counter() - began
        await _log_predictions(runtime, part, flights, request_id, SHADOW_SOURCE, elapsed)


def _too_many(count: int, limit: int) -> Exception:
    from fastapi import HTTPException

    return HTTPException(
        422,
        f"{count} flights in one request; at most {limit} (FTI_MAX_FLIGHTS_PER_REQUEST)",
    )


async def _log_predictions(
    runtime: ServiceRuntime,
    part: _Scored,
    flights: list[dict[str, Any]],
    request_id: str,
    source: str,
    total_s: float,
) -> None:
    """After the response is sent: queue plain log records for the batched writer (``async``
    only so that Starlette runs it on the event loop rather than in its thread pool)."""
    assert runtime.writer is not None
    scored_at = datetime.now(UTC)
    model, inputs = part.model, part.inputs
    names = model.input_features
    runtime.writer.submit(
        [
            prediction_record(
                inputs.flight_ids[i],
                flights[row]["flight_date"],
                flights[row]["sched_dep_time"],
                inputs.features.row(i, names),
                part.probabilities[i],
                inputs.reports[i].missing_features,
                model_version=model.version,
                request_id=request_id,
                scored_at=scored_at,
                source=source,
                latency_ms=total_s * 1000.0,
            )
            for i, row in enumerate(part.rows)
        ]
    )


@health.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="Readiness: feature store, registry and Triton reachable, model loaded",
)
async def readyz(runtime: Runtime, response: Response) -> Readiness:
    store, registry, triton = await asyncio.gather(
        runtime.check_store(), runtime.check_registry(), runtime.check_triton()
    )
    checks = {
        "feature_store": DependencyCheck(ok=store.ok, detail=store.detail),
        "registry": DependencyCheck(ok=registry.ok, detail=registry.detail),
        "triton": DependencyCheck(ok=triton.ok, detail=triton.detail),
    }
    ready = all(c.ok for c in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(ready=ready, model_version=runtime.model.version, checks=checks)


@health.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: Runtime) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@admin.post(
    "/reload",
    response_model=ReloadResponse,
    responses={503: {"model": ErrorBody}},
    summary="Load the version an alias points to now, and serve it",
)
async def reload(body: ReloadRequest, runtime: Runtime) -> ReloadResponse | JSONResponse:
    previous, model = await runtime.reload(body.alias)
    return ReloadResponse(
        alias=body.alias, previous_version=previous.version, version=model.version
    )
