"""The Dagster code location: ``dagster dev -m orchestration`` or the workspace.yaml of the
deployment loads :data:`defs`, built from :class:`DagSettings` when Dagster loads it."""

from __future__ import annotations

import dagster as dg

from orchestration.daily import DailyFlow, daily_job, daily_schedule
from orchestration.settings import DagSettings


def build_definitions(settings: DagSettings) -> dg.Definitions:
    job = daily_job(settings)
    return dg.Definitions(
        jobs=[job],
        schedules=[daily_schedule(job, settings)],
        resources={"flow": DailyFlow.from_settings(settings)},
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(DagSettings())
