"""Settings of the inference pipeline (online service and batch job), env prefix ``FTI_``.

One class, built once at the entry point (``python -m inference_pipeline ...``), never at import.
It extends the shared feature store and registry settings, so ``FTI_DATA_ROOT`` and friends mean
the same thing in every pipeline.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from shared.errors import ConfigurationError
from shared.registry import RegistrySettings
from shared.settings import FeatureStoreSettings, PredictionTimeSettings


class TritonProtocol(StrEnum):
    http = "http"  # tritonclient.http.aio, binary tensors
    grpc = "grpc"  # tritonclient.grpc.aio, for deployments that route only gRPC to Triton


class TritonMode(StrEnum):
    managed = "managed"  # start the nvidia-pytriton wheel's tritonserver as a subprocess
    external = "external"  # use a running server at FTI_TRITON_URL (the official container)


class PredictionLogSink(StrEnum):
    spool = "spool"  # local append-only segment files, one writer per folder
    redis = "redis"  # a Redis stream (the streaming feature pipeline's broker)


class TritonFlavour(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class InferenceSettings(FeatureStoreSettings, RegistrySettings, PredictionTimeSettings):
    """Where the model, the features and Triton are; how the service protects itself."""

    model_alias: str = Field(default="champion", description="registry alias or version served")

    # Triton
    triton_mode: TritonMode = Field(
        default=TritonMode.managed,
        description="managed: start the nvidia-pytriton wheel's tritonserver as a subprocess; "
        "external: use the running Triton at FTI_TRITON_URL",
    )
    triton_url: str | None = Field(default=None, description="host:port of Triton's HTTP API")
    triton_grpc_url: str | None = Field(
        default=None,
        description="host:port of Triton's gRPC API (external mode). Set it: model control "
        "then goes over gRPC, because Triton's HTTP frontend stalls HTTP inference while it "
        "handles an HTTP load request",
    )
    triton_protocol: TritonProtocol = Field(
        default=TritonProtocol.http,
        description="protocol of the online service's inference calls (grpc needs "
        "FTI_TRITON_GRPC_URL in external mode; http costs the service less CPU per call)",
    )
    triton_flavour: TritonFlavour = Field(
        default=TritonFlavour.cpu,
        description="model flavour published to Triton: cpu (Python backend) or gpu (LibTorch)",
    )
    triton_model_repository: Path | None = Field(
        default=None,
        description="where verified versions are published for Triton; "
        "default <data_root>/serving/model_repository (external Triton: a shared volume)",
    )
    triton_runtime_dir: Path | None = Field(
        default=None, description="managed Triton's backends and log; default <data_root>/serving"
    )
    triton_timeout_s: float = Field(default=2.0, gt=0, description="per inference call")
    triton_startup_timeout_s: float = Field(
        default=120.0, gt=0, description="a managed Triton must be ready within this"
    )
    triton_load_timeout_s: float = Field(
        default=120.0, gt=0, description="a model version must load into Triton within this"
    )
    triton_restart_backoff_s: float = Field(
        default=1.0,
        gt=0,
        description="managed Triton: wait before restarting it again after a failed restart or "
        "a death soon after one; doubles each time, up to FTI_TRITON_RESTART_BACKOFF_MAX_S",
    )
    triton_restart_backoff_max_s: float = Field(
        default=30.0, gt=0, description="cap of the managed Triton's restart back-off"
    )
    triton_restart_limit_s: float = Field(
        default=180.0,
        gt=0,
        description="managed Triton down this long (restarts failing) fails liveness: /healthz "
        "answers 503 so that the service's supervisor restarts it",
    )

    # Online service
    host: str = Field(
        default="127.0.0.1",
        description="address the online service binds (not loopback: needs FTI_API_KEY or "
        "FTI_ALLOW_UNAUTHENTICATED)",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="port of the online service")
    workers: int = Field(
        default=1,
        ge=1,
        description="uvicorn worker processes; more than one needs an external Triton they share",
    )
    api_key: SecretStr | None = Field(default=None, description="X-API-Key for /v1/*")
    admin_api_key: SecretStr | None = Field(default=None, description="X-API-Key for /admin/*")
    allow_unauthenticated: bool = Field(
        default=False, description="serve without an API key on a non-loopback address"
    )
    max_flights_per_request: int = Field(
        default=1000, ge=1, description="flights one prediction request may carry (more: 422)"
    )
    body_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="a request body not fully received this long after it began is answered "
        "408 and its connection closed",
    )
    fast_predictions: bool = Field(
        default=True,
        description="answer POST /v1/predictions in front of FastAPI's routing and middleware "
        "(less Python per request: see benchmarks/online_load.py); false: FastAPI's route",
    )
    failure_log_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="repeated failures of one dependency are logged once, then summed up in "
        "one line per this interval",
    )
    registry_timeout_s: float = Field(
        default=5.0, gt=0, description="deadline of a registry call (alias polls, readiness)"
    )
    prediction_log: bool = Field(default=True, description="log predictions for monitoring")

    # Prediction log: the service appends each answered batch to a sink; the log writer
    # (`python -m inference_pipeline log-writer`) commits it to the predictions table.
    prediction_log_sink: PredictionLogSink = Field(
        default=PredictionLogSink.spool,
        description="spool: an append-only file per service worker under "
        "FTI_PREDICTION_LOG_SPOOL_DIR (one host, or a volume the writer shares); redis: a "
        "Redis stream at FTI_REDIS_URL",
    )
    prediction_log_spool_dir: Path | None = Field(
        default=None, description="spool folder; default <data_root>/prediction_spool"
    )
    prediction_log_segment_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="a spool segment is handed to the writer once it holds this many bytes",
    )
    prediction_log_segment_s: float = Field(
        default=1.0, gt=0, description="... or once its first record is this old"
    )
    prediction_log_fsync: bool = Field(
        default=False,
        description="fdatasync each spool append before the response: survives a host crash "
        "(off: survives the service process's death, SIGKILL included)",
    )
    prediction_log_stream: str = Field(
        default="fti:predictions", min_length=1, description="Redis stream of the redis sink"
    )
    prediction_log_commit_rows: int = Field(
        default=50_000, ge=1, description="the log writer commits once this many rows wait"
    )
    prediction_log_commit_s: float = Field(
        default=10.0, gt=0, description="... or once its oldest waiting record is this old"
    )
    prediction_log_compact_commits: int = Field(
        default=60,
        ge=0,
        description="the log writer compacts the predictions table (OPTIMIZE) after this many "
        "of its commits (0: never)",
    )
    prediction_log_alive_file: Path | None = Field(
        default=None,
        description="the log writer touches this file after every read of the sink (at most "
        "a second apart while it works): a stale file means a stuck writer (liveness probe)",
    )
    prediction_log_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="the log writer serves its Prometheus metrics (/metrics) on this port of "
        "every interface (unset: not served; never with --drain)",
    )
    prediction_log_vacuum_hours: int | None = Field(
        default=168,
        ge=168,
        description="after compacting, delete files unreferenced this long (unset: no vacuum)",
    )

    # Rollouts: a challenger beside the champion, and alias moves followed without a restart
    challenger_alias: str = Field(default="challenger", description="alias of the challenger")
    canary_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of flights answered by the challenger"
    )
    shadow: bool = Field(
        default=False, description="challenger scores every request off the response path"
    )
    alias_poll_s: float = Field(
        default=5.0, ge=0.0, description="how often to check the registry for moved aliases"
    )

    # Batch job
    batch_size: int = Field(default=4096, ge=1, description="rows per Triton request")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> InferenceSettings:
        if self.canary_share > 0 and self.shadow:
            raise ConfigurationError(
                "FTI_CANARY_SHARE and FTI_SHADOW both set: run the challenger as a canary "
                "or in shadow, not both"
            )
        if self.triton_mode is TritonMode.external and not self.triton_url:
            raise ConfigurationError("FTI_TRITON_MODE=external needs FTI_TRITON_URL (host:port)")
        if (
            self.triton_protocol is TritonProtocol.grpc
            and self.triton_mode is TritonMode.external
            and not self.triton_grpc_url
        ):
            raise ConfigurationError(
                "FTI_TRITON_PROTOCOL=grpc needs FTI_TRITON_GRPC_URL (host:port) in external mode"
            )
        if self.workers > 1 and self.triton_mode is TritonMode.managed:
            # A managed Triton belongs to one process: each worker would start its own server
            # and publish into the same model repository.
            raise ConfigurationError(
                f"FTI_WORKERS={self.workers} needs one Triton shared by all workers: set "
                "FTI_TRITON_MODE=external and FTI_TRITON_URL (host:port), or serve with 1 worker"
            )
        if self.api_key is None and not self.allow_unauthenticated and not _is_loopback(self.host):
            raise ConfigurationError(
                f"serving on {self.host} without FTI_API_KEY: set a key, or "
                "FTI_ALLOW_UNAUTHENTICATED=true to serve an open API on purpose"
            )
        if (
            self.api_key is not None
            and self.admin_api_key is not None
            and self.api_key.get_secret_value() == self.admin_api_key.get_secret_value()
        ):
            raise ConfigurationError("FTI_ADMIN_API_KEY must differ from FTI_API_KEY")
        for name in ("api_key", "admin_api_key"):
            key = getattr(self, name)
            if key is not None and len(key.get_secret_value()) < 16:
                raise ConfigurationError(f"FTI_{name.upper()} must be at least 16 characters")
        return self

    @property
    def serves_challenger(self) -> bool:
        return self.canary_share > 0 or self.shadow

    @property
    def prediction_spool_dir(self) -> Path:
        return self.prediction_log_spool_dir or self.data_root / "prediction_spool"

    @property
    def serving_dir(self) -> Path:
        return self.triton_runtime_dir or self.data_root / "serving"

    @property
    def model_repository(self) -> Path:
        return self.triton_model_repository or self.data_root / "serving" / "model_repository"

    def store_settings(self) -> FeatureStoreSettings:
        return FeatureStoreSettings.model_validate(
            self.model_dump(include=set(FeatureStoreSettings.model_fields))
        )

    def registry_settings(self) -> RegistrySettings:
        return RegistrySettings.model_validate(
            self.model_dump(include=set(RegistrySettings.model_fields))
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
