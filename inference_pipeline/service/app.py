"""The FastAPI application: lifespan (model loading), the prediction fast path, middleware,
error translation, routes."""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_pipeline.service.api_reference import API_DESCRIPTION
from inference_pipeline.service.body import BodyDeadlines
from inference_pipeline.service.dependencies import API_KEY_SCHEME
from inference_pipeline.service.docs_pages import serve_docs_offline
from inference_pipeline.service.errors import (
    ApiError,
    describe,
    error_answer,
    failure_log,
    framework_error,
    invalid_request,
)
from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.prediction_requests import (
    PREDICTIONS_PATH,
    TEST_TRAFFIC_HEADER,
    answer_predictions,
    json_bytes,
    max_body_bytes,
)
from inference_pipeline.service.routes import admin, health, predictions
from inference_pipeline.service.runtime import ServiceRuntime
from inference_pipeline.service.schemas import PredictionRequest, ReloadRequest
from inference_pipeline.settings import InferenceSettings
from shared.errors import FTIError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")
_API_KEY_KEY = b"x-api-key"
_CONTENT_TYPE_KEY = b"content-type"
_TEST_TRAFFIC_KEY = TEST_TRAFFIC_HEADER.lower().encode("latin-1")
_PREDICT = f"POST {PREDICTIONS_PATH}"
_CLIENT_GONE = 499  # the client closed the connection before its body arrived (nginx's code)


def request_id_for(given: str) -> str:
    """The client's ``X-Request-ID`` when it is a sane length, else a fresh one: 128 random
    bits as hex, as uuid4 has, without its system call per request (an id names a request in
    logs; it guards nothing, so it needs no cryptographic source)."""
    return given if 0 < len(given) <= 64 else f"{random.getrandbits(128):032x}"


class PredictionService(FastAPI):
    """FastAPI, with ``POST /v1/predictions`` answered in front of it.

    FastAPI's layers around a route (its error, telemetry and body-limit middleware, ours, the
    exception middleware, routing through included routers, the request and response
    wrappers) took about a fifth of the service's CPU per one-flight prediction under load
    (py-spy at 16 connections), and the service is bound by that one core. This path reads
    the body and answers with the very function the FastAPI route uses
    (`prediction_requests.answer_predictions`), the same error bodies
    (`errors.error_answer`), request id and metrics. Everything else (docs, health, metrics,
    admin) goes through FastAPI, and so does a prediction whenever the fast path is off
    (``FTI_FAST_PREDICTIONS=false``).

    Middleware added to the app (``add_middleware``, ``@app.middleware``) beyond the service's
    own `RequestContext`, whose work the fast path does itself, would be skipped by the fast
    path: when the middleware stack is built (at startup, before the first request), such a
    middleware turns the fast path off, with a warning naming it."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        failures: FailureLog,
        body_deadlines: BodyDeadlines,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.failures = failures
        self.body_deadlines = body_deadlines
        self.runtime: ServiceRuntime | None = None  # set by the lifespan, once started
        self.fast_predictions = True
        self._latency = metrics.request_seconds.labels(PREDICTIONS_PATH)
        self._answered: dict[int, Any] = {}  # status -> its request counter

    def build_middleware_stack(self) -> ASGIApp:
        foreign = [m.cls for m in self.user_middleware if m.cls is not RequestContext]
        if foreign and self.fast_predictions:
            names = ", ".join(getattr(c, "__name__", repr(c)) for c in foreign)
            log.warning(
                "middleware %s added to the app: POST %s is answered through FastAPI's route "
                "so that it runs (prediction fast path off)",
                names,
                PREDICTIONS_PATH,
            )
            self.fast_predictions = False
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        if (
            runtime is not None
            and self.fast_predictions
            and self.middleware_stack is not None  # built: foreign middleware checked
            and scope["type"] == "http"
            and scope["path"] == PREDICTIONS_PATH
            and scope["method"] == "POST"
        ):
            await self._predict(runtime, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _predict(
        self, runtime: ServiceRuntime, scope: Scope, receive: Receive, send: Send
    ) -> None:
        began = time.perf_counter()
        api_key, content_type, given_id, test_traffic = _prediction_headers(scope["headers"])
        request_id = request_id_for(given_id)
        status, headers = 500, [(b"content-type", b"application/json")]  # 500 unless answered
        try:
            try:
                body = await self.body_deadlines.read(receive, max_body_bytes(runtime.settings))
                if body is None:
                    status = _CLIENT_GONE
                    return
                content = await answer_predictions(
                    runtime, api_key, content_type, body, request_id, test_traffic
                )
                status = 200
            except Exception as exc:
                status, error, extra = error_answer(
                    exc, request_id, self.metrics, self.failures, _PREDICT
                )
                content = json_bytes(error)
                headers += _raw_headers(extra)
            headers += [
                (b"content-length", str(len(content)).encode("latin-1")),
                (_REQUEST_ID_KEY, request_id.encode("latin-1")),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            self._count(status)
            self._latency.observe(time.perf_counter() - began)

    def _count(self, status: int) -> None:
        counter = self._answered.get(status)
        if counter is None:
            counter = self._answered[status] = self.metrics.requests.labels(
                PREDICTIONS_PATH, str(status)
            )
        counter.inc()


def _raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _prediction_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, str, str | None]:
    """(``X-API-Key``, ``Content-Type``, ``X-Request-ID`` or "", ``X-FTI-Test-Traffic``) from
    ASGI's raw, lower-cased header pairs."""
    api_key, content_type, request_id, test_traffic = None, None, "", None
    for name, value in headers:
        if name == _CONTENT_TYPE_KEY:
            content_type = value.decode("latin-1")
        elif name == _API_KEY_KEY:
            api_key = value.decode("latin-1")
        elif name == _REQUEST_ID_KEY:
            request_id = value.decode("latin-1")
        elif name == _TEST_TRAFFIC_KEY:
            test_traffic = value.decode("latin-1")
    return api_key, content_type, request_id, test_traffic


class RequestContext:
    """Request id (given ``X-Request-ID`` or a fresh one, echoed back), request metrics, and
    the body-read deadline (`BodyDeadlines`).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs
    every request through an extra task and memory stream, which costs more than the work of
    a one-flight prediction."""

    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, body_deadlines: BodyDeadlines
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_deadlines = body_deadlines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(Headers(scope=scope).get(REQUEST_ID_HEADER, ""))
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
            await self.app(scope, self.body_deadlines.bounded(receive), send_with_id)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - began)


# Other threads compute beside the event loop (the prediction log's flush; a network store's
# reads). With the default 5 ms GIL switch interval the loop then waits up to 5 ms for the GIL
# at every hand-over. 0.1 ms: at one connection p99 9.9 ms against 11.3 ms with 0.5 ms (four
# interleaved runs each), throughput at 16 connections unchanged.
_GIL_SWITCH_INTERVAL_S = 0.0001


def _freeze_startup_objects() -> None:
    """Move everything allocated so far (imported libraries, the loaded model and vocabularies:
    millions of objects) out of the garbage collector's reach. A full collection otherwise
    walks them all, stopping every thread for a long pause whenever a prediction-log flush
    allocates enough to trigger one."""
    gc.collect()
    gc.freeze()


def create_app(settings: InferenceSettings) -> PredictionService:
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)
    metrics = ServiceMetrics()
    failures = failure_log(settings.failure_log_interval_s)
    body_deadlines = BodyDeadlines(settings.body_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime(settings, metrics, failures)
        app.state.runtime = runtime
        try:
            await runtime.start()
            _freeze_startup_objects()
            service.runtime = runtime
            yield
        finally:
            service.runtime = None
            await runtime.close()

    service = PredictionService(
        metrics,
        failures,
        body_deadlines,
        title="Flight delay predictions",
        summary="Will a scheduled departure from New York leave more than 15 minutes late?",
        description=API_DESCRIPTION,
        version="1",
        lifespan=lifespan,
        # FastAPI's pages load their assets from a CDN: serve_docs_offline serves them here.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    service.state.metrics = metrics
    service.fast_predictions = settings.fast_predictions
    service.include_router(predictions)
    service.include_router(health)
    service.include_router(admin)
    serve_docs_offline(service)

    service.add_middleware(RequestContext, metrics=metrics, body_deadlines=body_deadlines)
    _document_request_bodies(service)

    def answer(request: Request, exc: Exception) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        request_id = getattr(request.state, "request_id", None)
        status, body, headers = error_answer(exc, request_id, metrics, failures, where)
        return JSONResponse(status_code=status, content=body, headers=headers)

    @service.exception_handler(HTTPException)
    async def framework_refusal(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own refusals (404 no such route, 405 wrong method, ...) in `ErrorBody`
        form, like every other error of the API."""
        return answer(request, framework_error(request.method, request.url.path, exc))

    @service.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request, invalid_request([describe(e) for e in exc.errors()]))

    @service.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request, exc)

    @service.exception_handler(FTIError)
    async def domain_error(request: Request, exc: FTIError) -> JSONResponse:
        return answer(request, exc)

    @service.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """Anything else: a 500 `ErrorBody` (logged with its traceback), as the prediction fast
        path answers, rather than Starlette's plain-text 500. Starlette runs this outside the
        middleware (and re-raises for the server's log), so the request id header is set here."""
        response = answer(request, exc)
        request_id = getattr(request.state, "request_id", None)
        if request_id is not None:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return service


def app_from_environment(overrides: Mapping[str, object] | None = None) -> PredictionService:
    """The app of one uvicorn worker process (``serve --workers N``), as a uvicorn factory:
    ``uvicorn --factory inference_pipeline.service.app:app_from_environment`` works as it is.

    Worker processes are spawned fresh, so each builds its settings from the ``FTI_*``
    environment, exactly as a container does, plus the command line's ``overrides`` that
    ``serve`` validated with the same environment before starting the workers.
    """
    return create_app(InferenceSettings(**dict(overrides or {})))  # type: ignore[arg-type]


def _document_request_bodies(app: FastAPI) -> None:
    """Add the schemas of bodies that routes validate themselves (``POST /v1/predictions``,
    ``POST /admin/reload``) to
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
            schemas["ReloadRequest"] = ReloadRequest.model_json_schema()
            spec["components"].setdefault("securitySchemes", {}).update(API_KEY_SCHEME)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
