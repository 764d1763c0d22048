"""The prediction endpoint, free of any web framework: a request's headers and raw body in, the
JSON answer out. Both ways a prediction is answered (the plain ASGI path in
`app.PredictionService` and FastAPI's route in `routes`) call `answer_predictions`, so they
answer alike by construction.

Checks, in order: body size, API key, ``Content-Type``, the test-traffic flag, the body against
the schema (strict types, every problem listed), the flight limit, each flight's T (its
``as_of``, the request's, or the arrival; never in the future). Then `Traffic` scores the
flights, and the answer is serialised once.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import ValidationError

from inference_pipeline.service.dependencies import check_api_key
from inference_pipeline.service.errors import ApiError, describe, invalid_request
from inference_pipeline.service.runtime import ServiceRuntime
from inference_pipeline.service.schemas import PredictionRequest
from inference_pipeline.settings import InferenceSettings
from shared.prediction_time import PREDICTION_TIME, epoch_us, instant_of, now_us

PREDICTIONS_PATH = "/v1/predictions"
TEST_TRAFFIC_HEADER = "X-FTI-Test-Traffic"
JSON_MEDIA_TYPE = "application/json"
# A client's clock may run a little ahead of ours: an as_of up to this far after the arrival
# is taken as "now"-ish, not refused (its T is still the as_of given).
_AS_OF_SKEW_US = 60_000_000


async def answer_predictions(
    runtime: ServiceRuntime,
    api_key: str | None,
    content_type: str | None,
    body: bytes,
    request_id: str,
    test_traffic: str | None = None,
) -> bytes:
    """The JSON answer to a prediction request (its ``X-API-Key``, ``Content-Type`` and
    ``X-FTI-Test-Traffic`` headers and raw body). Raises `ApiError` for a request to refuse,
    `FTIError` for a dependency that failed."""
    began = time.perf_counter()
    arrival = now_us()  # T of every flight that names none (invariant 7: one clock)
    settings, metrics = runtime.settings, runtime.metrics
    if len(body) > max_body_bytes(settings):
        raise body_too_large(settings)
    check_api_key(api_key, runtime)
    check_json(content_type)
    test = is_test_traffic(test_traffic)
    request = _parse(body)
    if len(request.flights) > settings.max_flights_per_request:
        raise invalid_request([_too_many(len(request.flights), settings.max_flights_per_request)])
    flights = flights_as_of(request, arrival)
    scored = await runtime.traffic.answer(flights, request_id, test, began)
    metrics.stages.total.observe(time.perf_counter() - began)
    metrics.flights.inc(len(flights))
    answers: list[dict[str, Any]] = [{}] * len(flights)
    imputed = metrics.imputed
    for part in scored:
        version = part.model.version
        for i, row in enumerate(part.rows):
            report = part.inputs.reports[i]
            imputed.add(report.missing_features)
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
    versions = {part.model.version for part in scored}
    response = {
        "request_id": request_id,
        # With a canary splitting one request, each prediction names its own version.
        "model_version": versions.pop() if len(versions) == 1 else runtime.models.champion.version,
        "predictions": answers,
    }
    # Plain values, serialised once: the response model documents the shape (and the tests
    # check responses against it); validating our own output again costs per request.
    return json_bytes(response)


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
    if content_type == JSON_MEDIA_TYPE:  # the usual case, without parsing
        return
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'!s} is not accepted: send the body as "
            f"JSON with Content-Type: {JSON_MEDIA_TYPE}",
        )


def _parse(body: bytes) -> PredictionRequest:
    """The body as a `PredictionRequest` (pydantic's own JSON parser); a bad one -> 422."""
    try:
        return PredictionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request([describe(e) for e in exc.errors(include_url=False)]) from None


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
    """Compact JSON of plain values, as every answer of the prediction endpoint is written
    (orjson: a tenth of the standard library's time for a 100-flight answer; it would write a
    NaN as null, so the probabilities are checked finite where Triton answers them)."""
    return orjson.dumps(value)


def _too_many(count: int, limit: int) -> str:
    return f"flights: {count} in one request; at most {limit} (FTI_MAX_FLIGHTS_PER_REQUEST)"
