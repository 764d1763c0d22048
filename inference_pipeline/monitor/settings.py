"""Settings of the monitoring job (prefix ``FTI_``): what to read, how to decide, where to write.

Built once at the entry point (``python -m inference_pipeline.monitor run``), never at import.
It extends the shared feature store and registry settings, so ``FTI_DATA_ROOT`` and friends mean
the same thing in every pipeline. The drift decision rule and the retraining policy are plain
fields, so operators tune them per deployment (``FTI_RETRAIN_DRIFT_SHARE=0.2``) without code.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator

from shared.errors import ConfigurationError
from shared.promotion import ShadowRuleSettings
from shared.registry import RegistrySettings
from shared.settings import FeatureStoreSettings


class DriftShareBy(StrEnum):
    # The mean over feature families of each family's drifted share: a family of many related
    # features (the 26 fresh window features) counts as much as one of four.
    family = "family"
    # Drifted features over tested features, every feature alike.
    feature = "feature"


class PredictionSource(StrEnum):
    all = "all"
    online = "online"
    batch = "batch"
    # The online service's shadow challenger (FTI_SHADOW): its rows score the same flights as
    # the champion's online rows, so "all" compares both versions on the same labelled flights.
    shadow = "shadow"


class MonitorSettings(FeatureStoreSettings, RegistrySettings, ShadowRuleSettings):
    """What to compare, how a feature counts as drifted, when to recommend retraining, and when
    a shadowed challenger replaces the champion (``FTI_SHADOW_*``, the replay's rule too)."""

    shadow_promote: bool = Field(
        default=False,
        description="the shadow step promotes a challenger the shadow rule prefers; off: it "
        "records the decision and an operator promotes",
    )

    # Drift decision rule, per feature: drifted when the change is significant AND large.
    drift_p_value: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="significance level of the KS / chi-square / missing-rate tests",
    )
    drift_psi: float = Field(
        default=0.2, gt=0, description="PSI at or above which a significant change is drift"
    )
    drift_psi_warn: float = Field(
        default=0.1, gt=0, description="PSI at or above which a significant change is a warning"
    )
    drift_min_values: int = Field(
        default=50,
        ge=5,
        description="fewer non-null values in the window: only the missing rate is tested",
    )
    drift_baseline: bool = Field(
        default=True,
        description="compare each feature's PSI with the PSI of windows of the same length "
        "inside the training period (read from the offline store); drift only above it",
    )
    drift_baseline_quantile: float = Field(
        default=0.99,
        gt=0.5,
        le=1.0,
        description="which quantile of the training-period windows' PSI a window must exceed",
    )
    drift_share_by: DriftShareBy = Field(
        default=DriftShareBy.family,
        description="what the drifted share counts: family (the mean over feature families, "
        "each the group its features come from, of their drifted share) or feature",
    )
    drift_ignore_features: list[str] = Field(
        default_factory=list,
        description="features reported but left out of the drifted share (e.g. calendar "
        "features that move with the date by construction)",
    )

    # Retraining policy: any reason fires it (the training run itself is wired elsewhere).
    retrain_drift_share: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="drift is detected, and retraining recommended, when MORE than this share "
        "of the tested features drifted",
    )
    retrain_auc_drop: float = Field(
        default=0.03,
        gt=0,
        le=1,
        description="retrain when the window's ROC AUC is more than this below the test AUC",
    )
    retrain_max_age_days: int | None = Field(
        default=None,
        ge=1,
        description="retrain when the model's data ends more than this many days before the "
        "window's end (a schedule); unset: no age limit",
    )
    quality_min_labels: int = Field(
        default=500, ge=1, description="labelled flights the window needs before quality counts"
    )
    segment_min_labels: int = Field(
        default=200,
        ge=1,
        description="labelled flights a segment (carrier, origin, hour bucket, month) needs "
        "before its quality counts",
    )
    segment_auc_drop: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="a segment whose ROC AUC fell more than this below its test ROC AUC (or the "
        "window's, without per-segment test metrics) is named in the report's notes",
    )
    quality_min_labels_per_day: int = Field(
        default=100, ge=1, description="labelled flights a day needs for its own quality row"
    )

    # Outputs
    report_dir: Path | None = Field(
        default=None, description="JSON and HTML reports; default <data_root>/monitoring"
    )
    prometheus_textfile: Path | None = Field(
        default=None,
        description="write the gauges here (node-exporter textfile collector, *.prom)",
    )
    pushgateway_url: str | None = Field(
        default=None, description="push the gauges to this Prometheus Pushgateway (host:port)"
    )
    pushgateway_job: str = Field(
        default="fti_monitoring", min_length=1, description="job label of the pushed gauges"
    )

    @model_validator(mode="after")
    def _consistent(self) -> MonitorSettings:
        if self.drift_psi_warn > self.drift_psi:
            raise ConfigurationError(
                f"FTI_DRIFT_PSI_WARN={self.drift_psi_warn} must not exceed "
                f"FTI_DRIFT_PSI={self.drift_psi}"
            )
        if self.prometheus_textfile is not None and self.prometheus_textfile.suffix != ".prom":
            raise ConfigurationError(
                f"FTI_PROMETHEUS_TEXTFILE={self.prometheus_textfile}: the textfile collector only "
                "reads files ending in .prom"
            )
        return self

    @property
    def resolved_report_dir(self) -> Path:
        return self.report_dir or self.data_root / "monitoring"

    def store_settings(self) -> FeatureStoreSettings:
        return FeatureStoreSettings.model_validate(
            self.model_dump(include=set(FeatureStoreSettings.model_fields))
        )

    def registry_settings(self) -> RegistrySettings:
        return RegistrySettings.model_validate(
            self.model_dump(include=set(RegistrySettings.model_fields))
        )
