"""HTTP routes: predictions, health and readiness, metrics, admin. HTTP only: each route reads
the request, calls the part of the service that answers it, and writes the response; what a
prediction request means is `prediction_requests`' business."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from inference_pipeline.service.api_reference import (
    HEALTHZ_DESCRIPTION,
    LIVENESS_EXAMPLES,
    METRICS_DESCRIPTION,
    PREDICT_DESCRIPTION,
    PREDICTION_REFUSALS,
    PREDICTION_REQUEST_EXAMPLES,
    PREDICTION_RESPONSE_EXAMPLES,
    READINESS_EXAMPLES,
    READYZ_DESCRIPTION,
    RELOAD_DESCRIPTION,
    RELOAD_REFUSALS,
    RELOAD_REQUEST_EXAMPLES,
    RELOAD_RESPONSE_EXAMPLES,
    error_responses,
    media_examples,
)
from inference_pipeline.service.dependencies import (
    API_KEY_HEADER,
    API_KEY_SCHEME,
    AdminKey,
    Runtime,
)
from inference_pipeline.service.errors import describe, invalid_request
from inference_pipeline.service.prediction_requests import (
    JSON_MEDIA_TYPE,
    PREDICTIONS_PATH,
    TEST_TRAFFIC_HEADER,
    answer_predictions,
    check_json,
)
from inference_pipeline.service.runtime import ServiceRuntime
from inference_pipeline.service.schemas import (
    DependencyCheck,
    Liveness,
    PredictionResponse,
    Readiness,
    ReloadRequest,
    ReloadResponse,
)

predictions = APIRouter(prefix="/v1", tags=["predictions"])
health = APIRouter(tags=["operations"])
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminKey])


# The request body and the API key are checked by hand (below) rather than declared as a
# parameter and a dependency: FastAPI's generic body handling and dependency solving cost a
# sizeable share of a one-flight prediction. The documented schema and security stay the same.
def _json_body(
    schema: str, *, required: bool = True, examples: dict[str, Any] | None = None
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    if examples:
        media["examples"] = examples
    return {"requestBody": {"required": required, "content": {JSON_MEDIA_TYPE: media}}}


_HAND_CHECKED = {
    "security": [{scheme: [] for scheme in API_KEY_SCHEME}],
    **_json_body("PredictionRequest", examples=PREDICTION_REQUEST_EXAMPLES),
    "parameters": [
        {
            "name": TEST_TRAFFIC_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "boolean", "default": False},
            "description": "true: a test request (smoke tests, load tests, demos). Answered "
            "and logged like any other, marked test_traffic in the prediction log, and left "
            "out of monitoring unless it is run with --include-test-traffic. Anything but "
            "true/false (or 1/0) is refused (422)",
        }
    ],
}


@predictions.post(
    PREDICTIONS_PATH.removeprefix("/v1"),
    response_model=PredictionResponse,
    responses={
        200: {"content": media_examples(PREDICTION_RESPONSE_EXAMPLES)},
        **error_responses(PREDICTION_REFUSALS),
    },
    summary="Probability that each scheduled departure leaves more than 15 minutes late",
    description=PREDICT_DESCRIPTION,
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
    return Response(content, media_type=JSON_MEDIA_TYPE)


@health.get(
    "/healthz",
    response_model=Liveness,
    responses={
        200: {"content": media_examples({"ok": LIVENESS_EXAMPLES["ok"]})},
        503: {
            "model": Liveness,
            "description": "restart this process",
            "content": media_examples({"failing": LIVENESS_EXAMPLES["failing"]}),
        },
    },
    summary="Liveness: the process answers, and can recover by itself",
    description=HEALTHZ_DESCRIPTION,
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
    responses={
        200: {"content": media_examples({"ready": READINESS_EXAMPLES["ready"]})},
        503: {
            "model": Readiness,
            "description": "not ready: a check failed",
            "content": media_examples({"not_ready": READINESS_EXAMPLES["not_ready"]}),
        },
    },
    summary="Readiness: feature store, registry and Triton reachable, model loaded",
    description=READYZ_DESCRIPTION,
)
async def readyz(runtime: Runtime, response: Response) -> Readiness:
    checks = {
        name: DependencyCheck(ok=result.ok, detail=result.detail)
        for name, result in (await runtime.checks.all()).items()
    }
    ready = all(c.ok for c in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    model = runtime.models.champion
    return Readiness(
        ready=ready, model_version=model.version, lead_minutes=model.lead_minutes, checks=checks
    )


@health.get(
    "/metrics",
    summary="Prometheus metrics",
    description=METRICS_DESCRIPTION,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(runtime: Runtime) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@admin.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        200: {"content": media_examples(RELOAD_RESPONSE_EXAMPLES)},
        **error_responses(RELOAD_REFUSALS),
    },
    summary="Load the version an alias points to now, and serve it",
    description=RELOAD_DESCRIPTION,
    openapi_extra=_json_body("ReloadRequest", required=False, examples=RELOAD_REQUEST_EXAMPLES),
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
    previous, model = await runtime.models.reload(body.alias)
    return ReloadResponse(
        alias=body.alias, previous_version=previous.version, version=model.version
    )
