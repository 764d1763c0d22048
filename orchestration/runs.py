"""Run days of the daily job in this process, in order: the operator's path without a daemon.

With Dagster's daemon (the compose stack), the schedule and the UI's or ``dagster job
backfill``'s backfills launch the same job through the run queue, one run at a time
(dagster.yaml). These functions run it here instead: on the instance of ``DAGSTER_HOME`` when set
(the runs appear in the UI), else on a throwaway one. A backfill stops at the first day that
fails: the next day's feature statistics, champion and challenger depend on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import dagster as dg

from orchestration.daily import JOB_NAME, TASKS, TaskResult
from orchestration.definitions import build_definitions
from orchestration.settings import DagSettings

log = logging.getLogger(__name__)


@dataclass
class DayRun:
    """One day's run: whether it succeeded, and each task's result (absent: did not run)."""

    day: date
    run_id: str
    success: bool
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # task -> why
    retries: dict[str, int] = field(default_factory=dict)  # task -> retries it took

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "run_id": self.run_id,
            "success": self.success,
            "tasks": {
                name: {
                    "verdict": r.verdict,
                    "exit_code": r.exit_code,
                    "meaning": r.meaning,
                    "skipped": r.skipped,
                    "seconds": r.seconds,
                }
                for name, r in self.tasks.items()
            },
            "failures": self.failures,
            "retries": self.retries,
        }


@contextmanager
def dagster_instance() -> Iterator[dg.DagsterInstance]:
    """The instance of DAGSTER_HOME (runs visible in the UI), else an in-memory one."""
    home = os.environ.get("DAGSTER_HOME")
    instance = dg.DagsterInstance.get() if home else dg.DagsterInstance.ephemeral()
    with instance:
        yield instance


def run_day(settings: DagSettings, day: date, instance: dg.DagsterInstance | None = None) -> DayRun:
    """Run partition ``day`` of the daily job to its end (or its first failure)."""
    job = build_definitions(settings).resolve_job_def(JOB_NAME)
    if instance is None:
        with dagster_instance() as own:
            return run_day(settings, day, own)
    result = job.execute_in_process(
        partition_key=day.isoformat(), instance=instance, raise_on_error=False
    )
    run = DayRun(day=day, run_id=result.run_id, success=result.success)
    for name in TASKS:
        if result.is_node_success(name):
            run.tasks[name] = result.output_for_node(name)
    for event in result.all_events:
        if event.step_key is None:
            continue
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            description = event.step_failure_data.user_failure_data
            why = (description.description if description else None) or (
                error.message.strip() if error else "failed"
            )
            run.failures[event.step_key] = why or "failed"
        if event.event_type_value == "STEP_UP_FOR_RETRY":
            run.retries[event.step_key] = run.retries.get(event.step_key, 0) + 1
    return run


def run_days(
    settings: DagSettings,
    start: date,
    end: date,
    *,
    on_day: Callable[[DayRun], None] | None = None,
) -> list[DayRun]:
    """Partitions ``start..end`` in order, stopping after the first day that failed."""
    runs: list[DayRun] = []
    with dagster_instance() as instance:
        day = start
        while day <= end:
            run = run_day(settings, day, instance)
            runs.append(run)
            if on_day is not None:
                on_day(run)
            if not run.success:
                break
            day += timedelta(days=1)
    return runs
