"""Every error answer of the API, as one JSON shape (`schemas.ErrorBody`): what went wrong
(``error``), a readable ``message``, the ``dependency`` at fault for a 503, the ``request_id``.

Both ways a prediction request is answered (the plain ASGI path and FastAPI's route, see
`app.PredictionService`) and FastAPI's exception handlers build their answers here, so a client
sees the same status and body whichever answered.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException

from inference_pipeline.service.failure_log import FailureLog
from inference_pipeline.service.metrics import ServiceMetrics
from shared.errors import (
    ArtifactIntegrityError,
    FTIError,
    ModelServerUnavailable,
    ModelVersionNotFound,
    RegistryUnavailable,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# Typed errors -> (status, error code, dependency).
_ERRORS: dict[type[FTIError], tuple[int, str, str | None]] = {
    StoreUnavailable: (503, "dependency_unavailable", "feature_store"),
    ModelServerUnavailable: (503, "dependency_unavailable", "triton"),
    RegistryUnavailable: (503, "dependency_unavailable", "registry"),
    ModelVersionNotFound: (404, "model_version_not_found", "registry"),
    ArtifactIntegrityError: (409, "artifact_integrity", "registry"),
}


class ApiError(Exception):
    """A request the API refuses (a 4xx): its status, error code and readable message."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        problems: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.problems = problems
        self.headers = headers or {}


def invalid_request(problems: list[str]) -> ApiError:
    """A 422 listing every problem found (``flights[0].sched_dep_time: 875 is not ...``)."""
    return ApiError(422, "invalid_request", "; ".join(problems), problems=problems)


def framework_error(method: str, path: str, exc: HTTPException) -> ApiError:
    """The framework's own refusals (404 no such path, 405 wrong method, ...) as an `ApiError`
    whose code is the status' phrase (``not_found``) and whose message says what to do."""
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "HTTP error"
    error = phrase.lower().replace(" ", "_").replace("-", "_")
    headers = dict(exc.headers or {})
    allowed = next((v for k, v in headers.items() if k.lower() == "allow"), None)
    if exc.status_code == 404:
        message = f"nothing at {method} {path}: see /docs for this API's paths"
    elif exc.status_code == 405 and allowed:
        message = f"{method} is not allowed on {path}: use {allowed}"
    else:
        message = str(exc.detail)
    return ApiError(exc.status_code, error, message, headers=headers)


def describe(error: Any) -> str:
    """``flights[0].sched_dep_time: 1275 is not an hhmm time`` rather than pydantic's dict
    (an error of pydantic's or of FastAPI's validation, whose locations start at ``body``)."""
    where = ""
    for part in error.get("loc", ()):
        if part == "body":
            continue
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where or 'body'}: {message}"


def error_answer(
    exc: Exception,
    request_id: str | None,
    metrics: ServiceMetrics,
    failures: FailureLog,
    where: str,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, `ErrorBody` JSON, extra headers) for ``exc``, counted in the metrics and
    logged through ``failures`` (one line per dependency per interval during an outage);
    ``where`` ("POST /v1/predictions") names the request in the log."""
    if isinstance(exc, ApiError):
        body: dict[str, Any] = {"error": exc.error, "message": exc.message}
        if exc.problems is not None:
            body["problems"] = exc.problems
        metrics.errors.labels(exc.error).inc()
        return exc.status, body | {"request_id": request_id}, exc.headers
    if isinstance(exc, FTIError):
        status, error, dependency = next(
            (v for k, v in _ERRORS.items() if isinstance(exc, k)), (500, "internal_error", None)
        )
        metrics.errors.labels(dependency or error).inc()
        failures.failed(dependency or error, f"{where} -> {status}: {exc}")
        body = {"error": error, "message": str(exc), "dependency": dependency}
        return status, body | {"request_id": request_id}, {}
    metrics.errors.labels("internal_error").inc()
    failures.failed("internal_error", f"{where} -> 500", level=logging.ERROR, exc_info=exc)
    body = {"error": "internal_error", "message": "internal error: see the service log"}
    return 500, body | {"request_id": request_id}, {}


def failure_log(interval_s: float) -> FailureLog:
    """The service's `FailureLog`, writing to this module's logger."""
    return FailureLog(log, interval_s)
