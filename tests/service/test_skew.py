"""No training/serving skew, and one clock: for the same flights, model version and prediction
time T, the online service, the batch job and the training-time pipeline give the same feature
vector and the same probability (1e-5).

T is each flight's scheduled departure minus the model's lead (60 minutes): the batch job and
the training frame compute it, the online requests send it as ``as_of``. The online store is the
one the feature pipeline materialized (no store built by hand): it keeps each key's recent rows,
so the rows valid at T are served exactly as the offline join finds them.

Stale cases: flights whose schedule is known but whose features stopped (the feature pipeline
last ran weeks before): route and carrier stats older than 28 days before T and weather older
than 3 hours are missing in all three paths, and imputed the same way; a flight the day after
the last feature run has its fresh daily stats but stale weather.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import redis
from fastapi.testclient import TestClient

from inference_pipeline.batch import score_day, scoring_frame
from inference_pipeline.model_artifact import ServingModel, load_serving_model
from inference_pipeline.scoring import REQUEST_FIELDS, online_inputs, score_in_process, transform
from inference_pipeline.service import create_app
from shared.feature_definitions import FLIGHTS
from shared.feature_store import FeatureStore, open_feature_store
from shared.feature_view import build_training_frame
from shared.flight_identity import flight_id, sched_dep_utc
from shared.prediction_log import PREDICTIONS
from shared.prediction_time import PREDICTION_TIME, epoch_us
from shared.registry import ModelRegistry, RegistrySettings
from shared.settings import FeatureStoreSettings
from tests.service.conftest import (
    LAST_FEATURE_DAY,
    MODEL_NAME,
    SCORED_DAY,
    RegisteredModel,
    SharedTriton,
    inference_settings,
)

pytestmark = pytest.mark.integration

ONE_DAY_LATER = LAST_FEATURE_DAY + timedelta(days=1)  # daily stats fresh, weather stale
WEEKS_LATER = LAST_FEATURE_DAY + timedelta(days=40)  # everything time-varying stale
TIME_VARYING = {"route_stats", "carrier_stats", "airport_weather"}
REDIS_URL = "redis://127.0.0.1:6379/0"


def load_model(root: Path, workdir: Path) -> ServingModel:
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL_NAME))
    return load_serving_model(registry, "champion", workdir)


def frames_at_t(root: Path, model: ServingModel, day: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The batch job's scoring frame and the training-time frame of ``day``, as of T."""
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        batch, _ = scoring_frame(store, model, day)
        training = build_training_frame(store, model.view, day, day + timedelta(days=1)).frame
    finally:
        store.close()
    return batch.sort("flight_id"), training.sort("flight_id")


def requests_at_t(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The frame's flights as the API takes them, each with ``as_of`` = its T."""
    return (
        frame.select(*REQUEST_FIELDS, PREDICTION_TIME)
        .with_columns(
            pl.col("flight_date").cast(pl.String),
            pl.col(PREDICTION_TIME).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00").alias("as_of"),
        )
        .drop(PREDICTION_TIME)
        .to_dicts()
    )


def online_frame(store: FeatureStore, model: ServingModel, batch: pl.DataFrame) -> pl.DataFrame:
    """The online path's raw features (frame-free read, as the service does), as a frame."""
    flights = [
        {**row, PREDICTION_TIME: epoch_us(row[PREDICTION_TIME])}
        for row in batch.select(*REQUEST_FIELDS, PREDICTION_TIME).to_dicts()
    ]
    inputs = online_inputs(store, model, flights)
    assert inputs.flight_ids == batch["flight_id"].to_list()
    # The online path's own matrices (frame-free) equal the batch job's, row for row.
    batch_matrices = transform(batch, model.mdt)
    np.testing.assert_array_equal(inputs.matrices.categorical, batch_matrices.categorical)
    np.testing.assert_allclose(inputs.matrices.numeric, batch_matrices.numeric, rtol=0, atol=1e-6)
    return pl.DataFrame(
        [
            {"flight_id": fid} | inputs.features.row(i, model.mdt.input_features)
            for i, fid in enumerate(inputs.flight_ids)
        ],
        infer_schema_length=None,
    )


def assert_same_features(model: ServingModel, left: pl.DataFrame, right: pl.DataFrame) -> None:
    """The same raw values (before the MDT) and the same MDT output, for the rows both hold."""
    left = left.join(right.select("flight_id"), on="flight_id", how="semi").sort("flight_id")
    right = right.join(left.select("flight_id"), on="flight_id", how="semi").sort("flight_id")
    assert left.height > 0
    a, b = transform(left, model.mdt), transform(right, model.mdt)
    np.testing.assert_array_equal(a.categorical, b.categorical)
    np.testing.assert_allclose(a.numeric, b.numeric, rtol=0, atol=1e-6)
    for name in model.mdt.input_features:
        x, y = left[name], right[name]
        if x.dtype.is_float() or y.dtype.is_float():
            np.testing.assert_allclose(
                x.cast(pl.Float64).to_numpy(),
                y.cast(pl.Float64).to_numpy(),
                rtol=0,
                atol=1e-6,
                err_msg=name,
            )
        else:
            assert x.cast(pl.String).to_list() == y.cast(pl.String).to_list(), name


def three_way_probabilities(
    root: Path,
    triton: SharedTriton,
    workdir: Path,
    model: ServingModel,
    day: date,
    batch: pl.DataFrame,
    training: pl.DataFrame,
) -> list[dict[str, Any]]:
    """Online (the service, as_of = T), batch (the job) and training-time probabilities of the
    day's flights agree to 1e-5; returns the service's answers."""
    settings = inference_settings(root, triton, workdir / "service", prediction_log=False)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/predictions", json={"flights": requests_at_t(batch)})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert {p["model_version"] for p in answers} == {model.version}
    assert {p["lead_minutes"] for p in answers} == {model.lead_minutes} == {60}

    summary = score_day(inference_settings(root, triton, workdir / "batch"), day)
    assert summary.model_version == model.version and summary.lead_minutes == 60
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        logged = store.read(PREDICTIONS).filter(pl.col("request_id") == f"batch-{day}")
    finally:
        store.close()
    batch_p = dict(zip(logged["flight_id"], logged["probability"], strict=True))
    trained = score_in_process(model.torchscript, transform(training, model.mdt), 1024)
    training_p = dict(zip(training["flight_id"], trained.tolist(), strict=True))

    assert len(answers) == batch.height == len(batch_p)
    for answer in answers:
        flight = answer["flight_id"]
        assert batch_p[flight] == pytest.approx(answer["probability"], abs=1e-5), flight
        if flight in training_p:  # cancelled flights have no label, so no training row
            assert training_p[flight] == pytest.approx(answer["probability"], abs=1e-5), flight
    return answers  # type: ignore[no-any-return]


# -- fresh: the feature pipeline ran the night before ------------------------------------------


@pytest.fixture(scope="module")
def fresh(registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("skew")
    model = load_model(registered_model.root, tmp / "artifact")
    batch, training = frames_at_t(registered_model.root, model, SCORED_DAY)
    assert batch.height > 500 and training.height >= 0.9 * batch.height
    return model, batch, training, tmp


def test_t_is_departure_minus_the_models_lead_in_batch_and_training(fresh) -> None:  # type: ignore[no-untyped-def]
    model, batch, training, _ = fresh
    assert model.lead_minutes == 60
    for frame in (batch, training):
        lead = frame["sched_dep_utc"] - frame[PREDICTION_TIME]
        assert (lead == timedelta(minutes=60)).all()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_online_at_t_batch_and_training_features_are_identical(  # type: ignore[no-untyped-def]
    fresh, registered_model: RegisteredModel, backend: str
) -> None:
    """Every flight of the day, through the online store the feature pipeline materialized
    (SQLite), or the same groups materialized into a real Redis."""
    model, batch, training, _ = fresh
    settings = FeatureStoreSettings(data_root=registered_model.root)
    if backend == "redis":
        settings = redis_settings_or_skip(registered_model.root)
    store = open_feature_store(settings)
    try:
        if backend == "redis":
            for join in model.view.joins:
                store.materialize(join.group)
        online = online_frame(store, model, batch)
    finally:
        store.close()
        if backend == "redis":
            drop_namespace(settings.redis_namespace)
    assert_same_features(model, batch, online)
    assert_same_features(model, batch, training)
    assert online["wx_temp"].null_count() < 0.05 * online.height  # fresh: the values are there
    assert online["route_flights_28d"].null_count() < 0.05 * online.height


def test_online_at_t_batch_and_training_probabilities_agree(  # type: ignore[no-untyped-def]
    fresh, registered_model: RegisteredModel, triton: SharedTriton
) -> None:
    model, batch, training, tmp = fresh
    answers = three_way_probabilities(
        registered_model.root, triton, tmp, model, SCORED_DAY, batch, training
    )
    complete = [p for p in answers if not set(p["missing_groups"]) & TIME_VARYING]
    assert len(complete) >= 0.95 * len(answers)  # fresh: the day's features were all there


def test_batch_rerun_writes_the_same_rows(  # type: ignore[no-untyped-def]
    fresh, registered_model: RegisteredModel, triton: SharedTriton
) -> None:
    _, _, _, tmp = fresh
    settings = inference_settings(registered_model.root, triton, tmp / "rerun")
    first = score_day(settings, SCORED_DAY)
    again = score_day(settings, SCORED_DAY, in_process=True)
    assert (again.inserted, again.updated) == (0, 0)
    assert again.flights == first.flights > 0
    assert again.predictions_table_version == first.predictions_table_version


# -- stale: the schedule is known, the features stopped ----------------------------------------


def add_scheduled_flights(root: Path, source_day: date, day: date) -> None:
    """``source_day``'s flights (with their outcomes) scheduled again on ``day``, into the
    flights group only: no feature run covers ``day``."""
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        flights = store.read(FLIGHTS).filter(pl.col("flight_date") == source_day)
        moved = flights.with_columns(pl.lit(day).alias("flight_date")).with_columns(
            flight_id(), sched_dep_utc()
        )
        store.insert(FLIGHTS, moved.filter(pl.col("sched_dep_utc").is_not_null()))
    finally:
        store.close()


@pytest.fixture(scope="module")
def stale_root(registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stale") / "root"
    shutil.copytree(registered_model.root, root, ignore=shutil.ignore_patterns("serving"))
    add_scheduled_flights(root, SCORED_DAY, ONE_DAY_LATER)
    add_scheduled_flights(root, SCORED_DAY, WEEKS_LATER)
    return root


@pytest.mark.parametrize(
    ("day", "stale"),
    [(WEEKS_LATER, TIME_VARYING), (ONE_DAY_LATER, {"airport_weather"})],
    ids=["stats-and-weather-stale", "weather-stale"],
)
def test_stale_features_are_missing_in_all_three_paths(  # type: ignore[no-untyped-def]
    stale_root: Path,
    triton: SharedTriton,
    tmp_path: Path,
    day: date,
    stale: set[str],
) -> None:
    """Daily stats older than 28 days before T and weather older than 3 hours are missing
    online, in the batch job and in the training frame alike, imputed the same way, and the
    online answer reports them; the fresh groups stay."""
    model = load_model(stale_root, tmp_path / "artifact")
    batch, training = frames_at_t(stale_root, model, day)
    assert batch.height > 500
    store = open_feature_store(FeatureStoreSettings(data_root=stale_root))
    try:
        online = online_frame(store, model, batch)
    finally:
        store.close()
    assert_same_features(model, batch, online)
    assert_same_features(model, batch, training)
    for join in model.view.joins:
        columns = [join.prefix + f for f in join.feature_list() if join.prefix + f in online]
        nulls = online.select(pl.all_horizontal(pl.col(columns).is_null())).to_series()
        if join.group.name in stale:
            assert nulls.all(), join.group.name
        else:
            # (planes: about a seventh of the tail numbers are not in the FAA extract)
            assert nulls.mean() < 0.2, join.group.name  # type: ignore[operator]
    answers = three_way_probabilities(stale_root, triton, tmp_path, model, day, batch, training)
    for answer in answers:
        assert stale <= set(answer["missing_groups"]), answer
    if "route_stats" not in stale:
        assert sum("route_stats" in a["missing_groups"] for a in answers) < 0.1 * len(answers)


def redis_settings_or_skip(root: Path) -> FeatureStoreSettings:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL} ({exc})")
    finally:
        client.close()
    import uuid

    return FeatureStoreSettings(
        _env_file=None,  # type: ignore[call-arg]
        data_root=root,
        online_backend="redis",  # type: ignore[arg-type]
        redis_url=REDIS_URL,
        redis_namespace=f"skew-{uuid.uuid4().hex}",
    )


def drop_namespace(namespace: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    doomed = list(client.scan_iter(match=f"{namespace}:*", count=1_000))
    if doomed:
        client.delete(*doomed)
    client.close()
