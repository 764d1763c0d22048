"""The steps online and batch inference share: request rows -> features -> MDT -> probability.

Feature reading (online or point in time), the on-demand features and the MDT are the shared
implementations in ``shared/``; this module only arranges them, reports which inputs were
missing, and calls the model (Triton, or TorchScript in process for the batch job).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import polars as pl
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from inference_pipeline.model_artifact import ServingModel
from shared.errors import ModelOutputInvalid, ModelServerUnavailable
from shared.feature_store import AsyncOnlineReads, FeatureStore, OnlineRange, OnlineRow
from shared.feature_view import (
    OnlineFeatures,
    assemble_online_features,
    online_feature_columns,
    plan_online_read,
)
from shared.flight_identity import flight_id_of
from shared.prediction_time import PREDICTION_TIME
from shared.transforms import OOV_INDEX, FeatureMatrices, MDTState, apply_mdt, apply_mdt_columns
from shared.triton_repository import CATEGORICAL_INPUT, NUMERIC_INPUT, PROBABILITY_OUTPUT

log = logging.getLogger(__name__)

REQUEST_FIELDS: tuple[str, ...] = (
    "flight_date",
    "sched_dep_time",
    "carrier",
    "flight",
    "origin",
    "dest",
    "tailnum",
    "distance",
)


@dataclass(frozen=True)
class InputReport:
    """What the MDT had to make up for one flight."""

    missing_features: list[str]  # null: imputed (numeric) or out-of-vocabulary (categorical)
    unknown_categories: list[str]  # a value the model never saw: out-of-vocabulary index
    # feature groups with no row valid as of T for the flight's key (none kept, or too old)
    missing_groups: list[str]


@dataclass(frozen=True)
class OnlineInputs:
    """Everything the online path derives from a request before calling the model."""

    flight_ids: list[str]
    features: OnlineFeatures
    matrices: FeatureMatrices
    reports: list[InputReport]
    features_s: float  # online read + on-demand features
    transform_s: float  # MDT + input reports

    def split(self, sizes: Sequence[int]) -> list[OnlineInputs]:
        """Consecutive parts of ``sizes`` rows each (the requests of a coalesced batch)."""
        if len(sizes) == 1:
            return [self]
        parts, start = [], 0
        for size in sizes:
            stop = start + size
            parts.append(
                OnlineInputs(
                    self.flight_ids[start:stop],
                    self.features.rows_between(start, stop),
                    self.matrices.rows(start, stop),
                    self.reports[start:stop],
                    self.features_s,
                    self.transform_s,
                )
            )
            start = stop
        return parts


@dataclass(frozen=True)
class ModelInputs:
    """What the model call needs (and what the reports are read from): the requests' fields,
    their features and the MDT's matrices."""

    requests: list[dict[str, Any]]
    features: OnlineFeatures
    matrices: FeatureMatrices
    features_s: float
    transform_s: float


def online_inputs(
    store: FeatureStore, model: ServingModel, flights: Sequence[Mapping[str, Any]]
) -> OnlineInputs:
    """Request fields -> online features as of T + on-demand features -> MDT matrices, with
    reports. Each flight carries its prediction time T under ``prediction_time`` (epoch
    microseconds, UTC: the request's arrival or its ``as_of``).

    Frame-free on purpose (a Polars frame per request costs more than the model call); the
    functions are the shared ones the batch job and training run on frames."""
    return reported_inputs(model_inputs(store, model, flights), model)


def model_inputs(
    store: FeatureStore, model: ServingModel, flights: Sequence[Mapping[str, Any]]
) -> ModelInputs:
    """The part of :func:`online_inputs` the model call waits for: features and MDT."""
    began = time.perf_counter()
    requests, times = _requests_and_times(flights)
    features = online_feature_columns(store, model.view, requests, times)
    return _with_mdt(model, requests, features, began)


async def model_inputs_async(
    store: AsyncOnlineReads, model: ServingModel, flights: Sequence[Mapping[str, Any]]
) -> ModelInputs:
    """:func:`model_inputs` with the store's round trip awaited on the running loop."""
    began = time.perf_counter()
    requests, times = _requests_and_times(flights)
    read = plan_online_read(model.view, requests, times)
    found: list[list[OnlineRow]] = [[] for _ in read.lookups]
    ranges: list[list[OnlineRange]] = []
    if read.rows:
        found, ranges = await store.read_rows_and_ranges_async(read.lookups, read.ranges)
    features = assemble_online_features(model.view, requests, times, read, found, ranges)
    return _with_mdt(model, requests, features, began)


def _requests_and_times(
    flights: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[int]]:
    requests = [{k: f.get(k) for k in REQUEST_FIELDS} for f in flights]
    try:
        times = [int(f[PREDICTION_TIME]) for f in flights]
    except KeyError:
        raise ValueError(f"every flight needs its {PREDICTION_TIME} (epoch microseconds)") from None
    return requests, times


def _with_mdt(
    model: ServingModel, requests: list[dict[str, Any]], features: OnlineFeatures, began: float
) -> ModelInputs:
    read = time.perf_counter()
    matrices = apply_mdt_columns(features.columns, features.rows, model.mdt)
    done = time.perf_counter()
    return ModelInputs(requests, features, matrices, read - began, done - read)


def reported_inputs(inputs: ModelInputs, model: ServingModel) -> OnlineInputs:
    """The rest of :func:`online_inputs`, which the model call does not wait for: each flight's
    input report and id (the service builds them while Triton computes)."""
    began = time.perf_counter()
    reports = input_reports(inputs.features.columns, model, inputs.matrices)
    ids = [request_flight_id(r) for r in inputs.requests]
    transform_s = inputs.transform_s + time.perf_counter() - began
    return OnlineInputs(
        ids, inputs.features, inputs.matrices, reports, inputs.features_s, transform_s
    )


def request_flight_id(flight: Mapping[str, Any]) -> str:
    """The flights group's key of one request's flight (see `flight_id_of`)."""
    return flight_id_of(
        flight["flight_date"],
        flight["carrier"],
        flight["flight"],
        flight["origin"],
        flight["sched_dep_time"],
    )


def input_reports(
    columns: Mapping[str, Any] | pl.DataFrame, model: ServingModel, matrices: FeatureMatrices
) -> list[InputReport]:
    """Per flight: the features the MDT imputed or sent to the out-of-vocabulary index.

    Read off the MDT's own output (its missing-value indicators and index 0), so the report says
    exactly what the model was given; only "null or unknown value?" needs the raw column."""
    mdt = model.mdt
    numeric = mdt.numeric_names
    categorical = mdt.categorical_names
    # As lists: iterating numpy rows element by element was a tenth of a 100-flight request.
    imputed = matrices.missing.tolist()
    oov = (matrices.categorical == OOV_INDEX).tolist()
    null = [[v is None for v in columns[c]] for c in categorical]  # per feature, per row
    groups = _input_groups(model)
    reports = []
    for row in range(len(matrices)):
        missing = list(compress(numeric, imputed[row]))  # C speed: 122 flags a row
        unknown: list[str] = []
        for j, name in enumerate(categorical):
            if oov[row][j]:
                (missing if null[j][row] else unknown).append(name)
        absent = set(missing)
        reports.append(
            InputReport(
                missing_features=missing,
                unknown_categories=unknown,
                missing_groups=[g for g, cols in groups if cols and absent.issuperset(cols)],
            )
        )
    return reports


def _input_groups(model: ServingModel) -> list[tuple[str, list[str]]]:
    """Each group the view reads (joined, or the fresh features' events) with the model inputs
    it provides."""
    inputs = set(model.mdt.input_features)
    return [(name, [c for c in cols if c in inputs]) for name, cols in model.view.input_groups()]


def transform(frame: pl.DataFrame, mdt: MDTState) -> FeatureMatrices:
    return apply_mdt(frame, mdt)


def triton_inputs(module: Any, matrices: FeatureMatrices) -> tuple[list[Any], list[Any]]:
    """Request tensors for tritonclient's HTTP or gRPC module, sync or aio (same shapes).

    HTTP sends tensors as binary data (the JSON form is slower); gRPC always does."""
    binary = {"binary_data": True} if module.__name__.startswith("tritonclient.http") else {}
    values = matrices.numeric  # built on access: once
    numeric = module.InferInput(NUMERIC_INPUT, list(values.shape), "FP32")
    numeric.set_data_from_numpy(values, **binary)
    categorical = module.InferInput(CATEGORICAL_INPUT, list(matrices.categorical.shape), "INT64")
    categorical.set_data_from_numpy(matrices.categorical, **binary)
    outputs = [module.InferRequestedOutput(PROBABILITY_OUTPUT, **binary)]
    return [numeric, categorical], outputs


# gRPC channel reconnection: the default back-off grows to two minutes while Triton is down;
# a service that must recover within seconds of Triton's return retries at most every second.
_GRPC_CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
]


def finite_probabilities(values: np.ndarray, model: str) -> np.ndarray:
    """``values``, checked: a NaN or infinite answer is refused here, by name, instead of
    reaching a client as JSON ``null`` where the schema promises a number."""
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ModelOutputInvalid(
            f"{model} answered {bad} non-finite probabilities of {len(values)}"
        )
    return values


class AsyncTritonClient:
    """The service's one Triton client, with a deadline on every call and every failure turned
    into `ModelServerUnavailable`: ``tritonclient.http.aio`` (binary tensors), or with Triton's
    gRPC address given explicitly (``FTI_TRITON_PROTOCOL=grpc``) ``tritonclient.grpc.aio``, for
    deployments that route only gRPC to Triton.

    (A hand-written asyncio client of the HTTP protocol served here until
    `benchmarks/online_load.py` measured it beside ``tritonclient.http.aio`` in the same runs:
    5-15% less service CPU per one-flight request at 16 connections, short of the 25% that
    keeps a hand-written part, invariant 9; so it was deleted.)"""

    def __init__(self, http_url: str, timeout_s: float, grpc_url: str | None = None) -> None:
        self.url = grpc_url or http_url
        self.timeout_s = timeout_s
        self._module: Any = grpcaio if grpc_url else httpaio  # its tensor classes
        # aiohttp asks for gzip or deflate by default, and Triton then compresses every answer
        # that tritonclient inflates again: CPU on both sides for bytes that cross loopback or
        # a cluster network, found in benchmarks/request_profile.py's profile.
        self._headers = None if grpc_url else {"Accept-Encoding": "identity"}
        if grpc_url:
            self._client: Any = grpcaio.InferenceServerClient(
                grpc_url, channel_args=_GRPC_CHANNEL_ARGS
            )
        else:
            self._client = httpaio.InferenceServerClient(http_url, conn_timeout=timeout_s)

    async def infer(self, model: str, version: str, matrices: FeatureMatrices) -> np.ndarray:
        """Probabilities for ``matrices`` (the service batches concurrent requests before
        they get here: see `ScoringPipeline`)."""
        what = f"inference on {model} v{version}"
        inputs, outputs = triton_inputs(self._module, matrices)
        result = await self._call(
            self._client.infer(
                model, inputs, model_version=version, outputs=outputs, headers=self._headers
            ),
            what,
        )
        probabilities = np.asarray(result.as_numpy(PROBABILITY_OUTPUT), dtype=np.float32)
        return finite_probabilities(probabilities.reshape(-1), f"{model} v{version}")

    async def model_ready(self, model: str, version: str) -> bool:
        ready = await self._call(self._client.is_model_ready(model, version), "model readiness")
        return bool(ready)

    async def _call(self, call: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):  # unlike wait_for, no task per call
                return await call
        except TimeoutError as exc:
            raise ModelServerUnavailable(
                f"Triton at {self.url}: {what} took longer than {self.timeout_s:g} s"
            ) from exc
        except (
            InferenceServerException,
            grpc.RpcError,
            aiohttp.ClientError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
            raise ModelServerUnavailable(f"Triton at {self.url}: {what} failed: {message}") from exc

    async def close(self) -> None:
        await self._client.close()


def score_with_triton(
    client: httpclient.InferenceServerClient,
    model: str,
    version: str,
    matrices: FeatureMatrices,
    batch_size: int,
) -> np.ndarray:
    """Synchronous scoring in batches of ``batch_size`` rows (the batch job)."""
    parts = []
    for start in range(0, len(matrices), batch_size):
        part = matrices.rows(start, start + batch_size)
        inputs, outputs = triton_inputs(httpclient, part)
        try:
            result = client.infer(model, inputs, model_version=version, outputs=outputs)
        except InferenceServerException as exc:
            raise ModelServerUnavailable(f"Triton inference failed: {exc.message()}") from exc
        parts.append(np.asarray(result.as_numpy(PROBABILITY_OUTPUT), dtype=np.float32))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).reshape(-1)


def score_in_process(torchscript: Path, matrices: FeatureMatrices, batch_size: int) -> np.ndarray:
    """The same TorchScript file, run here (needs PyTorch; the batch job's ``--in-process``)."""
    import torch

    module = torch.jit.load(str(torchscript), map_location="cpu").eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(matrices), batch_size):
            part = matrices.rows(start, start + batch_size)
            numeric = torch.from_numpy(part.numeric)
            categorical = torch.from_numpy(part.categorical)
            parts.append(module(numeric, categorical).numpy().astype(np.float32))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).reshape(-1)
