"""HTTP routes: predictions, health and readiness, metrics, admin."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_pipeline.model_artifact import ServingModel
from inference_pipeline.scoring import OnlineInputs, online_inputs
from inference_pipeline.service.dependencies import AdminKey, ApiKey, Runtime, Store, Triton
from inference_pipeline.service.runtime import ServiceRuntime
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
from shared.errors import ModelServerUnavailable
from shared.prediction_log import ONLINE_SOURCE, prediction_record

log = logging.getLogger(__name__)

predictions = APIRouter(prefix="/v1", tags=["predictions"], dependencies=[ApiKey])
health = APIRouter(tags=["operations"])
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "a dependency is down or too slow"}
}


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
) -> PredictionResponse:
    began = time.perf_counter()
    request_id = request.state.request_id
    settings, metrics = runtime.settings, runtime.metrics
    if len(body.flights) > settings.max_flights_per_request:
        raise _too_many(len(body.flights), settings.max_flights_per_request)
    flights = [f.model_dump() for f in body.flights]
    model = runtime.model
    for attempt in (1, 2):
        inputs = await runtime.with_store(online_inputs, store, model, flights)
        metrics.stage_seconds.labels("features").observe(inputs.features_s)
        metrics.stage_seconds.labels("transform").observe(inputs.transform_s)
        stage = time.perf_counter()
        try:
            probability = await triton.infer(model.triton_name, model.version, inputs.matrices)
            break
        except ModelServerUnavailable:
            if attempt == 1 and runtime.model is not model:
                model = runtime.model  # reloaded meanwhile: the old version is retired
                continue
            asyncio.get_running_loop().create_task(runtime.heal())
            raise
        finally:
            metrics.stage_seconds.labels("triton").observe(time.perf_counter() - stage)
    total_s = time.perf_counter() - began
    metrics.stage_seconds.labels("total").observe(total_s)
    metrics.flights.inc(len(flights))
    for report in inputs.reports:
        for feature in report.missing_features:
            metrics.imputed.labels(feature).inc()
    probabilities = probability.tolist()
    if runtime.writer is not None:
        background.add_task(
            _log_predictions, runtime, flights, inputs, model, probabilities, request_id, total_s
        )
    return PredictionResponse(
        request_id=request_id,
        model_version=model.version,
        predictions=[
            FlightPrediction(
                flight_id=fid,
                probability=p,
                model_version=model.version,
                missing_features=r.missing_features,
                unknown_categories=r.unknown_categories,
                missing_groups=r.missing_groups,
            )
            for fid, p, r in zip(inputs.flight_ids, probabilities, inputs.reports, strict=True)
        ],
    )


def _too_many(count: int, limit: int) -> Exception:
    from fastapi import HTTPException

    return HTTPException(
        422,
        f"{count} flights in one request; at most {limit} (FTI_MAX_FLIGHTS_PER_REQUEST)",
    )


def _log_predictions(
    runtime: ServiceRuntime,
    flights: list[dict[str, Any]],
    inputs: OnlineInputs,
    model: ServingModel,
    probabilities: list[float],
    request_id: str,
    total_s: float,
) -> None:
    """After the response is sent: queue plain log records for the batched writer."""
    assert runtime.writer is not None
    scored_at = datetime.now(UTC)
    names = model.input_features
    runtime.writer.submit(
        [
            prediction_record(
                inputs.flight_ids[i],
                flight["flight_date"],
                flight["sched_dep_time"],
                inputs.features.row(i, names),
                probabilities[i],
                inputs.reports[i].missing_features,
                model_version=model.version,
                request_id=request_id,
                scored_at=scored_at,
                source=ONLINE_SOURCE,
                latency_ms=total_s * 1000.0,
            )
            for i, flight in enumerate(flights)
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
