"""The FastAPI application: lifespan (model loading), middleware, error translation, routes."""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_pipeline.service.dependencies import API_KEY_SCHEME
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.routes import admin, health, predictions
from inference_pipeline.service.runtime import ServiceRuntime
from inference_pipeline.service.schemas import PredictionRequest
from inference_pipeline.settings import InferenceSettings
from shared.errors import (
    ArtifactIntegrityError,
    FTIError,
    ModelServerUnavailable,
    ModelVersionNotFound,
    RegistryUnavailable,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"

# Typed errors -> (status, error code, dependency).
_ERRORS: dict[type[FTIError], tuple[int, str, str | None]] = {
    StoreUnavailable: (503, "dependency_unavailable", "feature_store"),
    ModelServerUnavailable: (503, "dependency_unavailable", "triton"),
    RegistryUnavailable: (503, "dependency_unavailable", "registry"),
    ModelVersionNotFound: (404, "model_version_not_found", "registry"),
    ArtifactIntegrityError: (409, "artifact_integrity", "registry"),
}


class RequestContext:
    """Request id (given ``X-Request-ID`` or a fresh one, echoed back) and request metrics.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs
    every request through an extra task and memory stream, which costs more than the work of
    a one-flight prediction."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        # 128 random bits as hex, as uuid4 has, without its system call per request (an id
        # names a request in logs; it guards nothing, so it needs no cryptographic source).
        request_id = given if 0 < len(given) <= 64 else f"{random.getrandbits(128):032x}"
        scope.setdefault("state", {})["request_id"] = request_id
        began = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - began)


# The online path hands the feature read to a thread (it blocks on the store); with the default
# 5 ms GIL switch interval the event loop then waits up to 5 ms for the GIL whenever that thread
# computes, which under concurrent requests dominates latency. 0.5 ms keeps hand-overs prompt.
_GIL_SWITCH_INTERVAL_S = 0.0005


def _freeze_startup_objects() -> None:
    """Move everything allocated so far (imported libraries, the loaded model and vocabularies:
    millions of objects) out of the garbage collector's reach. A full collection otherwise
    walks them all, stopping every thread for a long pause whenever a prediction-log flush
    allocates enough to trigger one."""
    gc.collect()
    gc.freeze()


def create_app(settings: InferenceSettings) -> FastAPI:
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(settings, metrics)
        app.state.runtime = runtime
        try:
            await runtime.start()
            _freeze_startup_objects()
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="Flight delay predictions",
        summary="Will a scheduled departure from New York leave more than 15 minutes late?",
        version="1",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.include_router(predictions)
    app.include_router(health)
    app.include_router(admin)

    app.add_middleware(RequestContext, metrics=metrics)
    _document_request_bodies(app)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(e) for e in exc.errors()]
        metrics.errors.labels("invalid_request").inc()
        return JSONResponse(
            status_code=422,
            content={
                "error": "invalid_request",
                "message": "; ".join(problems),
                "problems": problems,
                "request_id": getattr(request.state, "request_id", None),
            },
        )

    @app.exception_handler(FTIError)
    async def domain_error(request: Request, exc: FTIError) -> JSONResponse:
        code, error, dependency = next(
            (v for k, v in _ERRORS.items() if isinstance(exc, k)), (500, "internal_error", None)
        )
        metrics.errors.labels(dependency or error).inc()
        log.warning("%s %s -> %d: %s", request.method, request.url.path, code, exc)
        return JSONResponse(
            status_code=code,
            content={
                "error": error,
                "message": str(exc),
                "dependency": dependency,
                "request_id": getattr(request.state, "request_id", None),
            },
        )

    return app


def app_from_environment(overrides: Mapping[str, object] | None = None) -> FastAPI:
    """The app of one uvicorn worker process (``serve --workers N``), as a uvicorn factory:
    ``uvicorn --factory inference_pipeline.service.app:app_from_environment`` works as it is.

    Worker processes are spawned fresh, so each builds its settings from the ``FTI_*``
    environment, exactly as a container does, plus the command line's ``overrides`` that
    ``serve`` validated with the same environment before starting the workers.
    """
    return create_app(InferenceSettings(**dict(overrides or {})))  # type: ignore[arg-type]


def _document_request_bodies(app: FastAPI) -> None:
    """Add the schemas of bodies that routes validate themselves (``POST /v1/predictions``) to
    the OpenAPI components their ``$ref`` names, as FastAPI does for declared bodies; and the
    API-key scheme that route checks itself."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            body = PredictionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(body.pop("$defs", {}))
            schemas["PredictionRequest"] = body
            spec["components"].setdefault("securitySchemes", {}).update(API_KEY_SCHEME)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _describe(error: dict[str, object]) -> str:
    """``flights[0].sched_dep_time: 1275 is not an hhmm time`` rather than pydantic's dict."""
    loc = [p for p in error.get("loc", ()) if p != "body"]  # type: ignore[attr-defined]
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where or 'body'}: {message}"
