"""What the replay reads from the environment (prefix ``FTI_``) and what one replay is.

:class:`ReplaySettings` is *where* (the data root every pipeline shares) and the decision rules
an operator tunes: the shadow promotion margins and the fallback retraining schedule. The drift
and quality triggers of the retraining policy are the monitor's own settings
(``FTI_RETRAIN_DRIFT_SHARE``, ``FTI_RETRAIN_AUC_DROP``, ``FTI_RETRAIN_MAX_AGE_DAYS``), read by
:class:`inference_pipeline.monitor.settings.MonitorSettings` so the replay and the monitoring
CronJob fire on the same rule.

:class:`ReplayPlan` is *what*: which weeks, how cheap the training, which scorer. It is saved in
the journal; resuming a replay under a different plan is refused.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.promotion import ShadowRuleSettings
from shared.registry import RegistrySettings
from shared.settings import FeatureStoreSettings


class Scorer(StrEnum):
    in_process = "in-process"  # the registered TorchScript file, in this process
    triton = "triton"  # one managed Triton server for the whole replay


class ReplaySettings(FeatureStoreSettings, RegistrySettings, ShadowRuleSettings):
    """Where the replay writes, and the rules that decide promotions and scheduled retraining.

    The shadow margins (``FTI_SHADOW_*``) are :class:`shared.promotion.ShadowRuleSettings`, the
    same fields the monitor's shadow step reads for online shadow traffic."""

    replay_dir: Path | None = Field(
        default=None, description="journal, monitoring reports and the report; <data_root>/replay"
    )
    retrain_schedule_weeks: int | None = Field(
        default=4,
        ge=1,
        description="fallback schedule: retrain when no training ran for this many weeks, "
        "whatever monitoring says; unset: only when the policy fires",
    )
    retrain_cooldown_weeks: int = Field(
        default=2,
        ge=1,
        description="at least this many weeks between two trainings, however often the policy "
        "fires (a summer week drifts from a winter reference every week until a new model is "
        "promoted; retraining each week would only queue challengers)",
    )

    @property
    def resolved_replay_dir(self) -> Path:
        return self.replay_dir or self.data_root / "replay"

    def shared_fields(self) -> dict[str, Any]:
        """The store and registry settings every pipeline's settings class takes."""
        names = set(FeatureStoreSettings.model_fields) | set(RegistrySettings.model_fields)
        return self.model_dump(include=names)


class ReplayPlan(BaseModel):
    """One replay: its weeks, its training budget, its scorer. Saved in the journal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_week: int = Field(default=1, ge=1)
    epochs: int = Field(default=3, ge=1)
    scorer: Scorer = Scorer.in_process
    train_days: int = Field(default=120, ge=7, description="sliding training window of retrains")
    validation_days: int = Field(default=14, ge=1)
    test_days: int = Field(default=14, ge=1)
    training_config: dict[str, Any] = Field(
        default_factory=dict, description="a training config file's content (the base config)"
    )

    def differences(self, other: ReplayPlan) -> list[str]:
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        return [f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
