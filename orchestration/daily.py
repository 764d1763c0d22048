"""The daily flow as one Dagster job, partitioned by day.

Partition ``D`` is a New York calendar day; the schedule runs it at 02:30 on ``D + 1``, once the
day is over (:func:`daily_schedule`). Its tasks, each one pipeline CLI::

    feature run --date D ──► batch scoring --date D+1 (the run's "today")
             │
             └──────────► monitoring --end D ──► retraining --until D ──► shadow decision --end D
                                                 (when the policy fired     (when a challenger is
                                                  and no challenger is       in shadow)
                                                  in shadow)

Edges are data dependencies: batch scoring reads the point-in-time features the feature run
wrote; monitoring needs the day's outcomes (the delayed labels) from the same run; retraining
acts on monitoring's verdict; the shadow decision comes last, so a challenger trained today is
not judged before it was shadowed, and one still in shadow is not replaced (monitoring reports
it as pending, and retraining waits for its decision). A failed feature run therefore stops
every other task of the day (batch scoring never scores stale features), while a failed batch
job does not hide the day's drift and quality report.

Each task passes on a :class:`TaskResult`. A failure raises ``dagster.Failure``: exit 2 (bad
command line or settings) without retries, anything else retried by the job's retry policy.

Dagster reads the ops' annotations at definition time, so this module does without
``from __future__ import annotations``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import OpExecutionContext

from orchestration.commands import BATCH, FEATURES, MONITOR, TRAINING, Cli, Verdict
from orchestration.launch import Launcher
from orchestration.settings import DagSettings, LaunchMode

NEW_YORK = "America/New_York"
JOB_NAME = "fti_daily"
# In the DAG's order.
TASKS = ("feature_run", "batch_scoring", "monitoring", "retraining", "shadow_decision")
# One daily run at a time: days depend on the days before (tables, champion, challenger).
CONCURRENCY_TAG = "fti/flow"


@dataclass(frozen=True)
class TaskResult:
    """What a task did: the CLI's exit code and its meaning, its JSON summary line; or why the
    task did not need to run its CLI (``skipped``)."""

    task: str
    argv: list[str]
    exit_code: int | None
    verdict: str
    meaning: str
    summary: dict[str, Any] | None
    seconds: float
    skipped: str | None = None


class DailyFlow(dg.ConfigurableResource):
    """Runs the pipelines' CLIs for the daily job (built from :class:`DagSettings`)."""

    launch: str
    python: str
    compose_file: str
    compose_project_dir: str | None
    task_timeout_s: float
    score_offset_days: int
    batch_in_process: bool
    monitor_window_days: int
    monitor_source: str
    monitor_model: str
    monitor_output_dir: str | None
    retrain_config: str | None
    retrain_args: list[str]

    @classmethod
    def from_settings(cls, settings: DagSettings) -> "DailyFlow":
        return cls(
            launch=settings.launch.value,
            python=settings.python,
            compose_file=str(settings.compose_file),
            compose_project_dir=(
                str(settings.compose_project_dir) if settings.compose_project_dir else None
            ),
            task_timeout_s=settings.task_timeout_s,
            score_offset_days=settings.score_offset_days,
            batch_in_process=settings.batch_in_process,
            monitor_window_days=settings.monitor_window_days,
            monitor_source=settings.monitor_source,
            monitor_model=settings.monitor_model,
            monitor_output_dir=settings.monitor_output_dir,
            retrain_config=str(settings.retrain_config) if settings.retrain_config else None,
            retrain_args=list(settings.retrain_args),
        )

    def launcher(self) -> Launcher:
        return Launcher(
            mode=LaunchMode(self.launch),
            python=self.python,
            compose_file=Path(self.compose_file),
            compose_project_dir=(
                Path(self.compose_project_dir) if self.compose_project_dir else None
            ),
            timeout_s=self.task_timeout_s,
        )

    def command(self, task: str, day: date) -> tuple[Cli, list[str]]:
        """The CLI and arguments of ``task`` for partition ``day`` (the same for every launch
        mode; tests/deploy checks them against the CLIs and the compose services)."""
        iso = day.isoformat()
        if task == "feature_run":
            return FEATURES, ["run", "--date", iso]
        if task == "batch_scoring":
            scored = (day + timedelta(days=self.score_offset_days)).isoformat()
            extra = ["--in-process"] if self.batch_in_process else []
            return BATCH, ["--date", scored, "--model", "champion", *extra]
        if task == "monitoring":
            window = ["--window-days", str(self.monitor_window_days)]
            chosen = ["--source", self.monitor_source, "--model", self.monitor_model]
            output = ["--output-dir", self.monitor_output_dir] if self.monitor_output_dir else []
            return MONITOR, ["run", "--end", iso, *window, *chosen, *output]
        if task == "retraining":
            config = ["--config", self.retrain_config] if self.retrain_config else []
            return TRAINING, ["retrain", "--until", iso, *config, *self.retrain_args]
        if task == "shadow_decision":
            window = ["--window-days", str(self.monitor_window_days)]
            output = ["--output-dir", self.monitor_output_dir] if self.monitor_output_dir else []
            return MONITOR, ["shadow", "--end", iso, *window, *output]
        raise KeyError(f"no task {task!r}; the tasks are {', '.join(TASKS)}")

    def run_task(self, context: OpExecutionContext, task: str, day: date) -> TaskResult:
        cli, args = self.command(task, day)
        return self.run(context, task, cli, args)

    def run(
        self, context: OpExecutionContext, task: str, cli: Cli, args: Sequence[str]
    ) -> TaskResult:
        """Run one CLI; a failure raises ``dagster.Failure`` (retried unless it was usage)."""
        done = self.launcher().run(cli, args)
        verdict = cli.verdict(done.exit_code)
        result = TaskResult(
            task=task,
            argv=done.argv,
            exit_code=done.exit_code,
            verdict=verdict.value,
            meaning=cli.meaning(done.exit_code),
            summary=done.summary(),
            seconds=done.seconds,
        )
        metadata = _metadata(result)
        if verdict in (Verdict.failed, Verdict.usage):
            raise dg.Failure(
                description=f"{task}: exit {done.exit_code} ({result.meaning}): "
                f"{done.error_line()}",
                metadata=metadata,
                allow_retries=verdict is Verdict.failed,
            )
        if verdict is Verdict.finding:
            context.log.warning(f"{task}: exit {done.exit_code}, {result.meaning}")
        context.add_output_metadata(metadata)
        return result


def _metadata(result: TaskResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "command": " ".join(result.argv) if result.argv else "-",
        "exit_code": result.exit_code if result.exit_code is not None else -1,
        "verdict": result.verdict,
        "meaning": result.meaning,
        "seconds": result.seconds,
    }
    if result.summary is not None:
        metadata["summary"] = dg.MetadataValue.json(result.summary)
    if result.skipped:
        metadata["skipped"] = result.skipped
    return metadata


def skipped(context: OpExecutionContext, task: str, reason: str) -> TaskResult:
    """A task that had nothing to do today: recorded, with its reason, as a success."""
    context.log.info(f"{task}: not run: {reason}")
    result = TaskResult(task, [], None, Verdict.ok.value, "not run", None, 0.0, skipped=reason)
    context.add_output_metadata(_metadata(result))
    return result


def partition_day(context: OpExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


@dg.op(
    description="python -m feature_pipeline run --date D: the day's flights, outcomes, "
    "weather, and the statistics valid for D+1"
)
def feature_run(context: OpExecutionContext, flow: DailyFlow) -> TaskResult:
    return flow.run_task(context, "feature_run", partition_day(context))


@dg.op(description="python -m inference_pipeline.batch --date D+offset --model champion")
def batch_scoring(context: OpExecutionContext, flow: DailyFlow, features: TaskResult) -> TaskResult:
    return flow.run_task(context, "batch_scoring", partition_day(context))


@dg.op(
    description="python -m inference_pipeline monitor run --end D: drift, delayed-label "
    "quality and the retraining policy over the window ending D"
)
def monitoring(context: OpExecutionContext, flow: DailyFlow, features: TaskResult) -> TaskResult:
    return flow.run_task(context, "monitoring", partition_day(context))


@dg.op(
    description="python -m training_pipeline retrain --until D, when monitoring's "
    "retraining policy fired: the new version becomes challenger, never champion"
)
def retraining(context: OpExecutionContext, flow: DailyFlow, monitored: TaskResult) -> TaskResult:
    policy = (monitored.summary or {}).get("retrain") or {}
    if not policy.get("fire"):
        return skipped(context, "retraining", "the retraining policy did not fire")
    shadow = (monitored.summary or {}).get("shadow") or {}
    if shadow.get("pending"):
        return skipped(
            context,
            "retraining",
            f"the policy fired, but challenger v{shadow.get('challenger')} is still in shadow "
            f"({shadow.get('reason')}): retraining waits for its decision",
        )
    context.log.info(f"retraining: the policy fired: {'; '.join(policy.get('reasons', []))}")
    return flow.run_task(context, "retraining", partition_day(context))


@dg.op(
    description="python -m inference_pipeline monitor shadow --end D: champion vs the "
    "challenger in shadow on the window's labelled flights; promote (FTI_SHADOW_PROMOTE) or "
    "record why not"
)
def shadow_decision(
    context: OpExecutionContext, flow: DailyFlow, retrained: TaskResult
) -> TaskResult:
    return flow.run_task(context, "shadow_decision", partition_day(context))


def daily_partitions(settings: DagSettings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=settings.first_day.isoformat(), timezone=NEW_YORK
    )


def daily_job(settings: DagSettings) -> dg.JobDefinition:
    retry = dg.RetryPolicy(
        max_retries=settings.max_retries,
        delay=settings.retry_delay_s,
        backoff=dg.Backoff.EXPONENTIAL,
    )

    @dg.job(
        name=JOB_NAME,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        partitions_def=daily_partitions(settings),
        op_retry_policy=retry,
        tags={CONCURRENCY_TAG: "daily"},
    )
    def fti_daily() -> None:
        features = feature_run()
        batch_scoring(features)
        shadow_decision(retraining(monitoring(features)))

    return fti_daily


def daily_schedule(job: dg.JobDefinition, settings: DagSettings) -> dg.ScheduleDefinition:
    """At ``schedule_time`` New York time on day D+1, run partition D (the day just over)."""
    hour, minute = settings.schedule_hour_minute
    schedule = dg.build_schedule_from_partitioned_job(
        job, hour_of_day=hour, minute_of_hour=minute, name=f"{JOB_NAME}_schedule"
    )
    assert isinstance(schedule, dg.ScheduleDefinition)
    return schedule
