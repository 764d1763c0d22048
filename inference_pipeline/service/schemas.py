"""Typed request and response bodies of the online API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator

Airport = Annotated[str, Field(pattern=r"^[A-Z0-9]{3,4}$", examples=["JFK"])]
# The hhmm rule as JSON Schema, for clients and fuzzers that generate requests from OpenAPI:
# one range per hour (minutes 00-59); the validator below enforces the same.
HHMM_RANGES: list[JsonValue] = [
    {"minimum": 100 * hour, "maximum": 100 * hour + 59} for hour in range(24)
]
AsOf = Annotated[
    AwareDatetime | None,
    Field(
        description="prediction time T: features are read as they were at this instant "
        "(ISO 8601 with a UTC offset, not in the future). Default: the request's arrival. "
        "For replays, backtests and the demo on 2013 data; an instant older than what the "
        "online store keeps (a day of weather, two days of daily stats) finds those features "
        "missing: backtest further back with the batch job.",
        examples=["2013-12-31T16:00:00-05:00"],
    ),
]


class ScheduledFlight(BaseModel):
    """One scheduled departure; unknown carriers and airports are accepted and scored as
    out-of-vocabulary (and reported as such). Types are strict: ``true``, ``"830"`` or ``830.0``
    for a number is refused, not coerced (JSON has no date type: dates are ISO strings)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)

    flight_date: dt.date = Field(
        description="local (New York) date of departure, ISO 8601", examples=["2013-03-10"]
    )
    sched_dep_time: int = Field(
        ge=0,
        le=2359,
        description="scheduled departure, local time as hhmm: hours 0-23, minutes 00-59 "
        "(830 is 08:30; 875 is refused)",
        examples=[830, 1745],
        json_schema_extra={"anyOf": HHMM_RANGES},
    )
    carrier: str = Field(pattern=r"^[A-Z0-9]{2,3}$", examples=["UA"])
    flight: int = Field(ge=1, le=9999, examples=[1545])
    origin: Airport
    dest: Airport
    tailnum: str | None = Field(default=None, max_length=10, examples=["N14228"])
    distance: int = Field(
        ge=1, le=6000, description="great-circle distance, miles", examples=[1400]
    )
    as_of: AsOf = None  # this flight's T, over the request's

    @field_validator("sched_dep_time")
    @classmethod
    def _is_clock_time(cls, value: int) -> int:
        if value % 100 >= 60:
            raise ValueError(f"{value} is not an hhmm time: minutes must be below 60")
        return value


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    flights: list[ScheduledFlight] = Field(min_length=1)
    as_of: AsOf = None  # T of every flight without its own


class FlightPrediction(BaseModel):
    flight_id: str
    probability: float = Field(description="probability of a departure delay above 15 minutes")
    model_version: str
    prediction_time: dt.datetime = Field(
        description="T: the instant the features were read as of (as_of, or the arrival), UTC"
    )
    lead_minutes: int = Field(
        description="the lead the model was trained at: its training rows were read this many "
        "minutes before the scheduled departure"
    )
    missing_features: list[str] = Field(
        description="features with no value (imputed, or the out-of-vocabulary index)"
    )
    unknown_categories: list[str] = Field(
        description="categorical features whose value the model never saw (out-of-vocabulary)"
    )
    missing_groups: list[str] = Field(
        description="feature groups with no row valid at prediction_time for this flight's "
        "key: none online, or only one older than the view's tolerance (28 days for daily "
        "stats, 3 hours for weather) or newer than prediction_time"
    )


class PredictionResponse(BaseModel):
    request_id: str
    model_version: str
    predictions: list[FlightPrediction]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    alias: str = Field(default="champion", pattern=r"^[A-Za-z0-9_.-]+$")


class ReloadResponse(BaseModel):
    alias: str
    previous_version: str
    version: str


class DependencyCheck(BaseModel):
    ok: bool
    detail: str = ""


class Liveness(BaseModel):
    status: str = Field(description="ok, or failing: restart this process")
    detail: str | None = None


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    lead_minutes: int | None = Field(
        default=None, description="the served model's lead (see FlightPrediction.lead_minutes)"
    )
    checks: dict[str, DependencyCheck]


class ErrorBody(BaseModel):
    """Every error answer of the API, whatever the route (an unknown path and a wrong method
    included): a stable code to branch on, one readable line saying what to change, the
    request id; a 422 also lists each invalid input, a 503 names the dependency at fault."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid_request",
                    "message": "flights[0].sched_dep_time: 875 is not an hhmm time: minutes "
                    "must be below 60; flights[0].distance: Field required",
                    "problems": [
                        "flights[0].sched_dep_time: 875 is not an hhmm time: minutes must "
                        "be below 60",
                        "flights[0].distance: Field required",
                    ],
                    "request_id": "3f2a9c1e8b7d4e6f9a0b1c2d3e4f5a6b",
                },
                {
                    "error": "not_found",
                    "message": "nothing at GET /v1/prediction: see /docs for this API's paths",
                    "request_id": "3f2a9c1e8b7d4e6f9a0b1c2d3e4f5a6b",
                },
                {
                    "error": "method_not_allowed",
                    "message": "GET is not allowed on /v1/predictions: use POST",
                    "request_id": "3f2a9c1e8b7d4e6f9a0b1c2d3e4f5a6b",
                },
            ]
        }
    )

    error: str = Field(
        description="stable code: unauthorized, forbidden, not_found, method_not_allowed, "
        "body_timeout, artifact_integrity, body_too_large, unsupported_media_type, "
        "invalid_request, model_version_not_found, dependency_unavailable, internal_error",
        examples=["invalid_request"],
    )
    message: str = Field(
        description="one readable line: what was wrong and what to do (a 422's problems, "
        "joined by '; ')"
    )
    problems: list[str] | None = Field(
        default=None,
        description="422 only: every invalid input found, one per item, as "
        "'location: what is wrong'; the location is a path into the body "
        "(flights[0].sched_dep_time), or a header's name",
        examples=[["flights[0].sched_dep_time: 875 is not an hhmm time: minutes must be below 60"]],
    )
    dependency: str | None = Field(
        default=None,
        description="503 (and a reload's 404/409): the dependency at fault: feature_store, "
        "triton or registry",
    )
    request_id: str | None = Field(
        default=None, description="the request's id, as in the X-Request-ID response header"
    )
