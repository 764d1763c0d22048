"""Typed settings shared by every pipeline: the common ones and the feature store's.

Each pipeline builds its own settings object at its entry point (never at import) from the
environment (prefix ``FTI_``) and its CLI options (:mod:`shared.command_line`). Every variable is
listed in ``docs/configuration.md``, generated from the settings classes.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError
from shared.prediction_time import MAX_LEAD_MINUTES


class LogLevel(StrEnum):
    debug = "DEBUG"
    info = "INFO"
    warning = "WARNING"
    error = "ERROR"


class CommonSettings(BaseSettings):
    """What every pipeline reads: where its data lives and how much it logs."""

    model_config = SettingsConfigDict(env_prefix="FTI_", env_file=None, extra="ignore")

    data_root: Path = Field(
        default=Path("data"),
        description="local root of everything a pipeline keeps: the stores, the embedded "
        "registry, checkpoints, serving files, reports (each movable by its own setting)",
    )
    log_level: LogLevel | None = Field(
        default=None,
        description="log level of every command (its --log-level): DEBUG, INFO, WARNING or "
        "ERROR; unset: WARNING, the online service and a standalone Triton INFO",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class StoreBackend(StrEnum):
    local = "local"
    hopsworks = "hopsworks"


class OnlineBackend(StrEnum):
    sqlite = "sqlite"
    redis = "redis"


class PitJoinMethod(StrEnum):
    """Which implementation answers the point-in-time join (same contract, same tests)."""

    library = "library"  # Polars join_asof after an explicit sort of both sides
    native = "native"  # hand-written: shared/feature_store/point_in_time_native.py


# The faster one on benchmarks/point_in_time_join.py (both measured in one run).
DEFAULT_PIT_JOIN = PitJoinMethod.native


class FeatureStoreSettings(CommonSettings):
    """Where the offline and online stores live.

    ``offline_root`` is a folder or an object-store URI (``s3://bucket/prefix``); credentials for
    the latter go in ``storage_options`` (passed to delta-rs) or the usual AWS variables.
    """

    backend: StoreBackend = Field(
        default=StoreBackend.local,
        description="local: Delta Lake offline, SQLite or Redis online; hopsworks: a Hopsworks "
        "project's feature store",
    )
    offline_root: str | None = Field(
        default=None, description="Delta Lake root; defaults to <data_root>/offline"
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object of delta-rs object-store options for an s3:// offline root "
        "(endpoint, region, credentials; the usual AWS_* variables work too)",
    )
    online_backend: OnlineBackend = Field(
        default=OnlineBackend.sqlite,
        description="online store of the local backend: sqlite (a file, one host) or redis "
        "(several serving replicas)",
    )
    sqlite_path: Path | None = Field(
        default=None, description="online SQLite file; defaults to <data_root>/online.sqlite"
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis of the online store (redis)"
    )
    redis_namespace: str = Field(
        default="fti", description="prefix of the online store's Redis keys (one per deployment)"
    )
    online_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="deadline of online feature reads (a request's reads share it); the "
        "SQLite busy timeout",
    )
    pit_join: PitJoinMethod = Field(
        default=DEFAULT_PIT_JOIN,
        description="point-in-time join: 'library' (Polars join_asof after an explicit sort) or "
        "'native' (hand-written, faster on benchmarks/point_in_time_join.py); same results",
    )
    commit_retries: int = Field(
        default=8,
        ge=0,
        description="retries of an offline write that lost its commit to a concurrent writer",
    )
    commit_backoff_s: float = Field(
        default=0.2,
        gt=0,
        description="first back-off of those retries; doubles each time (jittered, capped 10 s)",
    )
    hopsworks_host: str | None = Field(default=None, description="Hopsworks cluster (hopsworks)")
    hopsworks_project: str | None = Field(default=None, description="Hopsworks project")
    hopsworks_api_key: SecretStr | None = Field(
        default=None, description="Hopsworks API key (a secret: never logged)"
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> FeatureStoreSettings:
        if self.backend is StoreBackend.hopsworks and (
            not self.hopsworks_host or not self.hopsworks_project or self.hopsworks_api_key is None
        ):
            raise ConfigurationError(
                "FTI_BACKEND=hopsworks needs FTI_HOPSWORKS_HOST, FTI_HOPSWORKS_PROJECT and "
                "FTI_HOPSWORKS_API_KEY"
            )
        return self

    @property
    def resolved_offline_root(self) -> str:
        return self.offline_root or str(self.data_root / "offline")

    @property
    def resolved_sqlite_path(self) -> Path:
        return self.sqlite_path or self.data_root / "online.sqlite"


class PredictionTimeSettings(CommonSettings):
    """The prediction lead (invariant 7, :mod:`shared.prediction_time`): one variable, read by
    training and the batch job, so that a deployment declares its lead once."""

    lead_minutes: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LEAD_MINUTES,
        description="prediction lead: training reads every row as of the scheduled departure "
        "minus this many minutes (unset: the config's lead_minutes, 60); the batch job scores "
        "at the model's own lead (unset: that one) and refuses another",
    )
