"""Settings of the streaming part of the feature pipeline (``FTI_STREAM_*``)."""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from feature_pipeline.settings import FeaturePipelineSettings


class Broker(StrEnum):
    redis = "redis"  # Redis Streams, a consumer group (production)
    embedded = "embedded"  # a replay read in this process (no servers; the main job)


class StreamSettings(FeaturePipelineSettings):
    """Built once at the entry point from the environment (``FTI_*``) and CLI flags."""

    stream_broker: Broker = Field(default=Broker.redis, description="redis or embedded")
    stream_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis holding the stream (may carry a password)",
    )
    stream_key: str = Field(default="fti:departures", description="the stream's key")
    stream_group: str = Field(default="feature-pipeline", description="the consumer group")
    stream_consumer: str | None = Field(
        default=None,
        description="this member's name in the group (default: the host name; stable across "
        "restarts: its pending entries are re-read on start)",
    )
    stream_batch: int = Field(default=5_000, ge=1, description="messages per micro-batch, at most")
    stream_wait_s: float = Field(
        default=0.2, gt=0, description="longest wait for a micro-batch's first message"
    )
    stream_commit_interval_s: float = Field(
        default=5.0, gt=0, description="offline commits at most this often per group..."
    )
    stream_commit_events: int = Field(
        default=50_000, ge=1, description="...or as soon as this many events wait"
    )
    stream_claim_idle_s: float = Field(
        default=30.0, gt=0, description="a dead member's entries idle this long are claimed"
    )
    stream_alive_file: Path | None = Field(
        default=None,
        description="touched after every fetch: a liveness probe reads its age (None: no file)",
    )
    stream_maxlen: int | None = Field(
        default=2_000_000, ge=1, description="publishers trim the stream to about this length"
    )
    stream_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="the consumer serves its Prometheus metrics (/metrics) on this port of "
        "every interface (unset: not served)",
    )

    @property
    def consumer_name(self) -> str:
        return self.stream_consumer or socket.gethostname()

    @model_validator(mode="after")
    def _claim_after_commit(self) -> StreamSettings:
        # A live member's entries stay pending until their offline commit: claiming sooner
        # would take them from a member that is only waiting for it.
        if self.stream_claim_idle_s <= self.stream_commit_interval_s:
            raise ValueError(
                f"FTI_STREAM_CLAIM_IDLE_S ({self.stream_claim_idle_s:g}) must exceed "
                f"FTI_STREAM_COMMIT_INTERVAL_S ({self.stream_commit_interval_s:g})"
            )
        return self
