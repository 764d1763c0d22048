"""Shadow comparison: champion and challenger on the same flights, once their outcomes arrived.

While a challenger is shadowed, the batch job scores every flight with both versions (both rows
land in ``predictions``, keyed by version). When the flights' outcomes reach the feature store,
each version is scored on exactly the labelled flights that both of them scored - not on each
version's own sample - so a difference is the models', not the samples'.

The decision is a plain function of the comparison, the challenger's recorded gate decision and
the configured margins: promote only a gate-eligible challenger that is at least as good as the
champion by the margins, on enough labels. Every outcome comes with its reason in words.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from inference_pipeline.monitor.quality import log_loss, roc_auc
from shared.promotion import Eligibility


@dataclass(frozen=True)
class ShadowRules:
    min_auc_gain: float = 0.0  # challenger AUC - champion AUC must be >= this
    max_log_loss_increase: float = 0.0  # challenger log loss - champion's must be <= this
    min_labels: int = 1000


@dataclass(frozen=True)
class ShadowComparison:
    champion: str
    challenger: str
    flights: int  # labelled flights both versions scored
    champion_roc_auc: float
    champion_log_loss: float
    challenger_roc_auc: float
    challenger_log_loss: float

    @property
    def auc_gain(self) -> float:
        return self.challenger_roc_auc - self.champion_roc_auc

    @property
    def log_loss_increase(self) -> float:
        return self.challenger_log_loss - self.champion_log_loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "auc_gain": self.auc_gain,
            "log_loss_increase": self.log_loss_increase,
        }


@dataclass(frozen=True)
class ShadowDecision:
    promote: bool
    resolved: bool  # False: not enough labels yet, keep shadowing
    reason: str


def paired_scores(
    predictions: pl.DataFrame, outcomes: pl.DataFrame, champion: str, challenger: str
) -> pl.DataFrame:
    """``flight_id, champion, challenger, is_delayed``: labelled flights scored by both versions
    (each version's latest prediction of the flight; cancelled flights have no label)."""

    def scores(version: str) -> pl.DataFrame:
        return (
            predictions.filter(pl.col("model_version") == version)
            .sort("scored_at", "request_id")
            .unique("flight_id", keep="last")
            .select("flight_id", pl.col("probability").cast(pl.Float64).alias(version))
        )

    labels = outcomes.filter(pl.col("is_delayed").is_not_null()).select(
        "flight_id", pl.col("is_delayed").cast(pl.Int8)
    )
    pairs = (
        scores(champion)
        .join(scores(challenger), on="flight_id", how="inner")
        .join(labels.unique("flight_id"), on="flight_id", how="inner")
        .sort("flight_id")
    )
    return pairs.rename({champion: "champion", challenger: "challenger"})


def compare(pairs: pl.DataFrame, champion: str, challenger: str) -> ShadowComparison:
    labels = pairs["is_delayed"].to_numpy()
    first, second = pairs["champion"].to_numpy(), pairs["challenger"].to_numpy()
    return ShadowComparison(
        champion=champion,
        challenger=challenger,
        flights=pairs.height,
        champion_roc_auc=roc_auc(labels, first),
        champion_log_loss=log_loss(labels, first),
        challenger_roc_auc=roc_auc(labels, second),
        challenger_log_loss=log_loss(labels, second),
    )


def decide(
    comparison: ShadowComparison, eligibility: Eligibility, rules: ShadowRules
) -> ShadowDecision:
    """Promote the challenger, keep the champion, or keep shadowing - and why."""
    c = comparison
    if c.flights < rules.min_labels:
        return ShadowDecision(
            promote=False,
            resolved=False,
            reason=f"keep shadowing: {c.flights:,} labelled flights scored by both, "
            f"{rules.min_labels:,} needed",
        )
    if not eligibility.eligible:
        return ShadowDecision(False, True, f"keep champion v{c.champion}: {eligibility.reason}")
    versus = (
        f"ROC AUC {c.challenger_roc_auc:.4f} vs {c.champion_roc_auc:.4f} "
        f"({c.auc_gain:+.4f}, needs >= {rules.min_auc_gain:+.4f}), log loss "
        f"{c.challenger_log_loss:.4f} vs {c.champion_log_loss:.4f} "
        f"({c.log_loss_increase:+.4f}, allows <= {rules.max_log_loss_increase:+.4f}) "
        f"on {c.flights:,} labelled flights"
    )
    failures = []
    if math.isnan(c.auc_gain) or c.auc_gain < rules.min_auc_gain:
        failures.append("ROC AUC")
    if math.isnan(c.log_loss_increase) or c.log_loss_increase > rules.max_log_loss_increase:
        failures.append("log loss")
    if failures:
        return ShadowDecision(
            False,
            True,
            f"keep champion v{c.champion}: challenger v{c.challenger} not good enough on "
            f"{' and '.join(failures)}: {versus}",
        )
    return ShadowDecision(
        True, True, f"promote challenger v{c.challenger} over v{c.champion}: {versus}"
    )
