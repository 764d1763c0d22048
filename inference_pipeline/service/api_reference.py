"""What the OpenAPI document tells a client developer beyond the schemas: the API's overview, the
routes' descriptions, example requests and answers (one flight, several flights), and an example
`ErrorBody` for every refusal a route documents.

The examples are plain data, checked by the tests: each against its schema, the error examples
against the codes and messages the service's own functions produce, and the prediction examples
against the live service's answer to the example request (all but the probability and ids). So
the documentation cannot drift from what the service does.
"""

from __future__ import annotations

from typing import Any

from inference_pipeline.service.schemas import ErrorBody

API_DESCRIPTION = """\
Probability that a scheduled departure from New York (EWR, JFK, LGA) leaves more than
15 minutes late, from features read as they were at the **prediction time T**.

- **Authentication**: send the key in the `X-API-Key` header (`/v1/*`: the service's API key;
  `/admin/*`: the admin key). A service on a loopback address may run without a key.
- **Request id**: send `X-Request-ID` (at most 64 characters) or get a generated one. It comes
  back in the `X-Request-ID` header and in every body, errors included, and names the request
  in the service log and the prediction log: quote it when reporting a problem.
- **Errors**: every error, an unknown path (404) and a wrong method (405) included, answers the
  JSON body `ErrorBody`: `error` (a stable code to branch on), `message` (one readable line
  saying what to change), `problems` (422: every invalid input, one per line), `dependency`
  (503: `feature_store`, `triton` or `registry`) and `request_id`. `/healthz` and `/readyz`
  answer their own bodies, 503 included: they report on the service, not on a request.
  An unexpected failure is a 500 `internal_error`, its traceback in the service log.
- **Test traffic**: mark smoke tests, load tests and demos with `X-FTI-Test-Traffic: true`;
  they are answered like any request and left out of monitoring.
"""

PREDICT_DESCRIPTION = """\
Scores each scheduled departure in `flights` (at most `FTI_MAX_FLIGHTS_PER_REQUEST`, 1000 by
default) and answers, in the same order, the probability that it leaves more than 15 minutes
late.

- **Prediction time T.** Each flight's features (route and carrier delay statistics of the
  days before, the origin's latest weather, the plane) are read as they were at T: the
  flight's own `as_of`, else the request's `as_of`, else the instant the request arrived. An
  `as_of` replays the past (backtests, the demo on 2013 data); one in the future is refused
  (422). Each prediction names its T as `prediction_time`.
- **Lead.** The model was trained on features read `lead_minutes` (60 by default) before each
  scheduled departure: its probabilities are calibrated for a T about that long before the
  flight leaves. Any other T is answered too, by the same model.
- **Missing inputs are not errors.** A feature with no value at T (none online, or only one
  older than its tolerance: 3 hours for weather, 28 days for daily statistics) is imputed and
  named in `missing_features`, its group in `missing_groups`; a carrier or airport the model
  never saw is scored as out-of-vocabulary and named in `unknown_categories`.
- **Model version.** `model_version` names the version that answered. During a canary rollout
  a share of flights (the same flights every time) is answered by the challenger: each
  prediction names its own `model_version`.
- **Test traffic.** `X-FTI-Test-Traffic: true` marks smoke tests, load tests and demos: they
  are answered and logged like any request, but monitoring leaves them out.
- **Limits.** Strict types: `"830"`, `830.0` or `true` for a number is refused, not coerced.
  A body is read for at most `FTI_BODY_TIMEOUT_S` (5 s by default).
"""

HEALTHZ_DESCRIPTION = """\
Liveness, for a process supervisor (Kubernetes' liveness probe). 200 while the service can
answer or recover by itself; 503 only when restarting the process is what it needs: a Triton
it manages that could not be brought back within `FTI_TRITON_RESTART_LIMIT_S`. A dependency
that is merely down shows in `/readyz`, not here.
"""

READYZ_DESCRIPTION = """\
Readiness, for a load balancer (Kubernetes' readiness probe): 200 when the feature store, the
model registry and Triton answer and a model is loaded; 503 otherwise, with the check that
failed. Also names the served model version and its lead.
"""

METRICS_DESCRIPTION = """\
Prometheus metrics in the text exposition format: requests and latencies per route and status,
per-stage prediction latencies, errors per cause, imputed features, the served model version.
"""

RELOAD_DESCRIPTION = """\
Loads the model version an alias points to now (default `champion`), serves it, and follows
that alias from then on; answers the version served before and the one served now. Needs the
admin key (`FTI_ADMIN_API_KEY`; without one set, admin routes are disabled). The body may be
empty (the `champion` alias). The version's artifact is verified before it is served: a version
that fails verification is refused (409) and the previous one stays.
"""

# -- predictions --------------------------------------------------------------------------

_UA_1545 = {
    "flight_date": "2013-03-10",
    "sched_dep_time": 830,
    "carrier": "UA",
    "flight": 1545,
    "origin": "EWR",
    "dest": "IAH",
    "tailnum": "N14228",
    "distance": 1400,
}
_AS_OF = "2013-03-10T07:30:00-05:00"  # an hour before UA 1545 leaves: the model's lead

PREDICTION_REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "one_flight": {
        "summary": "One flight, as of an hour before its departure",
        "value": {"flights": [{**_UA_1545, "as_of": _AS_OF}]},
    },
    "several_flights": {
        "summary": "Several flights: one T for all, a flight without its tail number, an "
        "unknown carrier",
        "value": {
            "as_of": _AS_OF,
            "flights": [
                _UA_1545,
                {
                    "flight_date": "2013-03-10",
                    "sched_dep_time": 829,
                    "carrier": "B6",
                    "flight": 611,
                    "origin": "JFK",
                    "dest": "JAX",
                    "distance": 828,
                },
                {
                    "flight_date": "2013-03-10",
                    "sched_dep_time": 835,
                    "carrier": "ZZ",
                    "flight": 2170,
                    "origin": "JFK",
                    "dest": "PHX",
                    "tailnum": "N392DA",
                    "distance": 2153,
                },
            ],
        },
    },
}

_PREDICTION_TIME = "2013-03-10T12:30:00+00:00"
_PLANE_FEATURES = [
    "plane_seats",
    "plane_engines",
    "plane_age_years",
    "plane_plane_type",
    "plane_manufacturer",
    "plane_engine",
]
_CARRIER_FEATURES = [
    f"carrier_{statistic}_{days}d"
    for days in (7, 28)
    for statistic in ("flights", "delay_rate", "mean_dep_delay", "cancel_rate")
]


# Calm air at EWR and JFK that morning: no gust was recorded, so the gust is imputed.
_NO_GUST = ["wx_wind_gust"]
# The aircraft's first departure of the day: no earlier one to take its delay from.
_FIRST_OF_THE_DAY = ["tail_last_dep_delay", "tail_minutes_since_last_dep"]
# A carrier with no departures from the origin in the last two hours (here: one never seen).
_NO_RECENT_CARRIER_DEPARTURES = [
    f"origin_carrier_{statistic}_{minutes}m"
    for minutes in (30, 60, 120)
    for statistic in ("delayed_share", "mean_dep_delay")
]


def _prediction(flight_id: str, probability: float, **reported: list[str]) -> dict[str, Any]:
    return {
        "flight_id": flight_id,
        "probability": probability,
        "model_version": "3",
        "prediction_time": _PREDICTION_TIME,
        "lead_minutes": 60,
        "missing_features": [*reported.get("missing_features", []), *_NO_GUST],
        "unknown_categories": reported.get("unknown_categories", []),
        "missing_groups": reported.get("missing_groups", []),
    }


PREDICTION_RESPONSE_EXAMPLES: dict[str, dict[str, Any]] = {
    "one_flight": {
        "summary": "One flight",
        "value": {
            "request_id": "3f2a9c1e8b7d4e6f9a0b1c2d3e4f5a6b",
            "model_version": "3",
            "predictions": [
                _prediction("20130310-UA1545-EWR-0830", 0.1873, missing_features=_FIRST_OF_THE_DAY)
            ],
        },
    },
    "several_flights": {
        "summary": "Several flights, in the request's order, with what was missing",
        "value": {
            "request_id": "checkout-7d1e",
            "model_version": "3",
            "predictions": [
                _prediction("20130310-UA1545-EWR-0830", 0.1873, missing_features=_FIRST_OF_THE_DAY),
                _prediction(
                    "20130310-B6611-JFK-0829",
                    0.2411,
                    missing_features=[*_PLANE_FEATURES, *_FIRST_OF_THE_DAY],
                    missing_groups=["planes"],
                ),
                _prediction(
                    "20130310-ZZ2170-JFK-0835",
                    0.3125,
                    missing_features=[*_CARRIER_FEATURES, *_NO_RECENT_CARRIER_DEPARTURES],
                    unknown_categories=["carrier"],
                    missing_groups=["carrier_stats"],
                ),
            ],
        },
    },
}

# -- errors -------------------------------------------------------------------------------

_ID = "3f2a9c1e8b7d4e6f9a0b1c2d3e4f5a6b"


def _error(error: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"error": error, "message": message, **fields, "request_id": _ID}


def _invalid(*problems: str) -> dict[str, Any]:
    return _error("invalid_request", "; ".join(problems), problems=list(problems))


NOT_FOUND = _error("not_found", "nothing at GET /v1/prediction: see /docs for this API's paths")
METHOD_NOT_ALLOWED = _error("method_not_allowed", "GET is not allowed on /v1/predictions: use POST")

# status -> (what it means, {example name: (summary, body)})
_Refusal = tuple[str, dict[str, tuple[str, dict[str, Any]]]]

_BODY_TIMEOUT: _Refusal = (
    "The body did not arrive within `FTI_BODY_TIMEOUT_S`; the connection is closed.",
    {
        "body_timeout": (
            "Body too slow",
            _error(
                "body_timeout",
                "request body not received within 5 s (FTI_BODY_TIMEOUT_S); send the whole "
                "body at once, with a Content-Length that matches it",
            ),
        )
    },
)
_NOT_JSON: _Refusal = (
    "`Content-Type` is not `application/json`.",
    {
        "unsupported_media_type": (
            "A form posted instead of JSON",
            _error(
                "unsupported_media_type",
                "Content-Type application/x-www-form-urlencoded is not accepted: send the "
                "body as JSON with Content-Type: application/json",
            ),
        )
    },
)


def _unavailable(dependency: str, message: str) -> tuple[str, dict[str, Any]]:
    body = _error("dependency_unavailable", message, dependency=dependency)
    return f"{dependency} down or too slow", body


PREDICTION_REFUSALS: dict[int, _Refusal] = {
    401: (
        "No `X-API-Key` header, and the service has an API key.",
        {
            "unauthorized": (
                "No key",
                _error("unauthorized", "missing X-API-Key header (API key)"),
            )
        },
    ),
    403: (
        "Wrong `X-API-Key`.",
        {"forbidden": ("Wrong key", _error("forbidden", "invalid API key"))},
    ),
    408: _BODY_TIMEOUT,
    413: (
        "Body larger than any valid request: 1 KiB per allowed flight, plus 1 KiB.",
        {
            "body_too_large": (
                "Too large",
                _error(
                    "body_too_large",
                    "request body over 1025024 bytes; send at most 1000 flights per request "
                    "(FTI_MAX_FLIGHTS_PER_REQUEST)",
                ),
            )
        },
    ),
    415: _NOT_JSON,
    422: (
        "The body is not JSON of the schema, or breaks a limit: `problems` lists every "
        "invalid input, one per line, as `location: what is wrong`.",
        {
            "invalid_fields": (
                "Invalid fields: each one listed",
                _invalid(
                    "flights[0].sched_dep_time: 875 is not an hhmm time: minutes must be below 60",
                    "flights[0].distance: Input should be a valid integer",
                ),
            ),
            "as_of_in_the_future": (
                "as_of in the future",
                _invalid(
                    "flights[0].as_of: 2026-01-05T09:30:00.123456+00:00 is now; as_of must not "
                    "be in the future (omit it to predict as of now)"
                ),
            ),
            "too_many_flights": (
                "Too many flights",
                _invalid(
                    "flights: 1200 in one request; at most 1000 (FTI_MAX_FLIGHTS_PER_REQUEST)"
                ),
            ),
            "test_traffic_flag": (
                "X-FTI-Test-Traffic neither true nor false",
                _invalid("X-FTI-Test-Traffic: 'yes' is not true or false"),
            ),
        },
    ),
    503: (
        "A dependency is down or too slow; `dependency` names it. Retry later.",
        {
            "feature_store": _unavailable(
                "feature_store", "online feature store did not answer within 1 s"
            ),
            "triton": _unavailable(
                "triton", "Triton at 127.0.0.1:8000: inference took longer than 2 s"
            ),
        },
    ),
}

RELOAD_REFUSALS: dict[int, _Refusal] = {
    401: (
        "No `X-API-Key` header.",
        {
            "unauthorized": (
                "No key",
                _error("unauthorized", "missing X-API-Key header (admin API key)"),
            )
        },
    ),
    403: (
        "Wrong admin key, or admin routes disabled (no `FTI_ADMIN_API_KEY`).",
        {
            "forbidden": ("Wrong key", _error("forbidden", "invalid admin API key")),
            "disabled": (
                "Admin routes disabled",
                _error("forbidden", "admin endpoints are disabled: set FTI_ADMIN_API_KEY"),
            ),
        },
    ),
    404: (
        "The alias names no version.",
        {
            "model_version_not_found": (
                "No such alias",
                _error(
                    "model_version_not_found",
                    "flight_delay has no version with alias 'challenger'",
                    dependency="registry",
                ),
            )
        },
    ),
    408: _BODY_TIMEOUT,
    409: (
        "The version's artifact failed verification; the previous version is still served.",
        {
            "artifact_integrity": (
                "Artifact failed verification",
                _error(
                    "artifact_integrity",
                    "model version 4 has no MDT state",
                    dependency="registry",
                ),
            )
        },
    ),
    415: _NOT_JSON,
    422: (
        "The body is not JSON of the schema: `problems` lists every invalid input.",
        {
            "invalid_alias": (
                "An alias with a slash",
                _invalid("alias: String should match pattern '^[A-Za-z0-9_.-]+$'"),
            )
        },
    ),
    503: (
        "The registry (or Triton, loading the version) is down or too slow.",
        {"registry": _unavailable("registry", "MLflow at http://127.0.0.1:5000 cannot be reached")},
    ),
}


def error_responses(refusals: dict[int, _Refusal]) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses`` for ``refusals``: each an `ErrorBody` with its examples."""
    return {
        status: {
            "model": ErrorBody,
            "description": description,
            "content": {
                "application/json": {
                    "examples": {
                        name: {"summary": summary, "value": body}
                        for name, (summary, body) in examples.items()
                    }
                }
            },
        }
        for status, (description, examples) in refusals.items()
    }


def media_examples(examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An OpenAPI media type's named ``examples`` (a JSON body)."""
    return {"application/json": {"examples": examples}}


# -- probes and admin ---------------------------------------------------------------------


def _example(summary: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "value": value}


LIVENESS_EXAMPLES = {
    "ok": _example("Alive", {"status": "ok", "detail": None}),
    "failing": _example(
        "Restart this process",
        {
            "status": "failing",
            "detail": "managed Triton down for 184 s, restarts failing (limit "
            "FTI_TRITON_RESTART_LIMIT_S=180 s): tritonserver exited with 1",
        },
    ),
}


def _readiness(ready: bool, triton: dict[str, Any]) -> dict[str, Any]:
    return {
        "ready": ready,
        "model_version": "3",
        "lead_minutes": 60,
        "checks": {
            "feature_store": {"ok": True, "detail": ""},
            "registry": {"ok": True, "detail": "champion -> v3"},
            "triton": triton,
        },
    }


READINESS_EXAMPLES = {
    "ready": _example("Ready", _readiness(True, {"ok": True, "detail": "flight_delay v3 ready"})),
    "not_ready": _example(
        "Triton does not serve the model",
        _readiness(False, {"ok": False, "detail": "flight_delay v3 not loaded"}),
    ),
}

RELOAD_REQUEST_EXAMPLES = {
    "champion": _example("Serve the champion now (an empty body means the same)", {}),
    "alias": _example("Serve and follow another alias", {"alias": "challenger"}),
}
RELOAD_RESPONSE_EXAMPLES = {
    "moved": _example(
        "The champion moved from version 3 to 4",
        {"alias": "champion", "previous_version": "3", "version": "4"},
    ),
}
