"""Safe rollouts, with real processes and a real registry: a canary answers its configured share
of flights (sticky per flight), a shadow challenger never changes a response but is logged, and
moving the champion alias (promotion, then rollback) under load fails no request.

The models live under their own registry name (``flight_delay_rollout``): version 1 and 2 are
the files of the session's trained model registered twice, so they answer alike and differ only
by version number, which is what routing is about. Each app starts its own managed Triton.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from inference_pipeline.service import create_app
from inference_pipeline.service.traffic import canary_bucket
from inference_pipeline.settings import InferenceSettings
from shared.feature_store import open_feature_store
from shared.prediction_log import PREDICTIONS
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    MODEL_NAME,
    RegisteredModel,
    drain_prediction_log,
    start_service,
)
from tests.service.test_online_service import UA_1545

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROLLOUT_MODEL = "flight_delay_rollout"
CANARY_SHARE = 0.2


@pytest.fixture(scope="module")
def rollout_registry(
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> ModelRegistry:
    """Versions 1 (champion) and 2 (challenger) of ``flight_delay_rollout``."""
    source = ModelRegistry(RegistrySettings(data_root=registered_model.root, model_name=MODEL_NAME))
    loaded = source.load(registered_model.version, tmp_path_factory.mktemp("rollout_files"))
    registry = ModelRegistry(
        RegistrySettings(data_root=registered_model.root, model_name=ROLLOUT_MODEL)
    )
    for _ in range(2):
        with registry.run("rollout-test", tags={}) as run_id:
            registered = registry.register(run_id, loaded.path)
    assert registered.version == "2"
    registry.promote("1")
    return registry


def app_settings(root: Path, tmp: Path, **overrides: object) -> InferenceSettings:
    values: dict[str, object] = {
        "data_root": root,
        "model_name": ROLLOUT_MODEL,
        "triton_runtime_dir": tmp / "serving",
        "triton_model_repository": tmp / "repository",
        "alias_poll_s": 0,
        "prediction_log_segment_s": 0.1,
        **overrides,
    }
    return InferenceSettings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


def flights(count: int) -> list[dict[str, object]]:
    """``count`` distinct scheduled flights (one per date and flight number)."""
    first = date(2013, 1, 1)
    return [
        {
            **UA_1545,
            "flight_date": str(first + timedelta(days=i % 365)),
            "flight": 1 + i // 365,
        }
        for i in range(count)
    ]


def versions_by_flight(client: TestClient, batch: list[dict[str, object]]) -> dict[str, str]:
    response = client.post("/v1/predictions", json={"flights": batch})
    assert response.status_code == 200, response.text
    return {p["flight_id"]: p["model_version"] for p in response.json()["predictions"]}


def test_canary_bucket_is_uniform_and_stable() -> None:
    buckets = [canary_bucket(f"20130101-UA{i}-EWR-0830") for i in range(10_000)]
    assert all(0.0 <= b < 1.0 for b in buckets)
    assert abs(sum(b < CANARY_SHARE for b in buckets) / 10_000 - CANARY_SHARE) < 0.02
    assert canary_bucket("20130101-UA1-EWR-0830") == buckets[1]  # no per-process salt


def test_canary_answers_its_share_of_10000_requests_sticky_per_flight(
    rollout_registry: ModelRegistry, registered_model: RegisteredModel, tmp_path: Path
) -> None:
    settings = app_settings(
        registered_model.root, tmp_path, canary_share=CANARY_SHARE, prediction_log=False
    )
    every = flights(10_000)
    with TestClient(create_app(settings)) as client:
        answered: dict[str, str] = {}
        for flight in every:  # 10,000 requests of one flight each, as clients send them
            answered |= versions_by_flight(client, [flight])
        again = versions_by_flight(client, every[:500])  # the same flights, in one request
        metrics = client.get("/metrics").text
    counts = Counter(answered.values())
    assert len(answered) == 10_000
    # Binomial(10000, 0.2): sd 40 flights; 4 sd either way.
    assert abs(counts["2"] - 2_000) <= 160, counts
    assert counts["1"] + counts["2"] == 10_000
    assert all(answered[fid] == version for fid, version in again.items())  # sticky
    expected = {fid for fid in answered if canary_bucket(fid) < CANARY_SHARE}
    assert {fid for fid, v in answered.items() if v == "2"} == expected
    assert 'fti_role_flights_total{mode="canary",role="challenger"}' in metrics


def test_shadow_never_changes_a_response_and_both_versions_are_logged(
    rollout_registry: ModelRegistry, registered_model: RegisteredModel, tmp_path: Path
) -> None:
    batch = flights(40)
    plain_settings = app_settings(registered_model.root, tmp_path / "plain", prediction_log=False)
    with TestClient(create_app(plain_settings)) as client:
        plain = client.post("/v1/predictions", json={"flights": batch}).json()
    shadow_settings = app_settings(registered_model.root, tmp_path / "shadow", shadow=True)
    with TestClient(create_app(shadow_settings)) as client:
        response = client.post(
            "/v1/predictions", json={"flights": batch}, headers={"X-Request-ID": "shadow-1"}
        )
        assert response.status_code == 200
        shadowed = response.json()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = client.get("/metrics").text
            if 'fti_role_flights_total{mode="shadow",role="challenger"} 40.0' in metrics:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the shadow challenger did not score the request")
    assert shadowed["model_version"] == plain["model_version"] == "1"
    assert shadowed["predictions"] == plain["predictions"]
    drain_prediction_log(registered_model.root)  # the log writer's work: the service's is done
    store = open_feature_store(FeatureStoreSettings(data_root=registered_model.root))
    try:
        logged = store.read(PREDICTIONS).filter(pl.col("request_id") == "shadow-1")
    finally:
        store.close()
    by_source = logged.group_by("source", "model_version").len().sort("source")
    assert by_source.rows() == [("online", "1", 40), ("shadow", "2", 40)]
    joined = logged.filter(pl.col("source") == "online").join(
        logged.filter(pl.col("source") == "shadow"), on="flight_id", suffix="_shadow"
    )
    assert joined.height == 40  # same flights, same feature values given to both
    assert (joined["features"] == joined["features_shadow"]).all()


def test_promotion_and_rollback_under_load_fail_no_request(
    rollout_registry: ModelRegistry, registered_model: RegisteredModel, tmp_path: Path
) -> None:
    service = start_service(
        registered_model.root,
        tmp_path / "service.log",
        FTI_MODEL_NAME=ROLLOUT_MODEL,
        FTI_ALIAS_POLL_S="0.5",
        FTI_PREDICTION_LOG="false",
        FTI_TRITON_RUNTIME_DIR=str(tmp_path / "serving"),
        FTI_TRITON_MODEL_REPOSITORY=str(tmp_path / "repository"),
    )
    statuses: list[int] = []
    seen: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def traffic() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{service.url}/v1/predictions", json={"flights": [UA_1545]})
                    status, version = r.status_code, r.json().get("model_version", "?")
                except httpx.HTTPError as exc:
                    status, version = 0, type(exc).__name__
                with lock:
                    statuses.append(status)
                    seen.append(version)

    def wait_for_version(version: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                if seen and seen[-1] == version:
                    return
            time.sleep(0.1)
        raise AssertionError(f"no response from version {version}:\n{service.log()}")

    def wait_for_log(line: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while line not in service.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} in the service log:\n{service.log()}")
            time.sleep(0.2)

    clients = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        for thread in clients:
            thread.start()
        wait_for_version("1")
        rollout_registry.promote("2")
        wait_for_version("2")
        # Past the grace period (4 s) version 1 is retired, under load; the unloading load
        # itself takes seconds on a busy machine, so wait for it rather than a fixed time.
        wait_for_log("champion: retired versions ['1']")
        rollout_registry.rollback()
        wait_for_version("1")
        wait_for_log("champion: retired versions ['2']")
    finally:
        stop.set()
        for thread in clients:
            thread.join()
        rollout_registry.promote("1")
        log = service.log()
        service.stop()
    failed = Counter(s for s in statuses if s != 200)
    assert not failed, f"{failed} of {len(statuses)} requests failed:\n{log}"
    assert len(statuses) > 50
    assert "champion: retired versions ['1']" in log, log  # v1 unloaded while under load
    assert "champion: retired versions ['2']" in log, log
    switches = [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]
    assert switches[0] == "1" and "2" in switches and switches[-1] == "1", switches
