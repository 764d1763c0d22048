"""The registered versions as an operator lists them (``python -m training_pipeline models``):
aliases, the gates' decision, the prediction lead, test metrics, the training run.

Everything comes from the registry's version tags, which the training pipeline writes when it
registers a version (:mod:`shared.promotion` for the gate decision).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from shared.promotion import GATES_PASSED_TAG, GATES_SUMMARY_TAG, PROMOTION_REASON_TAG
from shared.registry import ModelRegistry, RegisteredVersion

LEAD_TAG = "lead_minutes"  # set by training when the model predicts at a lead before departure
METRICS = ("roc_auc", "pr_auc", "log_loss", "brier")  # test-window metrics, tagged "test_<name>"


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: tuple[str, ...]
    registered: datetime | None
    gates: str  # "passed", "refused" or "not recorded"
    gates_summary: str
    lead_minutes: int | None
    metrics: dict[str, float]
    run_id: str
    promotion_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "aliases": list(self.aliases),
            "registered": None if self.registered is None else self.registered.isoformat(),
        }


def version_rows(registry: ModelRegistry) -> list[VersionRow]:
    """Every registered version, newest first."""
    return [version_row(v) for v in registry.versions()]


def version_row(version: RegisteredVersion) -> VersionRow:
    tags = version.tags
    passed = tags.get(GATES_PASSED_TAG)
    lead = tags.get(LEAD_TAG)
    return VersionRow(
        version=version.version,
        aliases=tuple(sorted(version.aliases)),
        registered=(
            None
            if version.created_ms is None
            else datetime.fromtimestamp(version.created_ms / 1000, tz=UTC)
        ),
        gates={"true": "passed", "false": "refused"}.get(passed or "", "not recorded"),
        gates_summary=tags.get(GATES_SUMMARY_TAG, ""),
        lead_minutes=int(lead) if lead is not None and lead.isdigit() else None,
        metrics={m: float(tags[f"test_{m}"]) for m in METRICS if f"test_{m}" in tags},
        run_id=version.run_id,
        promotion_reason=tags.get(PROMOTION_REASON_TAG),
    )
