"""The online service in process (FastAPI TestClient, the real lifespan) against a real Triton,
the real SQLite online store and the registered model: predictions, missing and unknown inputs,
readable 422s, API keys, metrics, readiness, reload and the prediction log."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from inference_pipeline.service import create_app
from inference_pipeline.service.app import PredictionService
from shared.feature_store import open_feature_store
from shared.prediction_log import PREDICTIONS
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    ADMIN_KEY,
    API_KEY,
    MODEL_NAME,
    RegisteredModel,
    SharedTriton,
    drain_prediction_log,
    inference_settings,
)

pytestmark = pytest.mark.integration

UA_1545 = {
    "flight_date": "2013-03-10",
    "sched_dep_time": 830,
    "carrier": "UA",
    "flight": 1545,
    "origin": "EWR",
    "dest": "IAH",
    "tailnum": "N14228",
    "distance": 1400,
    # T = departure - the model's 60-minute lead: the store holds 2013 (without it, T is the
    # request's arrival, years after the last feature row: every time-varying group is stale).
    "as_of": "2013-03-10T07:30:00-05:00",
}
KEY = {"X-API-Key": API_KEY}


# Every test of this module runs against the hand-written prediction fast path and against
# FastAPI's route it stands in front of (invariant 9: the library path stays tested).
REQUEST_PATHS = {"fast path": {}, "FastAPI route": {"fast_predictions": False}}


@pytest.fixture(scope="module", params=list(REQUEST_PATHS))
def client(
    request: pytest.FixtureRequest,
    registered_model: RegisteredModel,
    triton: SharedTriton,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    settings = inference_settings(
        registered_model.root,
        triton,
        tmp_path_factory.mktemp("online"),
        api_key=API_KEY,
        admin_api_key=ADMIN_KEY,
        **REQUEST_PATHS[request.param],
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def predict(client: TestClient, *flights: dict[str, object]) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/predictions", json={"flights": list(flights)}, headers=KEY)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_one_flight_gets_a_probability_version_and_request_id(
    client: TestClient, registered_model: RegisteredModel
) -> None:
    response = client.post(
        "/v1/predictions", json={"flights": [UA_1545]}, headers={**KEY, "X-Request-ID": "abc-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "abc-1" == response.headers["X-Request-ID"]
    assert body["model_version"] == registered_model.version
    (prediction,) = body["predictions"]
    assert prediction["flight_id"] == "20130310-UA1545-EWR-0830"
    assert 0.0 < prediction["probability"] < 1.0
    assert prediction["missing_groups"] == []
    assert prediction["unknown_categories"] == []


def test_each_prediction_names_its_t_and_the_models_lead(client: TestClient) -> None:
    (prediction,) = predict(client, UA_1545)["predictions"]
    assert prediction["prediction_time"] == "2013-03-10T12:30:00+00:00"
    assert prediction["lead_minutes"] == 60
    assert client.get("/readyz").json()["lead_minutes"] == 60


def test_without_as_of_t_is_the_arrival_and_2013_features_are_too_old(
    client: TestClient,
) -> None:
    """The online tolerances, as of now: daily stats older than 28 days, weather older than 3
    hours and the fresh window features (the stream's coverage ends in 2013) are missing
    (imputed and reported), as the offline join would have them; the static plane is not
    time-varying."""
    now = datetime.now(UTC)
    flight = {k: v for k, v in UA_1545.items() if k != "as_of"}
    (prediction,) = predict(client, flight)["predictions"]
    t = datetime.fromisoformat(prediction["prediction_time"])
    assert abs(t - now) < timedelta(minutes=5)
    assert set(prediction["missing_groups"]) == {
        "route_stats",
        "carrier_stats",
        "airport_weather",
        "departure_events",
    }
    assert {"route_delay_rate_7d", "carrier_flights_28d", "wx_temp"} <= set(
        prediction["missing_features"]
    )


def test_as_of_of_a_flight_wins_over_the_requests(client: TestClient) -> None:
    """A request-wide as_of applies to its flights without one; a flight's own wins. An as_of
    years after the store's last row finds the time-varying groups stale."""
    late = {**UA_1545, "as_of": None}
    body = {"as_of": "2014-06-01T00:00:00Z", "flights": [UA_1545, late]}
    response = client.post("/v1/predictions", json=body, headers=KEY)
    assert response.status_code == 200, response.text
    own, shared = response.json()["predictions"]
    assert own["prediction_time"] == "2013-03-10T12:30:00+00:00" and own["missing_groups"] == []
    assert shared["prediction_time"] == "2014-06-01T00:00:00+00:00"
    assert set(shared["missing_groups"]) == {
        "route_stats",
        "carrier_stats",
        "airport_weather",
        "departure_events",
    }
    alone = predict(client, UA_1545)["predictions"][0]["probability"]
    assert own["probability"] == pytest.approx(alone, abs=1e-6)


def test_as_of_in_the_future_or_without_offset_is_refused(client: TestClient) -> None:
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    cases = {
        "flights[0].as_of: ": {"flights": [{**UA_1545, "as_of": future}]},
        "as_of: ": {"as_of": future, "flights": [{**UA_1545, "as_of": None}]},
        "timezone": {"flights": [{**UA_1545, "as_of": "2013-03-10T07:30:00"}]},
    }
    for expected, body in cases.items():
        response = client.post("/v1/predictions", json=body, headers=KEY)
        assert response.status_code == 422, response.text
        assert expected in response.json()["message"], response.text
    documented = client.get("/openapi.json").json()["components"]["schemas"]
    assert "as_of" in documented["PredictionRequest"]["properties"]
    assert "as_of" in documented["ScheduledFlight"]["properties"]
    assert "prediction_time" in documented["FlightPrediction"]["properties"]


def test_many_flights_in_one_request_keep_their_order(client: TestClient) -> None:
    flights = [{**UA_1545, "sched_dep_time": t} for t in (600, 830, 1200, 1745, 2100)]
    body = predict(client, *flights)
    ids = [p["flight_id"][-4:] for p in body["predictions"]]
    assert ids == ["0600", "0830", "1200", "1745", "2100"]
    alone = predict(client, flights[3])["predictions"][0]["probability"]
    assert body["predictions"][3]["probability"] == pytest.approx(alone, abs=1e-6)


def test_http_and_grpc_inference_give_the_same_probabilities(
    client: TestClient,
    registered_model: RegisteredModel,
    triton: SharedTriton,
    tmp_path: Path,
) -> None:
    """Without Triton's gRPC address the service infers over HTTP: same answers."""
    assert triton.grpc_url is not None
    flights = [{**UA_1545, "sched_dep_time": t} for t in (600, 1745)]
    over_grpc = predict(client, *flights)
    settings = inference_settings(
        registered_model.root, triton, tmp_path, api_key=API_KEY, triton_grpc_url=None
    )
    with TestClient(create_app(settings)) as http_client:
        over_http = predict(http_client, *flights)
    assert [p["probability"] for p in over_http["predictions"]] == pytest.approx(
        [p["probability"] for p in over_grpc["predictions"]], abs=1e-7
    )


def test_unknown_carrier_airport_and_plane_are_imputed_and_flagged(client: TestClient) -> None:
    flight = {**UA_1545, "carrier": "ZZ", "dest": "QQQ", "tailnum": "N00000"}
    (prediction,) = predict(client, flight)["predictions"]
    assert 0.0 < prediction["probability"] < 1.0
    assert set(prediction["unknown_categories"]) == {"carrier", "dest"}
    assert set(prediction["missing_groups"]) == {"route_stats", "carrier_stats", "planes"}
    assert {"route_delay_rate_7d", "carrier_flights_28d", "plane_seats"} <= set(
        prediction["missing_features"]
    )


def _imputed_counts(client: TestClient) -> dict[str, float]:
    return {
        sample.labels["feature"]: sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        if family.name == "fti_imputed_features"
        for sample in family.samples
        if sample.name == "fti_imputed_features_total"
    }


def test_imputed_features_are_counted_per_feature_in_the_metrics(client: TestClient) -> None:
    before = _imputed_counts(client)
    unknown = {**UA_1545, "carrier": "ZZ", "dest": "QQQ", "tailnum": "N00000"}
    answered = predict(client, unknown, UA_1545, unknown)["predictions"]
    after = _imputed_counts(client)
    expected: dict[str, int] = {}
    for prediction in answered:
        for feature in prediction["missing_features"]:
            expected[feature] = expected.get(feature, 0) + 1
    assert expected["plane_seats"] >= 2
    grown = {f: after[f] - before.get(f, 0.0) for f in after if after[f] != before.get(f, 0.0)}
    assert grown == expected


def test_malformed_requests_get_a_readable_422(client: TestClient) -> None:
    cases = {
        "flights[0].sched_dep_time: 875 is not an hhmm time": {**UA_1545, "sched_dep_time": 875},
        "flights[0].distance": {**UA_1545, "distance": -3},
        "flights[0].flight_date": {**UA_1545, "flight_date": "2013-02-30"},
        "flights[0].origin": {**UA_1545, "origin": "newark"},
        "flights[0].seats: Extra inputs are not permitted": {**UA_1545, "seats": 3},
    }
    for expected, flight in cases.items():
        response = client.post("/v1/predictions", json={"flights": [flight]}, headers=KEY)
        assert response.status_code == 422
        assert expected in response.json()["message"], response.json()
    empty = client.post("/v1/predictions", json={"flights": []}, headers=KEY)
    assert empty.status_code == 422 and "flights" in empty.json()["message"]
    for broken, expected in (('{"flights": [', "Invalid JSON"), ("", "Invalid JSON")):
        response = client.post(
            "/v1/predictions",
            content=broken,
            headers={**KEY, "Content-Type": "application/json"},
        )
        assert response.status_code == 422
        assert response.json()["message"].startswith(f"body: {expected}"), response.json()


def test_api_key_is_required_and_checked(client: TestClient) -> None:
    body = {"flights": [UA_1545]}
    assert client.post("/v1/predictions", json=body).status_code == 401
    wrong = client.post("/v1/predictions", json=body, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 403
    admin_key = client.post("/v1/predictions", json=body, headers={"X-API-Key": ADMIN_KEY})
    assert admin_key.status_code == 403
    for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(probe).status_code == 200, probe


def test_refusals_name_the_problem_in_the_error_body(client: TestClient) -> None:
    missing = client.post("/v1/predictions", json={"flights": [UA_1545]})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "X-API-Key"
    assert missing.json()["error"] == "unauthorized" and "X-API-Key" in missing.json()["message"]
    too_many = client.post("/v1/predictions", json={"flights": [UA_1545] * 1001}, headers=KEY)
    assert too_many.status_code == 422
    assert "at most 1000 (FTI_MAX_FLIGHTS_PER_REQUEST)" in too_many.json()["message"]
    huge = client.post(
        "/v1/predictions",
        content=b'{"flights": [' + b" " * 2_000_000 + b"]}",
        headers={**KEY, "Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert "FTI_MAX_FLIGHTS_PER_REQUEST" in huge.json()["message"]


JSON = {"Content-Type": "application/json"}


def _exchange(client: TestClient, body: bytes, headers: dict[str, str]) -> tuple[object, ...]:
    response = client.post("/v1/predictions", content=body, headers=headers)
    kept = ("content-type", "x-request-id", "www-authenticate", "connection")
    return response.status_code, response.json(), {h: response.headers.get(h) for h in kept}


def _stalled_body(client: TestClient, headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...]:
    """A prediction request whose body never completes, sent straight to the ASGI app on the
    client's event loop (an HTTP client cannot send half a body): (status, headers, body)."""

    async def exchange() -> tuple[Any, ...]:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": b'{"flights": [', "more_body": True}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the rest of the body never comes
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/predictions",
            "raw_path": b"/v1/predictions",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-length", b"1000000"), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await client.app(scope, receive, send)  # type: ignore[arg-type]
        start, body = sent[0], sent[1]
        kept = {
            k.decode(): v.decode()
            for k, v in start["headers"]
            if k in (b"connection", b"x-request-id", b"content-type")
        }
        return start["status"], kept, json.loads(body["body"])

    assert client.portal is not None
    return client.portal.call(exchange)  # type: ignore[no-any-return]


def test_the_fast_path_and_the_fastapi_route_answer_alike(client: TestClient) -> None:
    """`PredictionService` answers predictions in front of FastAPI; its route (what OpenAPI
    documents, and what answers with the fast path off) must give the very same answers."""
    one = json.dumps({"flights": [UA_1545]}).encode()
    json_key = KEY | JSON

    def with_time(value: object) -> str:
        return json.dumps({"flights": [{**UA_1545, "sched_dep_time": value}]})

    requests = {
        "one flight": (one, json_key),
        "two flights": (json.dumps({"flights": [UA_1545, {**UA_1545, "carrier": "ZZ"}]}), json_key),
        "charset": (one, KEY | {"Content-Type": "Application/JSON; charset=utf-8"}),
        "no key": (one, JSON),
        "wrong key": (one, {"X-API-Key": "nope", **JSON}),
        "bad field": (with_time(875), json_key),
        "true as a time": (with_time(True), json_key),
        "text as a time": (with_time("0830"), json_key),
        "float as a time": (with_time(830.0), json_key),
        "broken JSON": (b'{"flights": [', json_key),
        "too many": (json.dumps({"flights": [UA_1545] * 1001}), json_key),
        "too large": (b'{"flights": [' + b" " * 2_000_000 + b"]}", json_key),
        "form": (one, KEY | {"Content-Type": "application/x-www-form-urlencoded"}),
        "text": (one, KEY | {"Content-Type": "text/plain"}),
        "no content type": (one, KEY),
    }
    service = client.app
    assert isinstance(service, PredictionService)
    answers, stalled = {}, {}
    configured = service.fast_predictions
    timeout_s = service.body_deadlines.timeout_s
    service.body_deadlines.timeout_s = 0.3
    try:
        for fast in (True, False):
            service.fast_predictions = fast
            answers[fast] = {
                name: _exchange(
                    client,
                    body if isinstance(body, bytes) else body.encode(),
                    {**headers, "X-Request-ID": f"same-{name}"},
                )
                for name, (body, headers) in requests.items()
            }
            stalled[fast] = _stalled_body(
                client,
                [
                    (b"x-api-key", API_KEY.encode()),
                    (b"x-request-id", b"stalled"),
                    (b"content-type", b"application/json"),
                ],
            )
    finally:
        service.fast_predictions = configured
        service.body_deadlines.timeout_s = timeout_s
    for name in requests:
        assert answers[True][name] == answers[False][name], name
    statuses = {name: answer[0] for name, answer in answers[True].items()}
    assert statuses == {
        "one flight": 200,
        "two flights": 200,
        "charset": 200,
        "no key": 401,
        "wrong key": 403,
        "bad field": 422,
        "true as a time": 422,
        "text as a time": 422,
        "float as a time": 422,
        "broken JSON": 422,
        "too many": 422,
        "too large": 413,
        "form": 415,
        "text": 415,
        "no content type": 415,
    }
    for name in ("true as a time", "text as a time", "float as a time"):
        message = answers[True][name][1]["message"]  # type: ignore[index]
        assert message == "flights[0].sched_dep_time: Input should be a valid integer", name
    refused = answers[True]["form"][1]
    assert refused["error"] == "unsupported_media_type"  # type: ignore[index]
    assert "application/json" in refused["message"]  # type: ignore[index]

    assert stalled[True] == stalled[False]
    status, headers, body = stalled[True]
    assert status == 408 and headers["connection"] == "close"
    assert body["error"] == "body_timeout" and "FTI_BODY_TIMEOUT_S" in body["message"]
    assert body["request_id"] == "stalled"

    text = client.get("/metrics").text
    for status in (200, 401, 403, 408, 413, 415, 422):
        assert f'fti_http_requests_total{{route="/v1/predictions",status="{status}"}}' in text


def test_an_unexpected_failure_answers_alike_on_both_paths(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while scoring: a 500 `ErrorBody` with the request id, whether the fast path or
    FastAPI's route answers (the route's was Starlette's plain-text 500)."""
    service = client.app
    assert isinstance(service, PredictionService) and service.runtime is not None

    async def fails(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.runtime.traffic, "answer", fails)
    # Starlette re-raises after its error handler answered (for the server's log); the test
    # client would raise it here instead of returning the answer a real client gets.
    monkeypatch.setattr(client._transport, "raise_server_exceptions", False)
    body = json.dumps({"flights": [UA_1545]}).encode()
    answers = {}
    configured = service.fast_predictions
    try:
        for fast in (True, False):
            service.fast_predictions = fast
            answers[fast] = _exchange(client, body, KEY | JSON | {"X-Request-ID": "bug-1"})
    finally:
        service.fast_predictions = configured
    assert answers[True] == answers[False]
    status, error, headers = answers[True]
    assert status == 500 and headers["x-request-id"] == "bug-1"  # type: ignore[index]
    assert error["error"] == "internal_error" and error["request_id"] == "bug-1"  # type: ignore[index]


def test_middleware_added_later_turns_the_fast_path_off_loudly(
    registered_model: RegisteredModel,
    triton: SharedTriton,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A middleware the fast path would skip: the app answers predictions through FastAPI's
    route instead (so it runs), and says so."""
    settings = inference_settings(registered_model.root, triton, tmp_path, api_key=API_KEY)
    app = create_app(settings)

    class Stamp:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def stamped(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"x-stamp", b"yes")]
                await send(message)

            await self.app(scope, receive, stamped)

    app.add_middleware(Stamp)
    with caplog.at_level("WARNING"), TestClient(app) as later:
        response = later.post("/v1/predictions", json={"flights": [UA_1545]}, headers=KEY)
    assert response.status_code == 200, response.text
    assert response.headers["x-stamp"] == "yes"
    assert app.fast_predictions is False
    assert any("middleware Stamp" in r.getMessage() for r in caplog.records)


def test_reload_needs_the_admin_key_and_serves_the_alias(
    client: TestClient, registered_model: RegisteredModel
) -> None:
    admin = {"X-API-Key": ADMIN_KEY}
    refusals = {
        401: client.post("/admin/reload", json={}),
        403: client.post("/admin/reload", json={}, headers=KEY),
        404: client.post("/admin/reload", json={"alias": "nosuch"}, headers=admin),
        415: client.post("/admin/reload", content=b"alias=x", headers=admin),
        422: client.post(
            "/admin/reload",
            content=b"\xff\xfe",
            headers=admin | {"Content-Type": "application/json"},
        ),
    }
    for status, response in refusals.items():
        assert response.status_code == status, response.text
        assert set(response.json()) >= {"error", "message", "request_id"}, response.json()
        assert "detail" not in response.json()
    assert "nosuch" in refusals[404].json()["message"]
    bad_alias = client.post("/admin/reload", json={"alias": "no/such"}, headers=admin)
    assert bad_alias.status_code == 422 and bad_alias.json()["problems"][0].startswith("alias")
    response = client.post("/admin/reload", json={"alias": "champion"}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == registered_model.version
    empty = client.post("/admin/reload", headers=admin)  # no body: the champion alias
    assert empty.status_code == 200 and empty.json()["alias"] == "champion", empty.text
    predict(client, UA_1545)  # still serving


def test_unknown_routes_and_methods_answer_the_error_body(client: TestClient) -> None:
    missing = client.get("/v1/nosuch")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found" and missing.json()["request_id"]
    wrong = client.get("/v1/predictions")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"


def test_the_documented_examples_are_what_the_service_answers(
    client: TestClient, registered_model: RegisteredModel
) -> None:
    """Each request example of the OpenAPI document, sent to the service, gets the answer its
    same-named response example shows: the same flights, T, lead and missing or unknown inputs
    (the probability, the ids and the version are this test model's own)."""
    from inference_pipeline.service.api_reference import (
        PREDICTION_REQUEST_EXAMPLES,
        PREDICTION_RESPONSE_EXAMPLES,
    )
    from inference_pipeline.service.schemas import PredictionResponse

    def what_is_shown(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {k: sorted(v) if isinstance(v, list) else v for k, v in p.items()}
            | {"probability": None, "model_version": None}
            for p in predictions
        ]

    assert set(PREDICTION_REQUEST_EXAMPLES) == set(PREDICTION_RESPONSE_EXAMPLES)
    live, documented = {}, {}
    for name, example in PREDICTION_REQUEST_EXAMPLES.items():
        response = client.post("/v1/predictions", json=example["value"], headers=KEY)
        assert response.status_code == 200, response.text
        body = PredictionResponse.model_validate(response.json())
        assert {p.model_version for p in body.predictions} == {registered_model.version}
        live[name] = what_is_shown(response.json()["predictions"])
        documented[name] = what_is_shown(PREDICTION_RESPONSE_EXAMPLES[name]["value"]["predictions"])
    assert live == documented, json.dumps(live, indent=1)


def test_the_documented_probe_and_reload_answers_are_the_live_ones(
    client: TestClient, registered_model: RegisteredModel
) -> None:
    """The documented examples show version 3 of flight_delay; here the version is the test
    model's."""
    from inference_pipeline.service.api_reference import (
        LIVENESS_EXAMPLES,
        READINESS_EXAMPLES,
        RELOAD_RESPONSE_EXAMPLES,
    )

    version = registered_model.version

    def as_served(example: dict[str, Any]) -> Any:
        text = json.dumps(example["value"]).replace("v3", f"v{version}")
        return json.loads(text.replace('"3"', f'"{version}"'))

    assert client.get("/healthz").json() == LIVENESS_EXAMPLES["ok"]["value"]
    assert client.get("/readyz").json() == as_served(READINESS_EXAMPLES["ready"])
    reloaded = client.post("/admin/reload", json={}, headers={"X-API-Key": ADMIN_KEY})
    assert reloaded.status_code == 200, reloaded.text
    assert set(reloaded.json()) == set(RELOAD_RESPONSE_EXAMPLES["moved"]["value"])


def test_live_refusals_match_the_documented_examples(client: TestClient) -> None:
    """For each refusal the tests can provoke here, the service answers the `error` code (and
    the fields) of the status' documented example."""
    from inference_pipeline.service.api_reference import PREDICTION_REFUSALS, RELOAD_REFUSALS

    admin = {"X-API-Key": ADMIN_KEY}
    flight = {"flights": [UA_1545]}
    live = {
        ("/v1/predictions", 401): client.post("/v1/predictions", json=flight),
        ("/v1/predictions", 403): client.post(
            "/v1/predictions", json=flight, headers={"X-API-Key": "wrong"}
        ),
        ("/v1/predictions", 413): client.post(
            "/v1/predictions",
            content=b" " * 2_000_000,
            headers=KEY | {"Content-Type": "application/json"},
        ),
        ("/v1/predictions", 415): client.post("/v1/predictions", content=b"flights=1", headers=KEY),
        ("/v1/predictions", 422): client.post(
            "/v1/predictions",
            json={"flights": [{**UA_1545, "sched_dep_time": 875}]},
            headers=KEY,
        ),
        ("/admin/reload", 401): client.post("/admin/reload", json={}),
        ("/admin/reload", 403): client.post("/admin/reload", json={}, headers=KEY),
        ("/admin/reload", 404): client.post(
            "/admin/reload", json={"alias": "nosuch"}, headers=admin
        ),
        ("/admin/reload", 415): client.post("/admin/reload", content=b"alias=x", headers=admin),
        ("/admin/reload", 422): client.post(
            "/admin/reload", json={"alias": "no/such"}, headers=admin
        ),
    }
    for (path, status), response in live.items():
        assert response.status_code == status, (path, response.text)
        refusals = PREDICTION_REFUSALS if path == "/v1/predictions" else RELOAD_REFUSALS
        examples = [body for _, body in refusals[status][1].values()]
        body = response.json()
        assert body["error"] in {e["error"] for e in examples}, (path, status, body)
        assert body["request_id"] == response.headers["X-Request-ID"]
        same_code = next(e for e in examples if e["error"] == body["error"])
        assert set(body) - {"dependency"} == set(same_code) - {"dependency"}, (path, status)
        assert body.get("dependency") == same_code.get("dependency"), (path, status)


def test_readiness_names_every_dependency(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"feature_store", "registry", "triton"}


def test_metrics_expose_stage_latencies_counts_and_model(
    client: TestClient, registered_model: RegisteredModel
) -> None:
    predict(client, UA_1545)
    text = client.get("/metrics").text
    for stage in ("features", "transform", "triton", "total"):
        assert f'fti_prediction_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'fti_http_requests_total{route="/v1/predictions",status="200"}' in text
    assert f"fti_model_version {float(registered_model.version)}" in text
    assert 'fti_model_info{alias="champion"' in text


def test_every_prediction_is_logged_for_monitoring(
    client: TestClient, registered_model: RegisteredModel
) -> None:
    # Both request paths log to the same data root: an id of its own per run, or the second
    # run reads the first one's row as well.
    request_id = f"log-me-{uuid.uuid4().hex}"
    response = client.post(
        "/v1/predictions", json={"flights": [UA_1545]}, headers={**KEY, "X-Request-ID": request_id}
    )
    assert response.status_code == 200
    store = open_feature_store(FeatureStoreSettings(data_root=registered_model.root))
    try:
        deadline = time.monotonic() + 10
        rows = pl.DataFrame()
        while time.monotonic() < deadline:
            drain_prediction_log(registered_model.root)  # as the log writer process does
            if store.table_version(PREDICTIONS) is not None:
                rows = store.read(PREDICTIONS).filter(pl.col("request_id") == request_id)
                if rows.height:
                    break
            time.sleep(0.2)
    finally:
        store.close()
    assert rows.height == 1
    row = rows.row(0, named=True)
    assert row["flight_id"] == "20130310-UA1545-EWR-0830"
    assert row["model_version"] == registered_model.version
    assert row["source"] == "online"
    assert row["probability"] == pytest.approx(response.json()["predictions"][0]["probability"])
    assert row["latency_ms"] > 0
    assert '"route_delay_rate_7d"' in row["features"]


def test_openapi_documents_the_api_key_and_the_request_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/predictions" in spec["paths"]
    assert spec["components"]["securitySchemes"]["APIKey"]["name"] == "X-API-Key"
    body = spec["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictionRequest"}
    schemas = spec["components"]["schemas"]
    flights = schemas["PredictionRequest"]["properties"]["flights"]
    assert flights["items"] == {"$ref": "#/components/schemas/ScheduledFlight"}
    assert {"flight_date", "carrier", "origin"} <= set(schemas["ScheduledFlight"]["properties"])
    answer = spec["paths"]["/v1/predictions"]["post"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictionResponse"
    }


def test_openapi_documents_the_hhmm_rule_and_every_refusal(client: TestClient) -> None:
    from inference_pipeline.service.schemas import ScheduledFlight

    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    hhmm = schemas["ScheduledFlight"]["properties"]["sched_dep_time"]
    assert "minutes 00-59" in hhmm["description"] and hhmm["examples"] == [830, 1745]

    def in_schema(value: int) -> bool:
        ranges = hhmm["anyOf"]
        return hhmm["minimum"] <= value <= hhmm["maximum"] and any(
            r["minimum"] <= value <= r["maximum"] for r in ranges
        )

    def accepted(value: int) -> bool:
        flight = {**UA_1545, "sched_dep_time": value}
        try:
            ScheduledFlight.model_validate_json(json.dumps(flight))
        except ValueError:
            return False
        return True

    assert [v for v in range(-5, 2500) if in_schema(v) != accepted(v)] == []
    assert set(schemas["ErrorBody"]["properties"]) >= {"error", "message", "problems"}
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path, statuses in {
        "/v1/predictions": ("401", "403", "408", "413", "415", "422", "503"),
        "/admin/reload": ("401", "403", "404", "408", "409", "415", "422", "503"),
    }.items():
        operation = spec["paths"][path]["post"]
        for status in statuses:
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == error_body, (path, status)
    reload_body = spec["paths"]["/admin/reload"]["post"]["requestBody"]
    assert reload_body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReloadRequest"
    }
    assert "ReloadRequest" in schemas


def test_settings_refuse_an_open_api_on_a_public_address(tmp_path: Path) -> None:
    from inference_pipeline.settings import InferenceSettings
    from shared.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="FTI_API_KEY"):
        InferenceSettings(data_root=tmp_path, host="0.0.0.0")
    with pytest.raises(ConfigurationError, match="differ"):
        InferenceSettings(data_root=tmp_path, api_key=API_KEY, admin_api_key=API_KEY)


def test_concurrent_requests_share_one_batch_and_get_their_own_rows(
    registered_model: RegisteredModel, triton: SharedTriton, tmp_path: Path
) -> None:
    """Request coalescing in the runtime: concurrent requests for one model version share one
    store read, one MDT and one Triton call, and each gets exactly its own flights' inputs and
    probabilities, as if sent alone."""
    import numpy as np

    from inference_pipeline.service.metrics import ServiceMetrics
    from inference_pipeline.service.prediction_requests import flights_as_of
    from inference_pipeline.service.runtime import ServiceRuntime
    from inference_pipeline.service.schemas import PredictionRequest
    from shared.prediction_time import now_us

    settings = inference_settings(
        registered_model.root, triton, tmp_path, prediction_log=False, alias_poll_s=0
    )
    carriers = [("UA", "EWR", "IAH"), ("AA", "JFK", "MIA"), ("DL", "LGA", "ATL")]
    sizes = (1, 3, 1, 7, 2, 1, 5, 1)
    parts: list[list[dict[str, Any]]] = []
    for i, size in enumerate(sizes):
        flights = []
        for j in range(size):
            carrier, origin, dest = carriers[(i + j) % 3]
            when = {"flight_date": f"2013-03-{1 + (i * 7 + j) % 28:02d}", "sched_dep_time": 600 + j}
            flights.append(UA_1545 | when | {"carrier": carrier, "origin": origin, "dest": dest})
        request = PredictionRequest.model_validate_json(json.dumps({"flights": flights}))
        parts.append(flights_as_of(request, now_us()))

    metrics = ServiceMetrics()

    async def scenario() -> tuple[list[Any], list[Any], dict[str, int]]:
        runtime = ServiceRuntime(settings, metrics)
        await runtime.start()
        calls = {"triton": 0, "store": 0}
        try:
            client, store = runtime.triton.client, runtime.store
            assert client is not None and store is not None
            model, pipeline = runtime.models.champion, runtime.traffic.pipeline
            alone = [await pipeline.score(model, part) for part in parts]
            infer = client.infer
            # One store round trip per batch: the view's groups alone, or with the fresh
            # features' ranges (a view that has them).
            reads = {
                name: getattr(store.store, name)
                for name in ("get_online_rows", "get_online_rows_and_ranges")
            }

            async def counted_infer(*args: Any) -> Any:
                calls["triton"] += 1
                return await infer(*args)

            def counted(read: Any) -> Any:
                def counted_read(*args: Any) -> Any:
                    calls["store"] += 1
                    return read(*args)

                return counted_read

            client.infer = counted_infer  # type: ignore[method-assign]
            for name, read in reads.items():
                setattr(store.store, name, counted(read))
            together = await asyncio.gather(*(pipeline.score(model, part) for part in parts))
        finally:
            await runtime.close()
        return alone, list(together), calls

    alone, together, calls = asyncio.run(scenario())
    for single, batched, size in zip(alone, together, sizes, strict=True):
        assert len(batched.probabilities) == size
        np.testing.assert_allclose(batched.probabilities, single.probabilities, atol=1e-6)
        assert batched.inputs.flight_ids == single.inputs.flight_ids
        assert batched.inputs.reports == single.inputs.reports
        names = list(single.inputs.features.columns)
        assert [batched.inputs.features.row(r, names) for r in range(size)] == [
            single.inputs.features.row(r, names) for r in range(size)
        ]
    assert len({p for s in alone for p in s.probabilities}) > 1  # the flights differ
    # The first request runs at once; the seven arriving meanwhile share the next batch.
    assert calls["triton"] == calls["store"] < len(sizes)
    # fti_scored_batch_requests: one observation per batch, of its requests (alone, then
    # together).
    batches = metrics.registry.get_sample_value("fti_scored_batch_requests_count")
    requests = metrics.registry.get_sample_value("fti_scored_batch_requests_sum")
    assert (batches, requests) == (len(sizes) + calls["triton"], 2 * len(sizes))


def test_model_downloads_are_removed_when_no_longer_served(
    registered_model: RegisteredModel, triton: SharedTriton, tmp_path: Path
) -> None:
    """Every start downloaded a copy of the model into serving/artifacts and nothing removed
    it. Now a service keeps only what it serves, in a folder of its own that goes when it
    stops, and sweeps what processes that are gone left behind."""
    settings = inference_settings(
        registered_model.root, triton, tmp_path, admin_api_key=ADMIN_KEY, prediction_log=False
    )
    artifacts = settings.serving_dir / "artifacts"
    left_behind = artifacts / ("0" * 32) / "model"  # a copy from before, days old
    left_behind.mkdir(parents=True)
    week_ago = time.time() - 7 * 86400
    os.utime(left_behind.parent, (week_ago, week_ago))
    for _ in range(2):
        with TestClient(create_app(settings)) as client:
            (own,) = artifacts.iterdir()
            assert len([p for p in own.iterdir() if p.is_dir()]) == 1  # the served version
            again = client.post(
                "/admin/reload", json={"alias": "champion"}, headers={"X-API-Key": ADMIN_KEY}
            )
            assert again.status_code == 200
            assert len([p for p in own.iterdir() if p.is_dir()]) == 1
        assert list(artifacts.iterdir()) == []


def test_the_log_writer_builds_the_rows_the_service_would_have_from_real_inputs(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    """The real model's online inputs (stored features as the store returns them, on-demand
    features as numpy arrays), in two requests of one coalesced batch: the rows the log writer
    decodes from the appended record equal the rows built from the service's own objects, so
    the predictions table (and what the monitor reads) is unchanged."""
    from datetime import date

    from inference_pipeline.model_artifact import load_serving_model
    from inference_pipeline.prediction_sink.records import (
        decode_batches,
        encode_batch,
        prediction_rows,
    )
    from inference_pipeline.scoring import online_inputs
    from shared.prediction_log import ONLINE_SOURCE, LoggedPredictions
    from shared.registry import ModelRegistry, RegistrySettings

    registry = ModelRegistry(
        RegistrySettings(data_root=registered_model.root, model_name=MODEL_NAME)
    )
    model = load_serving_model(registry, "champion", tmp_path / "artifact")
    as_of = int(datetime(2013, 3, 10, 12, 30, tzinfo=UTC).timestamp() * 1_000_000)
    flights = [
        {**UA_1545, "flight_date": date(2013, 3, 10), "sched_dep_time": t, "prediction_time": as_of}
        for t in (600, 1200, 1830)
    ]
    flights[2]["tailnum"] = "N-UNKNOWN"  # a plane the store does not know: missing features
    store = open_feature_store(FeatureStoreSettings(data_root=registered_model.root))
    try:
        inputs = online_inputs(store, model, flights)
    finally:
        store.close()
    entries = [
        LoggedPredictions(
            flight_ids=part.flight_ids,
            columns=part.features.columns,
            window=part.features.window,
            features=model.input_features,
            probabilities=[0.25] * len(part.flight_ids),
            missing=[r.missing_features for r in part.reports],
            model_version=model.version,
            request_id=f"real-{i}",
            scored_at=datetime(2026, 12, 5, tzinfo=UTC),
            source=ONLINE_SOURCE,
            latency_ms=2.0,
        )
        for i, part in enumerate(inputs.split([1, 2]))
    ]
    logged = prediction_rows(decode_batches(encode_batch(entries, "real")))
    assert logged.height == 3
    assert logged.equals(prediction_rows(entries))
    assert '"route_delay_rate_7d"' in logged["features"][0]
