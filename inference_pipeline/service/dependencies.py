"""Request dependencies, as ``Annotated`` aliases the routes declare: the runtime and the admin key
check; and the API-key check the prediction route makes itself (see `check_api_key`).

All are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its
thread pool, and four thread hops per request cost more than the model call."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from inference_pipeline.service.errors import ApiError
from inference_pipeline.service.runtime import ServiceRuntime

API_KEY_HEADER = "X-API-Key"
_admin_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name="AdminKey")


async def get_runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


Runtime = Annotated[ServiceRuntime, Depends(get_runtime)]


def _check_key(given: str | None, expected: SecretStr, what: str) -> None:
    if not given:
        raise ApiError(
            401,
            "unauthorized",
            f"missing {API_KEY_HEADER} header ({what})",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError(403, "forbidden", f"invalid {what}")


def check_api_key(given: str | None, runtime: ServiceRuntime) -> None:
    """The prediction endpoint's API-key check (``given``: the request's header), made by the
    endpoint itself: as a dependency, FastAPI's dependency solving cost a tenth of a one-flight
    prediction. The route documents the :data:`API_KEY_SCHEME` in OpenAPI by hand."""
    expected = runtime.settings.api_key
    if expected is not None:
        _check_key(given, expected, "API key")


# The OpenAPI security scheme of the prediction route (what APIKeyHeader would declare).
API_KEY_SCHEME = {"APIKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}}


async def require_admin_key(
    runtime: Runtime, key: Annotated[str | None, Security(_admin_key_header)]
) -> None:
    expected = runtime.settings.admin_api_key
    if expected is None:
        raise ApiError(403, "forbidden", "admin endpoints are disabled: set FTI_ADMIN_API_KEY")
    _check_key(key, expected, "admin API key")


AdminKey = Depends(require_admin_key)
