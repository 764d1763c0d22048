"""No training/serving skew: for the same flights and model version, the online service, the
batch job and the training-time pipeline give the same feature vector and the same probability.

The online store here holds exactly the offline values valid at the flights' time (the latest
row per key at or before it, within each join's tolerance): what a feature pipeline that has
materialized up to that moment serves. Flights are taken from one hour of one day, so that one
weather observation per airport is valid for all of them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from inference_pipeline.batch import score_day, scoring_frame
from inference_pipeline.model_artifact import load_serving_model
from inference_pipeline.scoring import online_inputs, score_in_process, transform
from inference_pipeline.service import create_app
from shared.feature_store import open_feature_store, open_online_store
from shared.feature_view import build_training_frame
from shared.prediction_log import PREDICTIONS
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    MODEL_NAME,
    SCORED_DAY,
    RegisteredModel,
    SharedTriton,
    inference_settings,
)

pytestmark = pytest.mark.integration

HOUR = 14  # local hour of the flights compared
REQUEST_FIELDS = [
    "flight_date", "sched_dep_time", "carrier", "flight", "origin", "dest", "tailnum", "distance",
]  # fmt: skip


def online_store_as_of(root: Path, sqlite: Path, view, moment: datetime) -> None:  # type: ignore[no-untyped-def]
    """Write, for every online group the view joins, the offline row valid at ``moment``."""
    offline = open_feature_store(FeatureStoreSettings(data_root=root))
    online = open_online_store(FeatureStoreSettings(data_root=root, sqlite_path=sqlite))
    try:
        for join in view.joins:
            group = join.group
            start = None if join.tolerance is None else moment - join.tolerance
            rows = offline.read(group, start, moment + timedelta(microseconds=1))
            latest = rows.sort(group.event_time).group_by(group.primary_key).last()
            online.write(group, latest.select(group.columns))
    finally:
        offline.close()
        online.close()


@pytest.fixture(scope="module")
def skew_setup(registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("skew")
    registry = ModelRegistry(
        RegistrySettings(data_root=registered_model.root, model_name=MODEL_NAME)
    )
    model = load_serving_model(registry, "champion", tmp / "artifact")
    store = open_feature_store(FeatureStoreSettings(data_root=registered_model.root))
    try:
        batch_frame, _ = scoring_frame(store, model, SCORED_DAY)
        training = build_training_frame(
            store, model.view, SCORED_DAY, SCORED_DAY + timedelta(days=1)
        ).frame
    finally:
        store.close()
    in_hour = pl.col("sched_dep_time") // 100 == HOUR
    batch_frame = batch_frame.filter(in_hour).sort("flight_id")
    training = training.filter(in_hour).sort("flight_id")
    assert batch_frame.height >= 20
    moment = datetime(
        SCORED_DAY.year,
        SCORED_DAY.month,
        SCORED_DAY.day,
        HOUR,
        0,
        0,
        tzinfo=ZoneInfo("America/New_York"),
    ).astimezone(UTC)
    sqlite = tmp / "online.sqlite"
    online_store_as_of(registered_model.root, sqlite, model.view, moment)
    return model, batch_frame, training, sqlite, tmp


def test_online_batch_and_training_features_are_identical(  # type: ignore[no-untyped-def]
    skew_setup, registered_model: RegisteredModel
) -> None:
    model, batch_frame, training, sqlite, _ = skew_setup
    settings = FeatureStoreSettings(data_root=registered_model.root, sqlite_path=sqlite)
    store = open_feature_store(settings)
    try:
        inputs = online_inputs(store, model, batch_frame.select(REQUEST_FIELDS).to_dicts())
    finally:
        store.close()
    assert inputs.flight_ids == batch_frame["flight_id"].to_list()
    # The online path's own matrices (frame-free) equal the batch job's, row for row.
    batch_matrices = transform(batch_frame, model.mdt)
    np.testing.assert_array_equal(inputs.matrices.categorical, batch_matrices.categorical)
    np.testing.assert_allclose(inputs.matrices.numeric, batch_matrices.numeric, rtol=0, atol=1e-6)
    online = pl.DataFrame(
        [
            {"flight_id": fid} | inputs.features.row(i, model.mdt.input_features)
            for i, fid in enumerate(inputs.flight_ids)
        ],
        infer_schema_length=None,
    )
    labeled = batch_frame.join(training.select("flight_id"), on="flight_id")
    assert labeled.height >= 0.9 * batch_frame.height  # cancelled flights have no label
    for features in (online, training):
        same_rows = batch_frame.join(features.select("flight_id"), on="flight_id", how="semi")
        other = features.join(same_rows.select("flight_id"), on="flight_id", how="semi")
        a, b = transform(same_rows, model.mdt), transform(other, model.mdt)
        np.testing.assert_array_equal(a.categorical, b.categorical)
        np.testing.assert_allclose(a.numeric, b.numeric, rtol=0, atol=1e-6)
        for name in model.mdt.input_features:  # the raw values too, before the MDT
            left, right = same_rows[name], other[name]
            if left.dtype.is_float() or right.dtype.is_float():
                np.testing.assert_allclose(
                    left.cast(pl.Float64).to_numpy(),
                    right.cast(pl.Float64).to_numpy(),
                    rtol=0,
                    atol=1e-6,
                    err_msg=name,
                )
            else:
                assert left.cast(pl.String).to_list() == right.cast(pl.String).to_list(), name


def test_online_batch_and_training_probabilities_agree(  # type: ignore[no-untyped-def]
    skew_setup, registered_model: RegisteredModel, triton: SharedTriton
) -> None:
    model, batch_frame, training, sqlite, tmp = skew_setup
    flights = batch_frame.select(REQUEST_FIELDS).with_columns(pl.col("flight_date").cast(pl.String))
    settings = inference_settings(
        registered_model.root, triton, tmp / "service", sqlite_path=sqlite, prediction_log=False
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/predictions", json={"flights": flights.to_dicts()})
    assert response.status_code == 200, response.text
    online = {p["flight_id"]: p["probability"] for p in response.json()["predictions"]}
    assert {p["model_version"] for p in response.json()["predictions"]} == {model.version}

    batch_settings = inference_settings(registered_model.root, triton, tmp / "batch")
    summary = score_day(batch_settings, SCORED_DAY)
    assert summary.model_version == model.version
    store = open_feature_store(FeatureStoreSettings(data_root=registered_model.root))
    try:
        logged = store.read(PREDICTIONS).filter(
            pl.col("request_id") == f"batch-{SCORED_DAY.isoformat()}"
        )
    finally:
        store.close()
    batch = dict(zip(logged["flight_id"], logged["probability"], strict=True))

    trained = score_in_process(model.torchscript, transform(training, model.mdt), 1024)
    training_time = dict(zip(training["flight_id"], trained.tolist(), strict=True))

    assert len(online) == batch_frame.height
    for flight_id, probability in online.items():
        assert batch[flight_id] == pytest.approx(probability, abs=1e-5), flight_id
        if flight_id in training_time:
            assert training_time[flight_id] == pytest.approx(probability, abs=1e-5), flight_id


def test_batch_rerun_writes_the_same_rows(  # type: ignore[no-untyped-def]
    skew_setup, registered_model: RegisteredModel, triton: SharedTriton
) -> None:
    _, _, _, _, tmp = skew_setup
    settings = inference_settings(registered_model.root, triton, tmp / "rerun")
    first = score_day(settings, SCORED_DAY)
    again = score_day(settings, SCORED_DAY, in_process=True)
    assert (again.inserted, again.updated) == (0, 0)
    assert again.flights == first.flights > 0
    assert again.predictions_table_version == first.predictions_table_version
