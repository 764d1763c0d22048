"""HTTP routes: predictions, health and readiness, metrics, admin."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from inference_pipeline.model_artifact import ServingModel
from inference_pipeline.scoring import OnlineInputs, request_flight_id
from inference_pipeline.service.dependencies import (
    API_KEY_HEADER,
    API_KEY_SCHEME,
    AdminKey,
    Runtime,
    check_api_key,
)
from inference_pipeline.service.errors import ApiError, describe, invalid_request
from inference_pipeline.service.runtime import CHALLENGER, CHAMPION, ServiceRuntime
from inference_pipeline.service.schemas import (
    DependencyCheck,
    ErrorBody,
    Liveness,
    PredictionRequest,
    PredictionResponse,
    Readiness,
    ReloadRequest,
    ReloadResponse,
)
from inference_pipeline.settings import InferenceSettings
from shared.errors import FTIError, ModelServerUnavailable
from shared.prediction_log import ONLINE_SOURCE, SHADOW_SOURCE, LoggedPredictions
from shared.prediction_time import PREDICTION_TIME, epoch_us, instant_of, now_us

PREDICTIONS_PATH = "/v1/predictions"

predictions = APIRouter(prefix="/v1", tags=["predictions"])
health = APIRouter(tags=["operations"])
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "a dependency is down or too slow"}
}
# What any route reading a JSON body may answer before looking at it.
_BODY_REFUSALS: dict[int | str, dict[str, Any]] = {
    408: {
        "model": ErrorBody,
        "description": "the body did not arrive within FTI_BODY_TIMEOUT_S; the connection "
        "is closed",
    },
    415: {"model": ErrorBody, "description": "Content-Type is not application/json"},
    422: {
        "model": ErrorBody,
        "description": "the body is not JSON of the schema, or breaks a limit (every problem "
        "is listed)",
    },
}
_JSON = "application/json"


@dataclass
class _Scored:
    """One role's share of a request: its model, inputs and probabilities, in request order."""

    rows: list[int]
    model: ServingModel
    inputs: OnlineInputs
    probabilities: list[float]


async def _score(
    runtime: ServiceRuntime, role: str, flights: list[dict[str, Any]]
) -> tuple[ServingModel, OnlineInputs, list[float]]:
    """Features -> MDT -> Triton with ``role``'s model; when a switch retired that version
    meanwhile, once more with the version serving the role now."""
    stages = runtime.metrics.stages
    model = runtime.model_for(role)
    for attempt in (1, 2):
        try:
            scored = await runtime.score(model, flights)
        except ModelServerUnavailable:
            if attempt == 1 and runtime.model_for(role) is not model:
                model = runtime.model_for(role)
                continue
            runtime.spawn(runtime.heal(), "heal")
            raise
        stages.features.observe(scored.inputs.features_s)
        stages.transform.observe(scored.inputs.transform_s)
        stages.triton.observe(scored.triton_s)
        return model, scored.inputs, scored.probabilities
    raise AssertionError("unreachable")


async def _score_by_role(runtime: ServiceRuntime, flights: list[dict[str, Any]]) -> list[_Scored]:
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
            model, inputs, probabilities = await _score(runtime, role, part)
        except ModelServerUnavailable:
            if role != CHALLENGER:
                raise
            runtime.failures.failed(
                "challenger", "canary challenger failed; the champion answers its flights"
            )
            model, inputs, probabilities = await _score(runtime, CHAMPION, part)
        if runtime.settings.canary_share > 0:
            runtime.metrics.role_flights.labels(role, "canary").inc(len(rows))
        scored.append(_Scored(rows, model, inputs, probabilities))
    return scored


# The request body and the API key are checked by hand (below) rather than declared as a
# parameter and a dependency: FastAPI's generic body handling and dependency solving cost a
# sizeable share of a one-flight prediction. The documented schema and security stay the same.
def _json_body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


TEST_TRAFFIC_HEADER = "X-FTI-Test-Traffic"
_HAND_CHECKED = {
    "security": [{scheme: [] for scheme in API_KEY_SCHEME}],
    **_json_body("PredictionRequest"),
    "parameters": [
        {
            "name": TEST_TRAFFIC_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "boolean", "default": False},
            "description": "true: a test request (smoke tests, load tests, demos). Answered "
            "and logged like any other, marked test_traffic in the prediction log, and left "
            "out of monitoring unless it is run with --include-test-traffic",
        }
    ],
}


def is_test_traffic(value: str | None) -> bool:
    """The ``X-FTI-Test-Traffic`` header's value as a flag (absent: production traffic)."""
    if value is None:
        return False
    flag = value.strip().lower()
    if flag in ("true", "1"):
        return True
    if flag in ("false", "0"):
        return False
    raise invalid_request([f"{TEST_TRAFFIC_HEADER}: {value!r} is not true or false"])


def check_json(content_type: str | None) -> None:
    """Refuse (415) a body that does not say it is JSON: a form or text posted by mistake is
    named for what it is, instead of failing as "invalid JSON" or being guessed at."""
    if content_type == _JSON:  # the usual case, without parsing
        return
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != _JSON:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'!s} is not accepted: send the body as "
            f"JSON with Content-Type: {_JSON}",
        )


def _parse(body: bytes) -> PredictionRequest:
    """The body as a `PredictionRequest` (pydantic's own JSON parser); a bad one -> 422."""
    try:
        return PredictionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request([describe(e) for e in exc.errors(include_url=False)]) from None


async def answer_predictions(
    runtime: ServiceRuntime,
    api_key: str | None,
    content_type: str | None,
    body: bytes,
    request_id: str,
    test_traffic: str | None = None,
) -> bytes:
    """The JSON answer to a prediction request (its ``X-API-Key``, ``Content-Type`` and
    ``X-FTI-Test-Traffic`` headers and raw body), free of any web framework: both the plain
    ASGI path and the FastAPI route answer with it. Raises `ApiError` for a request to refuse,
    `FTIError` for a dependency that failed."""
    began = time.perf_counter()
    arrival = now_us()  # T of every flight that names none (invariant 7: one clock)
    if len(body) > max_body_bytes(runtime.settings):
        raise body_too_large(runtime.settings)
    check_api_key(api_key, runtime)
    check_json(content_type)
    test = is_test_traffic(test_traffic)
    request = _parse(body)
    settings, metrics = runtime.settings, runtime.metrics
    if len(request.flights) > settings.max_flights_per_request:
        raise invalid_request([_too_many(len(request.flights), settings.max_flights_per_request)])
    flights = flights_as_of(request, arrival)
    scored = await _score_by_role(runtime, flights)
    total_s = time.perf_counter() - began
    metrics.stages.total.observe(total_s)
    metrics.flights.inc(len(flights))
    answers: list[dict[str, Any]] = [{}] * len(flights)
    for part in scored:
        version = part.model.version
        for i, row in enumerate(part.rows):
            report = part.inputs.reports[i]
            for feature in report.missing_features:
                metrics.imputed.labels(feature).inc()
            answers[row] = {
                "flight_id": part.inputs.flight_ids[i],
                "probability": part.probabilities[i],
                "model_version": version,
                "prediction_time": instant_of(flights[row][PREDICTION_TIME]).isoformat(),
                "lead_minutes": part.model.lead_minutes,
                "missing_features": report.missing_features,
                "unknown_categories": report.unknown_categories,
                "missing_groups": report.missing_groups,
            }
        if runtime.writer is not None:
            runtime.writer.submit(_log_entry(part, request_id, ONLINE_SOURCE, total_s, test))
    if settings.shadow and runtime.challenger is not None:
        runtime.spawn(_shadow(runtime, flights, request_id, test), "shadow")
    versions = {part.model.version for part in scored}
    response = {
        "request_id": request_id,
        # With a canary splitting one request, each prediction names its own version.
        "model_version": versions.pop() if len(versions) == 1 else runtime.model.version,
        "predictions": answers,
    }
    # Plain values, serialised once: the response model documents the shape (and the tests
    # check responses against it); validating our own output again costs per request.
    return json_bytes(response)


@predictions.post(
    PREDICTIONS_PATH.removeprefix("/v1"),
    response_model=PredictionResponse,
    responses={
        401: {"model": ErrorBody, "description": "no API key"},
        403: {"model": ErrorBody, "description": "wrong API key"},
        **_BODY_REFUSALS,
        413: {"model": ErrorBody, "description": "body larger than the flight limit allows"},
        **_UNAVAILABLE,
    },
    summary="Probability that each scheduled departure leaves more than 15 minutes late",
    openapi_extra=_HAND_CHECKED,
)
async def predict(request: Request) -> Response:
    """FastAPI's route: OpenAPI documents it, and it answers whatever the plain ASGI path in
    front (`app.PredictionService`) passes on; both answer with `answer_predictions`."""
    runtime: ServiceRuntime = request.app.state.runtime
    headers = request.headers
    content = await answer_predictions(
        runtime,
        headers.get(API_KEY_HEADER),
        headers.get("content-type"),
        await request.body(),
        request.state.request_id,
        headers.get(TEST_TRAFFIC_HEADER),
    )
    return Response(content, media_type="application/json")


# A client's clock may run a little ahead of ours: an as_of up to this far after the arrival
# is taken as "now"-ish, not refused (its T is still the as_of given).
_AS_OF_SKEW_US = 60_000_000


def flights_as_of(request: PredictionRequest, arrival: int) -> list[dict[str, Any]]:
    """The request's flights as plain values, each with its T under ``prediction_time`` (epoch
    microseconds): its own ``as_of``, else the request's, else the ``arrival``. A T in the
    future is refused (422): no feature value is known yet for it, and an answer would claim
    knowledge it does not have."""
    flights: list[dict[str, Any]] = request.model_dump()["flights"]
    default = arrival if request.as_of is None else epoch_us(request.as_of)
    late = []
    for index, flight in enumerate(flights):
        own = flight.pop("as_of")
        t = default if own is None else epoch_us(own)
        flight[PREDICTION_TIME] = t
        if t > arrival + _AS_OF_SKEW_US:
            late.append("as_of" if own is None else f"flights[{index}].as_of")
    if late:
        raise invalid_request(
            [
                f"{name}: {instant_of(arrival).isoformat()} is now; as_of must not be in the "
                "future (omit it to predict as of now)"
                for name in dict.fromkeys(late)
            ]
        )
    return flights


def max_body_bytes(settings: InferenceSettings) -> int:
    """The largest prediction request body read: a flight's JSON is ~200 bytes, so 1 KiB per
    allowed flight refuses only what could never be a valid request."""
    return 1024 * settings.max_flights_per_request + 1024


def body_too_large(settings: InferenceSettings) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"request body over {max_body_bytes(settings)} bytes; send at most "
        f"{settings.max_flights_per_request} flights per request (FTI_MAX_FLIGHTS_PER_REQUEST)",
    )


def json_bytes(value: Any) -> bytes:
    """Compact JSON of plain values, as every answer of the prediction endpoint is written."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


async def _shadow(
    runtime: ServiceRuntime, flights: list[dict[str, Any]], request_id: str, test: bool
) -> None:
    """After the response: the challenger scores the same flights, logged beside the champion's
    predictions (source ``shadow``) for the comparison once labels arrive. Never raises."""
    began = time.perf_counter()
    try:
        model, inputs, probabilities = await _score(runtime, CHALLENGER, flights)
    except FTIError as exc:
        runtime.metrics.shadow_failures.inc()
        runtime.failures.failed("shadow", f"shadow scoring failed: {exc}")
        return
    runtime.metrics.role_flights.labels(CHALLENGER, "shadow").inc(len(flights))
    if runtime.writer is not None:
        part = _Scored(list(range(len(flights))), model, inputs, probabilities)
        elapsed = time.perf_counter() - began
        runtime.writer.submit(_log_entry(part, request_id, SHADOW_SOURCE, elapsed, test))


def _too_many(count: int, limit: int) -> str:
    return f"flights: {count} in one request; at most {limit} (FTI_MAX_FLIGHTS_PER_REQUEST)"


def _log_entry(
    part: _Scored, request_id: str, source: str, total_s: float, test: bool
) -> LoggedPredictions:
    """What the log needs of one scored part: references only; the writer's flush thread turns
    them into rows (serialising ~90 features per flight is most of a logged row's cost)."""
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


@health.get(
    "/healthz",
    response_model=Liveness,
    responses={503: {"model": Liveness, "description": "restart this process"}},
    summary="Liveness: the process answers, and can recover by itself",
)
async def healthz(runtime: Runtime, response: Response) -> Liveness:
    """503 only when restarting the process is what it needs: a managed Triton that could not
    be brought back within ``FTI_TRITON_RESTART_LIMIT_S``. A dependency that is merely down
    shows in ``/readyz``."""
    problem = runtime.liveness_problem()
    if problem is None:
        return Liveness(status="ok")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Liveness(status="failing", detail=problem)


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
    model = runtime.model
    return Readiness(
        ready=ready, model_version=model.version, lead_minutes=model.lead_minutes, checks=checks
    )


@health.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: Runtime) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@admin.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorBody, "description": "no admin API key"},
        403: {"model": ErrorBody, "description": "wrong key, or admin endpoints disabled"},
        404: {"model": ErrorBody, "description": "the alias or version does not exist"},
        409: {"model": ErrorBody, "description": "the version's artifact failed verification"},
        **_BODY_REFUSALS,
        **_UNAVAILABLE,
    },
    summary="Load the version an alias points to now, and serve it",
    openapi_extra=_json_body("ReloadRequest", required=False),
)
async def reload(request: Request, runtime: Runtime) -> ReloadResponse:
    """Serve what the alias (default ``champion``) points to now, and follow that alias from
    now on. An empty body means ``{}``. The body is checked here, as the prediction route's
    is, so that every refusal is an `ErrorBody`."""
    raw = await request.body()
    if raw:
        check_json(request.headers.get("content-type"))
    try:
        body = ReloadRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise invalid_request([describe(e) for e in exc.errors(include_url=False)]) from None
    previous, model = await runtime.reload(body.alias)
    return ReloadResponse(
        alias=body.alias, previous_version=previous.version, version=model.version
    )
