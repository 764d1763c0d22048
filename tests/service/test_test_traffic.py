"""Test traffic, end to end: requests sent with ``X-FTI-Test-Traffic: true`` are answered and
logged like any other, marked ``test_traffic`` in the prediction log, and left out of
monitoring unless it is asked for. The predictions table of an older deployment (no such
column) is evolved in place on the service's start: its rows read as production."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandera.polars as pa
import polars as pl
import pytest
from fastapi.testclient import TestClient

from inference_pipeline.monitor.pipeline import run_monitor
from inference_pipeline.monitor.settings import MonitorSettings
from inference_pipeline.service import create_app
from shared.feature_store import open_feature_store
from shared.feature_store.offline_delta import DeltaOfflineStore
from shared.prediction_log import PREDICTIONS
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    MODEL_NAME,
    SharedTriton,
    drain_prediction_log,
    inference_settings,
)
from tests.service.test_online_service import UA_1545

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
DAY = date(2013, 3, 10)
FLIGHTS = [
    {**UA_1545, "sched_dep_time": 600},
    {**UA_1545, "carrier": "AA", "flight": 1141, "origin": "JFK", "dest": "MIA"},
    {**UA_1545, "carrier": "DL", "flight": 461, "origin": "LGA", "dest": "ATL"},
]
TEST = {"X-FTI-Test-Traffic": "true"}


def _send(client: TestClient, flight: dict[str, object], headers: dict[str, str]) -> str:
    response = client.post("/v1/predictions", json={"flights": [flight]}, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def _logged(root: Path, request_ids: set[str]) -> pl.DataFrame:
    """The prediction log's rows of ``request_ids``, once every one is there."""
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        deadline = time.monotonic() + 20
        while True:
            drain_prediction_log(root)  # as the log writer process does
            rows = store.read(PREDICTIONS).filter(pl.col("request_id").is_in(request_ids))
            if set(rows["request_id"]) == request_ids or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)
    finally:
        store.close()


def _as_before_the_column(root: Path) -> int:
    """Rewrite the predictions table as a deployment before ``test_traffic`` wrote it: the
    same rows, a table without the column. Returns its row count."""
    offline = DeltaOfflineStore(str(root / "offline"))
    rows = offline.read(PREDICTIONS).drop("test_traffic")
    columns = {k: v for k, v in PREDICTIONS.schema.columns.items() if k != "test_traffic"}
    old = replace(PREDICTIONS, schema=pa.DataFrameSchema(columns), added_columns=())
    shutil.rmtree(root / "offline" / PREDICTIONS.table_name)
    offline.register(old)
    offline.append(old, rows)
    return rows.height


def test_test_traffic_is_logged_with_its_mark_and_left_out_of_monitoring(
    copy_root: Path, triton: SharedTriton, tmp_path: Path
) -> None:
    settings = inference_settings(copy_root, triton, tmp_path)
    with TestClient(create_app(settings)) as client:
        before = {_send(client, flight, {}) for flight in FLIGHTS}
    _logged(copy_root, before)
    assert _as_before_the_column(copy_root) >= len(FLIGHTS)  # other tests' rows too

    with TestClient(create_app(settings)) as client:  # the writer evolves the table
        production = {_send(client, FLIGHTS[0], {"X-FTI-Test-Traffic": "false"})}
        tests = {_send(client, flight, TEST) for flight in FLIGHTS[:2]}
        tests |= {_send(client, FLIGHTS[2], {"X-FTI-Test-Traffic": "1"})}
        bad = client.post(
            "/v1/predictions", json={"flights": [UA_1545]}, headers={"X-FTI-Test-Traffic": "yes"}
        )
        assert bad.status_code == 422 and "X-FTI-Test-Traffic" in bad.json()["message"]
        client.app.fast_predictions = False  # type: ignore[attr-defined]
        tests |= {_send(client, FLIGHTS[0], TEST)}  # the FastAPI route reads it too
        spec = client.get("/openapi.json").json()
    parameters = spec["paths"]["/v1/predictions"]["post"]["parameters"]
    assert [p["name"] for p in parameters] == ["X-FTI-Test-Traffic"]

    rows = _logged(copy_root, before | production | tests)
    marks = dict(zip(rows["request_id"], rows["test_traffic"], strict=True))
    assert {marks[r] for r in before} == {None}  # written before the column existed
    assert {marks[r] for r in production} == {False}
    assert {marks[r] for r in tests} == {True}

    # The copied root holds the online predictions of other tests of the session too.
    store = open_feature_store(FeatureStoreSettings(data_root=copy_root))
    try:
        day = store.read(PREDICTIONS).filter(
            (pl.col("flight_date") == DAY) & (pl.col("source") == "online")
        )
    finally:
        store.close()
    marked = day["test_traffic"].fill_null(False)
    assert int(marked.sum()) == len(tests)
    monitor = MonitorSettings(data_root=copy_root, model_name=MODEL_NAME)  # type: ignore[call-arg]
    counted = run_monitor(monitor, DAY, 1, "online", write=False).predictions
    assert counted["rows"] == day.height - len(tests)
    assert counted["test_traffic_rows"] == 0 and counted["test_traffic_included"] is False
    everything = run_monitor(
        monitor, DAY, 1, "online", write=False, include_test_traffic=True
    ).predictions
    assert everything["rows"] == day.height
    assert everything["test_traffic_rows"] == len(tests)
