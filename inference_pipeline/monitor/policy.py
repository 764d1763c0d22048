"""The retraining policy: when monitoring recommends training a new model.

Any one reason fires it:

- **data drift**: more than ``retrain_drift_share`` of the tested features drifted;
- **quality**: with at least ``quality_min_labels`` labelled flights, the window's ROC AUC is more
  than ``retrain_auc_drop`` below the version's own test AUC;
- **age** (a schedule): the newest data the version was built on ends more than
  ``retrain_max_age_days`` before the window's end.

Firing only recommends: the training run it triggers registers its version as ``challenger``
and the gates decide about ``champion`` (wired by the continuous-training job, not here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from inference_pipeline.monitor.drift import DriftSummary


@dataclass(frozen=True)
class RetrainPolicy:
    drift_share: float = 0.15
    auc_drop: float = 0.03
    max_age_days: int | None = None
    min_labels: int = 500


@dataclass(frozen=True)
class RetrainDecision:
    fire: bool
    reasons: list[str]
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_age_days(data_end: date | None, window_end: date) -> int | None:
    """Days from the last day of the model's data to the window's end (None: unknown)."""
    return None if data_end is None else (window_end - data_end).days


def retrain_decision(
    policy: RetrainPolicy,
    drift: DriftSummary,
    *,
    auc_drop: float | None,
    labelled: int,
    age_days: int | None,
) -> RetrainDecision:
    reasons = []
    if drift.detected and drift.share > policy.drift_share:
        reasons.append(
            f"data drift: {drift.drifted} of {drift.tested} features drifted "
            f"({drift.share:.0%}{' by family' if drift.share_by == 'family' else ''} > "
            f"{policy.drift_share:.0%})"
        )
    if auc_drop is not None and labelled >= policy.min_labels and auc_drop > policy.auc_drop:
        reasons.append(
            f"quality: ROC AUC {auc_drop:.3f} below the test AUC (> {policy.auc_drop:.3f}) "
            f"on {labelled:,} labelled flights"
        )
    if policy.max_age_days is not None and age_days is not None and age_days > policy.max_age_days:
        reasons.append(
            f"age: the model's data ends {age_days} days before the window's end "
            f"(> {policy.max_age_days})"
        )
    return RetrainDecision(fire=bool(reasons), reasons=reasons, policy=asdict(policy))
