"""The steps online and batch inference share: request rows -> features -> MDT -> probability.

Feature reading (online or point in time), the on-demand features and the MDT are the shared
implementations in ``shared/``; this module only arranges them, reports which inputs were
missing, and calls the model (Triton, or TorchScript in process for the batch job).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import polars as pl
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from inference_pipeline.model_artifact import ServingModel
from shared.errors import ModelServerUnavailable
from shared.feature_definitions import FLIGHTS
from shared.feature_store import FeatureStore
from shared.feature_view import attach_online_features
from shared.prediction_log import flight_id, sched_dep_utc
from shared.transforms import OOV_INDEX, FeatureMatrices, MDTState, apply_mdt
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


def request_frame(records: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Request fields typed as the flights group types them, plus ``flight_id`` and
    ``sched_dep_utc`` computed the way the feature pipeline computes them."""
    schema = {name: FLIGHTS.polars_schema[name] for name in REQUEST_FIELDS}
    frame = pl.DataFrame([{k: r.get(k) for k in REQUEST_FIELDS} for r in records], schema=schema)
    return frame.with_columns(flight_id(), sched_dep_utc())


def online_feature_frame(
    store: FeatureStore, model: ServingModel, requests: pl.DataFrame
) -> pl.DataFrame:
    """One online read per feature group for all flights, then the on-demand features."""
    return attach_online_features(store, model.view, requests)


@dataclass(frozen=True)
class InputReport:
    """What the MDT had to make up for one flight."""

    missing_features: list[str]  # null: imputed (numeric) or out-of-vocabulary (categorical)
    unknown_categories: list[str]  # a value the model never saw: out-of-vocabulary index
    missing_groups: list[str]  # feature groups with no online row for the flight's key


def input_reports(
    frame: pl.DataFrame, model: ServingModel, matrices: FeatureMatrices
) -> list[InputReport]:
    """Per flight: the features the MDT imputed or sent to the out-of-vocabulary index.

    Read off the MDT's own output (its missing-value indicators and index 0), so the report says
    exactly what the model was given; only "null or unknown value?" needs the raw column."""
    mdt = model.mdt
    numeric = mdt.numeric_features
    categorical = mdt.categorical_features
    imputed = matrices.numeric[:, len(numeric) :] > 0.5
    oov = matrices.categorical == OOV_INDEX
    null = frame.select(pl.col(c).is_null() for c in categorical).to_numpy()
    inputs = set(mdt.input_features)
    groups = [
        (join.group.name, [c for f in join.feature_list() if (c := join.prefix + f) in inputs])
        for join in model.view.joins
    ]
    reports = []
    for row in range(len(matrices)):
        missing = [n for n, m in zip(numeric, imputed[row], strict=True) if m]
        missing += [c for c, o, n in zip(categorical, oov[row], null[row], strict=True) if o and n]
        unknown = [
            c for c, o, n in zip(categorical, oov[row], null[row], strict=True) if o and not n
        ]
        absent = set(missing)
        reports.append(
            InputReport(
                missing_features=missing,
                unknown_categories=unknown,
                missing_groups=[g for g, cols in groups if cols and absent.issuperset(cols)],
            )
        )
    return reports


def transform(frame: pl.DataFrame, mdt: MDTState) -> FeatureMatrices:
    return apply_mdt(frame, mdt)


def triton_inputs(module: Any, matrices: FeatureMatrices) -> tuple[list[Any], list[Any]]:
    """Request tensors for ``tritonclient.http`` or ``tritonclient.http.aio`` (same classes)."""
    numeric = module.InferInput(NUMERIC_INPUT, list(matrices.numeric.shape), "FP32")
    numeric.set_data_from_numpy(matrices.numeric, binary_data=True)
    categorical = module.InferInput(CATEGORICAL_INPUT, list(matrices.categorical.shape), "INT64")
    categorical.set_data_from_numpy(matrices.categorical, binary_data=True)
    outputs = [module.InferRequestedOutput(PROBABILITY_OUTPUT, binary_data=True)]
    return [numeric, categorical], outputs


class AsyncTritonClient:
    """The service's one Triton client: an aiohttp session with pooled keep-alive connections,
    a deadline on every call, and every failure turned into `ModelServerUnavailable`."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = aiohttpclient.InferenceServerClient(
            url, conn_limit=64, conn_timeout=timeout_s
        )

    async def infer(self, model: str, version: str, matrices: FeatureMatrices) -> np.ndarray:
        inputs, outputs = triton_inputs(aiohttpclient, matrices)
        result = await self._call(
            self._client.infer(model, inputs, model_version=version, outputs=outputs),
            f"inference on {model} v{version}",
        )
        return np.asarray(result.as_numpy(PROBABILITY_OUTPUT), dtype=np.float32).reshape(-1)

    async def model_ready(self, model: str, version: str) -> bool:
        ready = await self._call(self._client.is_model_ready(model, version), "model readiness")
        return bool(ready)

    async def _call(self, call: Any, what: str) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError as exc:
            raise ModelServerUnavailable(
                f"Triton at {self.url}: {what} took longer than {self.timeout_s:g} s"
            ) from exc
        except (InferenceServerException, aiohttp.ClientError, OSError) as exc:
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
        part = FeatureMatrices(
            numeric=matrices.numeric[start : start + batch_size],
            categorical=matrices.categorical[start : start + batch_size],
        )
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
            numeric = torch.from_numpy(matrices.numeric[start : start + batch_size])
            categorical = torch.from_numpy(matrices.categorical[start : start + batch_size])
            parts.append(module(numeric, categorical).numpy().astype(np.float32))
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).reshape(-1)
