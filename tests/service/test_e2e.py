"""End to end over real processes: ``python -m inference_pipeline serve`` starting its own
Triton (managed mode) on a free loopback port, real HTTP requests; and the batch CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import (
    API_KEY,
    RegisteredModel,
    drain_prediction_log,
    service_env,
    start_service,
)
from tests.service.test_online_service import UA_1545

pytestmark = pytest.mark.e2e


def test_service_process_with_managed_triton_answers_real_requests(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    service = start_service(
        registered_model.root,
        tmp_path / "service.log",
        FTI_API_KEY=API_KEY,
        FTI_TRITON_RUNTIME_DIR=str(tmp_path / "serving"),
    )
    try:
        with httpx.Client(base_url=service.url, headers={"X-API-Key": API_KEY}) as client:
            flights = [{**UA_1545, "sched_dep_time": t} for t in range(600, 2300, 100)]
            for _ in range(3):
                response = client.post("/v1/predictions", json={"flights": flights})
                assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["predictions"]) == len(flights)
            assert body["model_version"] == registered_model.version
            assert all(0 < p["probability"] < 1 for p in body["predictions"])
            assert client.post("/v1/predictions", json={"flights": [{}]}).status_code == 422
            # Refused before it is all read; uvicorn drops the rest, the connection still serves.
            huge = b'{"flights": [' + b" " * 2_000_000 + b"]}"
            too_large = client.post("/v1/predictions", content=huge)
            assert too_large.status_code == 413 and too_large.json()["error"] == "body_too_large"
            again = client.post("/v1/predictions", json={"flights": [UA_1545]})
            assert again.status_code == 200, again.text
            assert httpx.post(f"{service.url}/v1/predictions", json={}).status_code == 401
            metrics = client.get("/metrics").text
            assert 'fti_prediction_stage_seconds_count{stage="triton"} 4.0' in metrics
            assert client.get("/docs").status_code == 200
    finally:
        service.stop()
    # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught (exit status -15).
    assert service.process.returncode in (0, -15), service.log()
    log = service.log()
    assert "stopping tritonserver" in log and "Application shutdown complete" in log
    # On the way out the last spool segment was sealed for the log writer (none left open).
    spool = registered_model.root / "prediction_spool"
    assert not list(spool.glob("*.open")), sorted(p.name for p in spool.iterdir())
    assert drain_prediction_log(registered_model.root) >= 3 * len(flights) + 1


def test_batch_cli_scores_a_day_and_fails_readably(
    registered_model: RegisteredModel, tmp_path: Path
) -> None:
    env = service_env(
        registered_model.root,
        FTI_TRITON_RUNTIME_DIR=str(tmp_path / "serving"),
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    command = [sys.executable, "-m", "inference_pipeline.batch", "--in-process"]
    done = subprocess.run(
        [*command, "--date", "2013-03-09"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["flights"] > 500 and summary["model_version"] == registered_model.version
    assert summary["lead_minutes"] == 60  # the model's, by default
    assert "Batch scoring 2013-03-09" in done.stderr

    # Another lead than the model was trained at: refused, exit 2, one line naming both.
    other = subprocess.run(
        [*command, "--date", "2013-03-09", "--lead-minutes", "15"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 2, other.stderr
    last = other.stderr.strip().splitlines()[-1]
    assert "--lead-minutes/FTI_LEAD_MINUTES 15" in last and "lead of 60 minutes" in last
    same = subprocess.run(
        [*command, "--date", "2013-03-09"],
        env=env | {"FTI_LEAD_MINUTES": "60"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert same.returncode == 0, same.stderr

    empty = subprocess.run(
        [*command, "--date", "2013-08-01"], env=env, capture_output=True, text=True, timeout=120
    )
    assert empty.returncode == 1
    assert empty.stderr.strip().splitlines()[-1] == (
        "error: NothingToScore: no scheduled flights on 2013-08-01 in the feature store"
    )
    assert "Traceback" not in empty.stderr
