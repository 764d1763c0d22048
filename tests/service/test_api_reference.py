"""The API a client developer meets, without a model or Triton behind it: the documentation pages
served with their own assets (no external host, rendered by headless Chromium with every other
host unreachable), the OpenAPI document's examples (each checked against its schema and against
what the service's own functions answer), one error body for every refusal, and route
descriptions written for users. The live answers to the examples are checked against a real
model in test_online_service."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr

from inference_pipeline.service import create_app
from inference_pipeline.service.api_reference import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    PREDICTION_REFUSALS,
    PREDICTION_REQUEST_EXAMPLES,
    PREDICTION_RESPONSE_EXAMPLES,
    RELOAD_REFUSALS,
)
from inference_pipeline.service.app import PredictionService
from inference_pipeline.service.body import BodyDeadlines
from inference_pipeline.service.dependencies import check_api_key, require_admin_key
from inference_pipeline.service.errors import _ERRORS, ApiError
from inference_pipeline.service.prediction_requests import (
    _parse,
    _too_many,
    body_too_large,
    check_json,
    is_test_traffic,
)
from inference_pipeline.service.schemas import ErrorBody, PredictionRequest, PredictionResponse
from inference_pipeline.settings import InferenceSettings

DOC_PAGES = ("/docs", "/redoc")
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
# The probes answer their own bodies, 503 included: they report on the service, not a request.
PROBES = {("/healthz", "503"): "Liveness", ("/readyz", "503"): "Readiness"}
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> PredictionService:
    """The service's app without its lifespan: no model, store or Triton, which the pages, the
    OpenAPI document and the framework's refusals do not need."""
    return create_app(InferenceSettings(data_root=tmp_path_factory.mktemp("api-reference")))


@pytest.fixture(scope="module")
def client(app: PredictionService) -> TestClient:
    return TestClient(app)


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def referenced_urls(html: str) -> list[str]:
    """Every URL a page loads or links: src/href attributes, ReDoc's spec-url, Swagger UI's
    ``url:``, and any absolute URL anywhere in it."""
    attributes = re.findall(r'(?:src|href|spec-url)="([^"]*)"', html)
    swagger_spec = re.findall(r"\burl: '([^']*)'", html)
    absolute = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'<>]*", html)
    return attributes + swagger_spec + absolute


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_pages_load_only_this_services_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = referenced_urls(response.text)
    assert urls, "the page references nothing: the test would prove nothing"
    external = [u for u in urls if not u.startswith("/") or u.startswith("//")]
    assert external == [], f"{page} loads from another host: {external}"
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        expected = ASSET_TYPES.get(Path(url).suffix, "application/json")
        assert asset.headers["content-type"].startswith(expected), (url, asset.headers)
        assert len(asset.content) > 1000, url  # the real file, not an empty stand-in


def test_swagger_ui_is_a_version_that_renders_openapi_3_1(
    client: TestClient, spec: dict[str, Any]
) -> None:
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on (4.x shows
    'Unable to render this definition'): the bundled version must be 5 or later."""
    assert spec["openapi"].startswith("3.1")
    bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
    (major,) = re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle)
    assert "SwaggerUIBundle" in bundle and int(major) >= 5, major


def test_unknown_paths_and_wrong_methods_answer_the_error_body(client: TestClient) -> None:
    cases = {
        ("GET", "/v1/prediction"): (404, NOT_FOUND),
        ("GET", "/v1/predictions"): (405, METHOD_NOT_ALLOWED),
        ("DELETE", "/healthz"): (405, None),
        ("GET", "/docs-assets/no-such-file.js"): (404, None),
    }
    for (method, path), (status, documented) in cases.items():
        response = client.request(method, path, headers={"X-Request-ID": "req-7"})
        assert response.status_code == status, (method, path)
        body = ErrorBody.model_validate(response.json())
        assert body.request_id == "req-7" == response.headers["X-Request-ID"]
        assert set(response.json()) == {"error", "message", "request_id"}
        assert path in body.message, body.message
        if documented is not None:
            assert body.error == documented["error"]
            assert body.message == documented["message"]
    wrong = client.get("/v1/predictions")
    assert wrong.headers["allow"] == "POST" and wrong.json()["message"].endswith("use POST")


def documented_responses(spec: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                yield path, method, status, response


def test_every_documented_error_is_an_error_body_with_examples(spec: dict[str, Any]) -> None:
    errors = 0
    for path, method, status, response in documented_responses(spec):
        if int(status) < 400:
            continue
        content = response["content"]["application/json"]
        if (path, status) in PROBES:
            assert content["schema"] == {"$ref": f"#/components/schemas/{PROBES[path, status]}"}
            continue
        errors += 1
        where = f"{method.upper()} {path} {status}"
        assert content["schema"] == ERROR_BODY, where
        assert response["description"].strip(), where
        examples = content.get("examples", {})
        assert examples, f"{where}: no example"
        for name, example in examples.items():
            body = example["value"]
            ErrorBody.model_validate(body)
            assert example["summary"], (where, name)
            assert ("problems" in body) == (status == "422"), (where, name)
            if status == "503":
                assert body["dependency"] in {"feature_store", "triton", "registry"}
    assert errors == len(PREDICTION_REFUSALS) + len(RELOAD_REFUSALS)  # none left unchecked


def test_every_documented_json_answer_and_body_has_examples_of_its_schema(
    spec: dict[str, Any],
) -> None:
    """Successes, probes and bodies too, not only errors: each example validates as the
    schema the document gives beside it."""
    from inference_pipeline.service import schemas

    def check(where: str, media: dict[str, Any]) -> None:
        examples = media.get("examples", {})
        assert examples, f"{where}: no example"
        model = getattr(schemas, media["schema"]["$ref"].rsplit("/", 1)[1])
        for name, example in examples.items():
            assert example["summary"], (where, name)
            model.model_validate_json(json.dumps(example["value"]))

    checked = 0
    for path, method, status, response in documented_responses(spec):
        media = response.get("content", {}).get("application/json")
        if media is None:
            assert path == "/metrics", (path, status)  # Prometheus text
            continue
        check(f"{method.upper()} {path} {status}", media)
        checked += 1
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                check(
                    f"{method.upper()} {path} body",
                    operation["requestBody"]["content"]["application/json"],
                )
                checked += 1
    assert checked >= 23  # predictions 9, reload 10, probes 4: none skipped silently


def test_error_body_documents_the_422_problems_and_the_frameworks_refusals(
    spec: dict[str, Any],
) -> None:
    schema = spec["components"]["schemas"]["ErrorBody"]
    problems = schema["properties"]["problems"]
    assert "422" in problems["description"] and "location" in problems["description"]
    shown = {example["error"] for example in schema["examples"]}
    assert {"invalid_request", "not_found", "method_not_allowed"} <= shown
    for example in schema["examples"]:
        ErrorBody.model_validate(example)


def test_request_examples_show_one_and_several_flights(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/v1/predictions"]["post"]
    documented = operation["requestBody"]["content"]["application/json"]["examples"]
    assert documented == PREDICTION_REQUEST_EXAMPLES
    counts = set()
    for name, example in documented.items():
        request = PredictionRequest.model_validate_json(json.dumps(example["value"]))
        counts.add(len(request.flights) > 1)
        assert example["summary"], name
    assert counts == {False, True}  # one flight, and several


def test_response_examples_answer_the_request_examples(spec: dict[str, Any]) -> None:
    """Same names, one prediction per flight in the request's order, each flight's id as the
    service writes it (date-carrier+flight-origin-hhmm)."""
    ok = spec["paths"]["/v1/predictions"]["post"]["responses"]["200"]
    content = ok["content"]["application/json"]
    assert content["schema"] == {"$ref": "#/components/schemas/PredictionResponse"}
    assert content["examples"] == PREDICTION_RESPONSE_EXAMPLES
    assert set(PREDICTION_RESPONSE_EXAMPLES) == set(PREDICTION_REQUEST_EXAMPLES)
    for name, example in PREDICTION_RESPONSE_EXAMPLES.items():
        response = PredictionResponse.model_validate(example["value"])
        flights = PREDICTION_REQUEST_EXAMPLES[name]["value"]["flights"]
        ids = [
            f"{f['flight_date'].replace('-', '')}-{f['carrier']}{f['flight']}-{f['origin']}-"
            f"{f['sched_dep_time']:04d}"
            for f in flights
        ]
        assert [p.flight_id for p in response.predictions] == ids, name


def raised(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


def documented(refusals: dict[int, Any], status: int, name: str) -> dict[str, Any]:
    return refusals[status][1][name][1]


def assert_same(error: ApiError, example: dict[str, Any]) -> None:
    assert (error.error, error.message) == (example["error"], example["message"])
    assert error.problems == example.get("problems")


def test_error_examples_are_what_the_service_raises() -> None:
    """Each example's code and message as the service's own functions write them with the
    default settings (the messages name limits; their values are the defaults)."""
    defaults = InferenceSettings.model_fields
    timeout_s = defaults["body_timeout_s"].default
    limits = SimpleNamespace(max_flights_per_request=defaults["max_flights_per_request"].default)
    keyed = SimpleNamespace(settings=SimpleNamespace(api_key=SecretStr("k")))
    for refusals in (PREDICTION_REFUSALS, RELOAD_REFUSALS):
        assert_same(BodyDeadlines(timeout_s).timed_out(), documented(refusals, 408, "body_timeout"))
        assert_same(
            raised(check_json, "application/x-www-form-urlencoded"),
            documented(refusals, 415, "unsupported_media_type"),
        )
    p = PREDICTION_REFUSALS
    assert_same(raised(check_api_key, None, keyed), documented(p, 401, "unauthorized"))
    assert_same(raised(check_api_key, "wrong", keyed), documented(p, 403, "forbidden"))
    assert_same(body_too_large(limits), documented(p, 413, "body_too_large"))  # type: ignore[arg-type]
    bad = {"flights": [{**PREDICTION_REQUEST_EXAMPLES["one_flight"]["value"]["flights"][0]}]}
    bad["flights"][0] |= {"sched_dep_time": 875, "distance": "1400"}
    assert_same(raised(_parse, json.dumps(bad).encode()), documented(p, 422, "invalid_fields"))
    assert_same(raised(is_test_traffic, "yes"), documented(p, 422, "test_traffic_flag"))
    too_many = documented(p, 422, "too_many_flights")
    assert too_many["problems"] == [_too_many(1200, limits.max_flights_per_request)]

    def admin_refusal(key: str | None, admin_key: str | None) -> ApiError:
        secret = None if admin_key is None else SecretStr(admin_key)
        runtime = SimpleNamespace(settings=SimpleNamespace(admin_api_key=secret))
        return raised(asyncio.run, require_admin_key(runtime, key))  # type: ignore[arg-type]

    r = RELOAD_REFUSALS
    assert_same(admin_refusal(None, "admin"), documented(r, 401, "unauthorized"))
    assert_same(admin_refusal("wrong", "admin"), documented(r, 403, "forbidden"))
    assert_same(admin_refusal("any", None), documented(r, 403, "disabled"))
    # Errors of the registry, the store and Triton: the status, code and dependency that
    # errors.error_answer gives them.
    answered = set(_ERRORS.values())
    for refusals in (PREDICTION_REFUSALS, RELOAD_REFUSALS):
        for status in (404, 409, 503):
            for _, body in refusals.get(status, ("", {}))[1].values():
                assert (status, body["error"], body["dependency"]) in answered, body


def test_route_descriptions_are_written_for_users(spec: dict[str, Any]) -> None:
    framework_words = re.compile(r"FastAPI|Starlette|ASGI|fast path|route's|dependency solv")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            text = operation.get("description", "")
            assert len(text) > 80, f"{method.upper()} {path}: no description"
            assert not framework_words.search(text), f"{method.upper()} {path}: {text}"
            assert operation["summary"], path
    predict = spec["paths"]["/v1/predictions"]["post"]["description"]
    for subject in ("as_of", "prediction_time", "lead_minutes", "X-FTI-Test-Traffic"):
        assert subject in predict, subject
    overview = spec["info"]["description"]
    for subject in ("X-API-Key", "X-Request-ID", "ErrorBody", "404", "405"):
        assert subject in overview, subject


# -- the pages rendered by a browser with no other host reachable --------------------------

CHROMIUM = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)


@pytest.fixture(scope="module")
def served(app: PredictionService) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a thread, without its lifespan."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def rendered(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium that can resolve no host
    but 127.0.0.1: a page needing a CDN renders nothing, as on a machine without internet."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        # Let the page's scripts run (fetch the OpenAPI document, render) before the dump.
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_swagger_ui_renders_every_operation_offline(
    served: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    dom = rendered(f"{served}/docs", tmp_path / "profile")
    assert "Unable to render" not in dom and 'class="swagger-ui' in dom, dom[-2000:]
    assert spec["info"]["title"] in dom
    shown = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert shown == set(spec["paths"]), shown
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert operation["summary"] in dom, operation["summary"]


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_redoc_renders_every_operation_offline(
    served: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    dom = rendered(f"{served}/redoc", tmp_path / "profile")
    assert spec["info"]["title"] in dom, dom[-2000:]
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert operation["summary"] in dom, operation["summary"]


def test_an_unexpected_failure_is_a_500_error_body(tmp_path: Path) -> None:
    """Not Starlette's plain-text 500: the same `ErrorBody` (and request id) as any error."""
    app = create_app(InferenceSettings(data_root=tmp_path))

    async def fails() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fails", fails, include_in_schema=False)
    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/fails", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers["X-Request-ID"] == "bug-1"
    body = ErrorBody.model_validate(response.json())
    assert body.error == "internal_error" and body.request_id == "bug-1"
    assert "a bug" not in body.message  # the cause goes to the log, not to the client
