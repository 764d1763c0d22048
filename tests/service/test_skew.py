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

The fresh window features (``shared.recent_departures``: departures, delays and pending
departures at the origin in the 30/60/120 minutes before T, the aircraft's last departure) are
covered the same way: computed from the events the feature pipeline wrote (fresh), missing in
every path once the events stop (stale), and, with the stream lagging mid-day (its watermark at
noon, the events of the morning streamed), computed for the flights whose T the watermark
covers and missing for the later ones, in all three paths alike.
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

from feature_pipeline.pipeline import run_schedule
from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.stream.run import Replay, run_stream
from feature_pipeline.stream.settings import Broker, StreamSettings
from inference_pipeline.batch import score_day, scoring_frame
from inference_pipeline.model_artifact import ServingModel, load_serving_model
from inference_pipeline.scoring import REQUEST_FIELDS, online_inputs, score_in_process, transform
from inference_pipeline.service import create_app
from shared.feature_definitions import FLIGHTS
from shared.feature_store import FeatureStore, open_feature_store
from shared.feature_view import build_training_frame
from shared.flight_identity import flight_id, sched_dep_utc
from shared.fresh_features import FRESH_GROUP_NAME, offline_watermark
from shared.prediction_log import PREDICTIONS
from shared.prediction_time import PREDICTION_TIME, epoch_us
from shared.recent_departure_rows import MAX_QUERIES as ROW_PATH_MAX_QUERIES
from shared.recent_departures import FEATURES as FRESH_FEATURES
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
TIME_VARYING = {"route_stats", "carrier_stats", "airport_weather", FRESH_GROUP_NAME}
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


def online_frame(
    store: FeatureStore, model: ServingModel, batch: pl.DataFrame, *, per_request: int | None = None
) -> pl.DataFrame:
    """The online path's raw features (frame-free read, as the service does), as a frame: all
    flights in one batch (the vectorised fresh-feature path), or ``per_request`` at a time
    (a few: the row path, ``shared.recent_departure_rows``)."""
    flights = [
        {**row, PREDICTION_TIME: epoch_us(row[PREDICTION_TIME])}
        for row in batch.select(*REQUEST_FIELDS, PREDICTION_TIME).to_dicts()
    ]
    step = per_request or len(flights)
    parts = [
        online_inputs(store, model, flights[i : i + step]) for i in range(0, len(flights), step)
    ]
    assert [f for part in parts for f in part.flight_ids] == batch["flight_id"].to_list()
    # The online path's own matrices (frame-free) equal the batch job's, row for row.
    batch_matrices = transform(batch, model.mdt)
    categorical = np.concatenate([part.matrices.categorical for part in parts])
    numeric = np.concatenate([part.matrices.numeric for part in parts])
    np.testing.assert_array_equal(categorical, batch_matrices.categorical)
    np.testing.assert_allclose(numeric, batch_matrices.numeric, rtol=0, atol=1e-6)
    return pl.DataFrame(
        [
            {"flight_id": fid} | part.features.row(i, model.mdt.input_features)
            for part in parts
            for i, fid in enumerate(part.flight_ids)
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
        if backend == "redis":  # every online group the view reads, the fresh ones too
            for group in model.view.groups:
                if group.online:
                    store.materialize(group)
        online = online_frame(store, model, batch)
        few_at_a_time = online_frame(store, model, batch, per_request=ROW_PATH_MAX_QUERIES // 2)
    finally:
        store.close()
        if backend == "redis":
            drop_namespace(settings.redis_namespace)
    assert_same_features(model, batch, online)
    assert_same_features(model, batch, few_at_a_time)
    assert_same_features(model, batch, training)
    assert online["wx_temp"].null_count() < 0.05 * online.height  # fresh: the values are there
    assert online["route_flights_28d"].null_count() < 0.05 * online.height
    assert set(FRESH_FEATURES) <= set(model.mdt.input_features)
    assert online["origin_departures_60m"].null_count() == 0  # the events cover every T
    assert online["origin_departures_60m"].mean() > 3  # type: ignore[operator]
    assert online["tail_last_dep_delay"].null_count() < online.height  # some aircraft flew


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
    """The same run again (Triton) writes nothing; scored in process instead, the rows are the
    same but for a probability's last float32 bit (TorchScript in process and Triton's batches
    may round differently: seen once in 908 flights, 6e-8 apart), which updates only that."""
    _, _, _, tmp = fresh
    settings = inference_settings(registered_model.root, triton, tmp / "rerun")
    first = score_day(settings, SCORED_DAY)
    logged = batch_probabilities(registered_model.root)
    again = score_day(settings, SCORED_DAY)
    assert (again.inserted, again.updated) == (0, 0)
    assert again.flights == first.flights > 0
    assert again.predictions_table_version == first.predictions_table_version
    in_process = score_day(settings, SCORED_DAY, in_process=True)
    assert in_process.inserted == 0 and in_process.updated <= 0.01 * first.flights
    rescored = batch_probabilities(registered_model.root)
    assert rescored.keys() == logged.keys()
    for flight, probability in logged.items():
        assert rescored[flight] == pytest.approx(probability, abs=1e-6), flight


def batch_probabilities(root: Path) -> dict[str, float]:
    store = open_feature_store(FeatureStoreSettings(data_root=root))
    try:
        logged = store.read(PREDICTIONS).filter(pl.col("request_id") == f"batch-{SCORED_DAY}")
    finally:
        store.close()
    return dict(zip(logged["flight_id"], logged["probability"], strict=True))


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
    [(WEEKS_LATER, TIME_VARYING), (ONE_DAY_LATER, {"airport_weather", FRESH_GROUP_NAME})],
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
    for group, provided in model.view.input_groups():
        columns = [c for c in provided if c in online]
        nulls = online.select(pl.all_horizontal(pl.col(columns).is_null())).to_series()
        if group in stale:
            assert nulls.all(), group
        else:
            # (planes: about a seventh of the tail numbers are not in the FAA extract)
            assert nulls.mean() < 0.2, group  # type: ignore[operator]
    answers = three_way_probabilities(stale_root, triton, tmp_path, model, day, batch, training)
    for answer in answers:
        assert stale <= set(answer["missing_groups"]), answer
    if "route_stats" not in stale:
        assert sum("route_stats" in a["missing_groups"] for a in answers) < 0.1 * len(answers)


# -- lagging: the stream is behind T for some of the day's flights -----------------------------

LAGGING_EVENTS = 360  # the first messages of ONE_DAY_LATER's replay: about its morning


@pytest.fixture(scope="module")
def lagging_root(
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The day after the last feature run: its flights scheduled (flights group and the
    departure schedule), its weather and daily stats as stale as above, and the first
    departure events of its real replay streamed in (the embedded broker, the stream's own
    consumer code): the watermark stops mid-day."""
    root = tmp_path_factory.mktemp("lagging") / "root"
    shutil.copytree(registered_model.root, root, ignore=shutil.ignore_patterns("serving"))
    add_scheduled_flights(root, SCORED_DAY, ONE_DAY_LATER)
    assert (
        run_schedule(FeaturePipelineSettings(data_root=root), ONE_DAY_LATER, ONE_DAY_LATER).error
        is None
    )
    summary = run_stream(
        StreamSettings(data_root=root, stream_broker=Broker.embedded),
        replay=Replay(ONE_DAY_LATER, ONE_DAY_LATER, speed=None, max_events=LAGGING_EVENTS),
    )
    assert summary.error is None and summary.events > 0
    return root


def test_a_lagging_stream_gives_the_same_fresh_features_in_all_three_paths(
    lagging_root: Path, triton: SharedTriton, tmp_path: Path
) -> None:
    """Flights whose T is within the tolerance of the stream's watermark get their window
    features from the streamed events; the later ones get them missing (reported under
    departure_events); online, batch and training agree on both, value for value, and on the
    probabilities."""
    model = load_model(lagging_root, tmp_path / "artifact")
    batch, training = frames_at_t(lagging_root, model, ONE_DAY_LATER)
    store = open_feature_store(FeatureStoreSettings(data_root=lagging_root))
    try:
        online = online_frame(store, model, batch)
        watermark = offline_watermark(store, None)
    finally:
        store.close()
    assert watermark is not None
    assert_same_features(model, batch, online)
    assert_same_features(model, batch, training)
    tolerance_us = int(model.view.fresh.tolerance.total_seconds() * 1e6)  # type: ignore[union-attr]
    covered = [epoch_us(t) - tolerance_us <= watermark for t in batch[PREDICTION_TIME]]
    by_flight = dict(zip(batch["flight_id"], covered, strict=True))
    online = online.with_columns(pl.Series("covered", [by_flight[f] for f in online["flight_id"]]))
    seen = online.filter(pl.col("covered"))
    later = online.filter(~pl.col("covered"))
    assert seen.height > 50 and later.height > 50  # both cases, in one day
    assert seen["origin_departures_120m"].null_count() == 0
    assert seen["origin_departures_120m"].sum() > 0  # the streamed morning is seen
    assert later.select(pl.all_horizontal(pl.col(FRESH_FEATURES).is_null())).to_series().all()
    answers = three_way_probabilities(
        lagging_root, triton, tmp_path, model, ONE_DAY_LATER, batch, training
    )
    for answer in answers:
        assert (FRESH_GROUP_NAME in answer["missing_groups"]) == (
            not by_flight[answer["flight_id"]]
        )


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
