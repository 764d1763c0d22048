"""Typed settings for the feature store, shared by every pipeline.

Each pipeline builds its own settings object at its entry point (never at import) from the
environment (prefix ``FTI_``) and its CLI flags.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigurationError


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


class FeatureStoreSettings(BaseSettings):
    """Where the offline and online stores live.

    ``offline_root`` is a folder or an object-store URI (``s3://bucket/prefix``); credentials for
    the latter go in ``storage_options`` (passed to delta-rs) or the usual AWS variables.
    """

    model_config = SettingsConfigDict(env_prefix="FTI_", env_file=None, extra="ignore")

    backend: StoreBackend = StoreBackend.local
    data_root: Path = Path("data")
    offline_root: str | None = Field(
        default=None, description="Delta Lake root; defaults to <data_root>/offline"
    )
    storage_options: dict[str, str] = Field(default_factory=dict)
    online_backend: OnlineBackend = OnlineBackend.sqlite
    sqlite_path: Path | None = Field(
        default=None, description="online SQLite file; defaults to <data_root>/online.sqlite"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_namespace: str = "fti"
    online_timeout_s: float = Field(default=1.0, gt=0)
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
    hopsworks_host: str | None = None
    hopsworks_project: str | None = None
    hopsworks_api_key: SecretStr | None = None

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
