"""Quality gates: may the candidate become champion?

Pure: the decision depends only on the metrics given. Every gate looks at the same test window:
an absolute ROC AUC floor, no regression against the current champion scored on that window, and
no regression on any large segment (carrier, origin, hour-of-day bucket, month) beyond a margin:
a model can gain overall while failing one airport or one evening bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from training_pipeline.config import GateConfig


@dataclass(frozen=True)
class SegmentScores:
    """Candidate and champion on one segment of the test window."""

    name: str  # e.g. origin=EWR
    share: float  # of the test rows
    candidate_roc_auc: float
    champion_roc_auc: float


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when passed)
    checks: list[str] = field(default_factory=list)  # every check, passed or not

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all gates passed"


def check_gates(
    candidate_roc_auc: float,
    champion_roc_auc: float | None,
    gates: GateConfig,
    *,
    champion_version: str | None = None,
    segments: Sequence[SegmentScores] = (),
) -> GateDecision:
    """``checks`` state each rule; ``reasons`` state each failure as a fact about the candidate
    ("test ROC AUC 0.5173 is below the floor 0.6500"), never the rule it broke."""
    reasons: list[str] = []
    checks: list[str] = []
    auc = f"test ROC AUC {candidate_roc_auc:.4f}"
    checks.append(f"{auc} >= floor {gates.min_roc_auc:.4f}")
    if math.isnan(candidate_roc_auc):
        reasons.append("test ROC AUC is not a number (a test window with a single class?)")
    elif candidate_roc_auc < gates.min_roc_auc:
        reasons.append(f"{auc} is below the floor {gates.min_roc_auc:.4f}")
    if champion_roc_auc is not None:
        bar = champion_roc_auc - gates.max_roc_auc_drop
        champion = f"champion v{champion_version}'s {champion_roc_auc:.4f}"
        checks.append(
            f"{auc} >= champion v{champion_version} {champion_roc_auc:.4f} - "
            f"{gates.max_roc_auc_drop:.4f} on the same window"
        )
        if not math.isnan(candidate_roc_auc) and candidate_roc_auc < bar:
            reasons.append(
                f"{auc} is more than {gates.max_roc_auc_drop:.4f} below {champion} on the same "
                "window"
            )
    if champion_roc_auc is not None and gates.max_segment_roc_auc_drop is not None:
        segment_check(segments, gates, champion_version, reasons, checks)
    return GateDecision(passed=not reasons, reasons=reasons, checks=checks)


def segment_check(
    segments: Sequence[SegmentScores],
    gates: GateConfig,
    champion_version: str | None,
    reasons: list[str],
    checks: list[str],
) -> None:
    """On every segment holding more than ``min_segment_share`` of the test rows, the candidate
    may trail the champion's ROC AUC by at most ``max_segment_roc_auc_drop``."""
    margin = gates.max_segment_roc_auc_drop
    assert margin is not None
    large = [
        s
        for s in segments
        if s.share > gates.min_segment_share
        and not math.isnan(s.candidate_roc_auc)
        and not math.isnan(s.champion_roc_auc)
    ]
    checks.append(
        f"on each of the {len(large)} segments with more than {gates.min_segment_share:.0%} of "
        f"the test rows: ROC AUC >= champion v{champion_version}'s - {margin:.4f}"
    )
    for s in sorted(large, key=lambda s: s.candidate_roc_auc - s.champion_roc_auc):
        if s.candidate_roc_auc < s.champion_roc_auc - margin:
            reasons.append(
                f"segment {s.name} ({s.share:.0%} of the test rows): ROC AUC "
                f"{s.candidate_roc_auc:.4f} is more than {margin:.4f} below champion "
                f"v{champion_version}'s {s.champion_roc_auc:.4f}"
            )
