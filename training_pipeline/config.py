"""What a training run does (windows, model, optimisation, gates) and where it reads and writes.

Two objects, on purpose:

- :class:`TrainingSettings` (pydantic-settings, env prefix ``FTI_``): *where* - the feature store,
  the registry, the checkpoint folder, the device. Built once at the entry point.
- :class:`TrainingConfig` (a plain pydantic model, from a TOML/JSON file and CLI flags): *what* -
  the experiment. Its resolved form is logged to MLflow and saved with the model version.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ConfigurationError
from shared.prediction_time import DEFAULT_LEAD_MINUTES, MAX_LEAD_MINUTES
from shared.registry import RegistrySettings
from shared.setting_errors import invalid_settings_line, setting_problems
from shared.settings import FeatureStoreSettings, PredictionTimeSettings


class Window(BaseModel):
    """Local flight dates [start, end): ``end`` is exclusive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} must be after its start {self.start}")
        return self

    @classmethod
    def parse(cls, text: str) -> Window:
        """``2013-01-01:2013-10-01`` -> Window (end exclusive)."""
        start, sep, end = text.partition(":")
        if not sep:
            raise ConfigurationError(f"window {text!r}: expected START:END (ISO dates)")
        try:
            first, last = date.fromisoformat(start), date.fromisoformat(end)
        except ValueError as exc:
            raise ConfigurationError(f"window {text!r}: {exc}; expected START:END") from exc
        try:
            return cls(start=first, end=last)
        except ValidationError as exc:
            raise ConfigurationError(
                f"window {text!r}: {'; '.join(setting_problems(exc, env_prefix=None))}; give "
                "START:END with END after START (END exclusive)"
            ) from exc

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"


class Windows(BaseModel):
    """Time split; the default is the full 2013 year: train Jan-Sep, validate Oct, test Nov-Dec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: Window = Window(start=date(2013, 1, 1), end=date(2013, 10, 1))
    validation: Window = Window(start=date(2013, 10, 1), end=date(2013, 11, 1))
    test: Window = Window(start=date(2013, 11, 1), end=date(2014, 1, 1))

    @model_validator(mode="after")
    def _in_time_order(self) -> Windows:
        if self.validation.start < self.train.end or self.test.start < self.validation.end:
            raise ValueError("windows must not overlap and must run train < validation < test")
        return self


class RecentWindows(BaseModel):
    """The newest window for continuous training, derived backwards from its last day.

    ``until`` is the last local date whose outcomes are known (inclusive): the test window is the
    ``test_days`` ending with it, validation the ``validation_days`` before, and training the
    ``train_days`` before that. A sliding window on purpose: the point of retraining is to learn
    the recent world, and the gates then compare candidate and champion on the newest days.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_days: int = Field(default=120, ge=7)
    validation_days: int = Field(default=14, ge=1)
    test_days: int = Field(default=14, ge=1)

    def ending(self, until: date) -> Windows:
        test_end = until + timedelta(days=1)
        test_start = test_end - timedelta(days=self.test_days)
        validation_start = test_start - timedelta(days=self.validation_days)
        train_start = validation_start - timedelta(days=self.train_days)
        return Windows(
            train=Window(start=train_start, end=validation_start),
            validation=Window(start=validation_start, end=test_start),
            test=Window(start=test_start, end=test_end),
        )


class ModelConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Small and well regularised: wider nets overfit the Jan-Sep days within two epochs.
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    max_embedding_dim: int = Field(default=16, ge=1)


class OptimConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=12, ge=1)
    batch_size: int = Field(default=2048, ge=2)  # global, across all processes
    lr: float = Field(default=1e-3, gt=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    warmup_steps: int = Field(default=200, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    patience: int = Field(default=3, ge=1)  # epochs without validation improvement
    eval_batch_size: int = Field(default=16384, ge=1)


class MDTConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_frequency: int = Field(default=20, ge=1)
    max_vocabulary: int = Field(default=250, ge=1)  # also keeps HGB's categorical limit (255)
    clip: float = Field(default=8.0, gt=0)


class BaselineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # The reference trees fit on a seeded sample of at most this many training (and validation)
    # rows: all of the 2013 year (245,723), a bounded cost on 10x-100x stores.
    max_rows: int = Field(default=500_000, ge=1000)
    max_iter: int = Field(default=500, ge=1)
    learning_rate: float = Field(default=0.1, gt=0)
    max_leaf_nodes: int = Field(default=63, ge=2)
    l2_regularization: float = Field(default=1.0, ge=0)


class GateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_roc_auc: float = Field(default=0.65, ge=0, le=1)  # absolute floor on the test window
    # The candidate may trail the champion by at most this much ROC AUC on the same window.
    max_roc_auc_drop: float = Field(default=0.0, ge=0, le=1)
    # Per segment (carrier, origin, hour-of-day bucket, month: shared/segments.py): on every
    # segment holding more than `min_segment_share` of the test rows, the candidate may trail the
    # champion's ROC AUC on that segment by at most this much. None: no segment gate.
    max_segment_roc_auc_drop: float | None = Field(default=0.05, ge=0, le=1)
    min_segment_share: float = Field(default=0.10, gt=0, le=1)


class TrainingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 13
    # Prediction time T = scheduled departure - lead: every training row is read as of T, so the
    # model learns from what is known this long before departure (stored with the version; the
    # batch job scores at it).
    lead_minutes: int = Field(default=DEFAULT_LEAD_MINUTES, ge=0, le=MAX_LEAD_MINUTES)
    # The fresh window features (what left the origin, and the aircraft, in the minutes before
    # T: shared.recent_departures). false trains the view without them (the comparison of
    # benchmarks/lead_quality.py); the version records which it has.
    fresh_features: bool = True
    windows: Windows = Windows()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    mdt: MDTConfig = MDTConfig()
    baseline: BaselineConfig = BaselineConfig()
    gates: GateConfig = GateConfig()

    @classmethod
    def from_file(cls, path: Path) -> TrainingConfig:
        """Load a ``.toml`` or ``.json`` config; unknown keys are refused, not ignored."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(
                invalid_settings_line(
                    exc, env_prefix=None, where=f"config {path}", advice=f"Fix {path}."
                )
            ) from exc
        except ValueError as exc:  # not TOML / JSON
            raise ConfigurationError(f"config {path}: {str(exc).splitlines()[0]}") from exc

    def with_overrides(
        self, flags: Mapping[str, str] | None = None, **changes: Any
    ) -> TrainingConfig:
        """A copy with dotted keys replaced, e.g. ``{"optim.epochs": 3}``; re-validated.
        ``flags`` names the CLI option of each key, for the error line."""
        data = self.model_dump(mode="json")
        for dotted, value in changes.items():
            if value is None:
                continue
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        try:
            return TrainingConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(
                invalid_settings_line(
                    exc,
                    flags=flags,
                    env_prefix=None,
                    where="the training config",
                    advice="Fix the options or the config file.",
                )
            ) from exc

    def fingerprint(self) -> str:
        """sha256 of the resolved config: a checkpoint only resumes under the same one."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def flat(self) -> dict[str, Any]:
        """``{"optim.lr": 0.002, ...}`` for MLflow params."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class TrainingSettings(FeatureStoreSettings, RegistrySettings, PredictionTimeSettings):
    """Everything the training pipeline reads from the environment (prefix ``FTI_``)."""

    checkpoint_dir: Path | None = Field(
        default=None, description="checkpoints; defaults to <data_root>/checkpoints"
    )
    device: Device = Field(
        default=Device.auto, description="auto: CUDA when present, else CPU; or cpu, cuda"
    )
    training_chunk_days: int = Field(
        default=31,
        ge=1,
        description="days of flights joined at a time while building the training data: "
        "bounds memory (lower it for very large stores); the data built does not depend on it",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="on one CUDA GPU, capture the training step as a CUDA graph and replay it "
        "(false: eager steps, for debugging or profiling)",
    )
    git_commit: str | None = Field(default=None, description="overrides `git rev-parse HEAD`")

    @property
    def resolved_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir or self.data_root / "checkpoints"

    def store_settings(self) -> FeatureStoreSettings:
        return FeatureStoreSettings.model_validate(
            self.model_dump(include=set(FeatureStoreSettings.model_fields))
        )

    def registry_settings(self) -> RegistrySettings:
        return RegistrySettings.model_validate(
            self.model_dump(include=set(RegistrySettings.model_fields))
        )


class TuningSettings(TrainingSettings):
    """What ``python -m training_pipeline tune`` reads besides the training's settings: where the
    Optuna study lives and how workers sharing it notice a dead one."""

    tuning_storage: str | None = Field(
        default=None,
        description="Optuna storage shared by every worker of a study: sqlite:///<file> on one "
        "machine, postgresql://... across machines; default sqlite:///<data_root>/optuna.db",
    )
    tuning_study: str = Field(
        default="flight_delay", description="Optuna study name (workers of one study share it)"
    )
    tuning_heartbeat_s: int = Field(
        default=30,
        ge=1,
        description="seconds between a running trial's heartbeats in the storage",
    )
    tuning_grace_s: int = Field(
        default=120,
        ge=2,
        description="a running trial without a heartbeat for this long belongs to a dead worker: "
        "the next worker to start a trial marks it failed (and re-runs its parameters "
        "FTI_TUNING_TRIAL_RETRIES times)",
    )
    tuning_trial_retries: int = Field(
        default=1,
        ge=0,
        description="times a dead worker's trial is re-run with the same parameters",
    )

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> TuningSettings:
        if self.tuning_grace_s <= self.tuning_heartbeat_s:
            raise ConfigurationError(
                f"FTI_TUNING_GRACE_S={self.tuning_grace_s} must be more than "
                f"FTI_TUNING_HEARTBEAT_S={self.tuning_heartbeat_s}: a live trial beats once per "
                "heartbeat and must not be taken for a dead one"
            )
        return self

    @property
    def storage_url(self) -> str:
        return self.tuning_storage or f"sqlite:///{self.data_root.resolve()}/optuna.db"
