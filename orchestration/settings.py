"""Settings of the daily DAG (prefix ``FTI_DAG_``): how tasks run and what each is asked to do.

Built once when Dagster loads the code location (:func:`orchestration.definitions.defs`) or at
the ``python -m orchestration`` entry point, never at import. The pipelines' own settings
(``FTI_DATA_ROOT``, ``FTI_MLFLOW_TRACKING_URI``, the monitor's ``FTI_RETRAIN_*`` policy, ...)
are not read here: each task's process or container reads them itself, exactly as under cron.
"""

from __future__ import annotations

import sys
from datetime import date
from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LaunchMode(StrEnum):
    # `python -m <pipeline> ...` as a subprocess of the Dagster step (one host, one venv)
    local = "local"
    # `docker compose run --rm <service> ...`: the pipeline's own image, with the compose
    # stack's environment, volumes and network, exactly as deploy/compose/crontab runs it
    compose = "compose"


class DagSettings(BaseSettings):
    """How the daily flow launches the pipelines' CLIs, and the arguments it gives them."""

    model_config = SettingsConfigDict(env_prefix="FTI_DAG_", env_file=None, extra="ignore")

    launch: LaunchMode = Field(
        default=LaunchMode.local, description="how a task runs its pipeline's CLI"
    )
    python: str = Field(
        default=sys.executable,
        description="interpreter of the pipelines' environment (launch=local)",
    )
    compose_file: Path = Field(
        default=Path("docker-compose.yml"), description="the stack's compose file (compose)"
    )
    compose_project_dir: Path | None = Field(
        default=None, description="compose --project-directory; default the file's folder"
    )
    task_timeout_s: float = Field(
        default=4 * 3600, gt=0, description="a task running longer is killed and failed"
    )
    max_retries: int = Field(
        default=2, ge=0, description="retries of a failed task (exit 1, killed, timed out)"
    )
    retry_delay_s: float = Field(
        default=120, ge=0, description="wait before the first retry; doubles each time"
    )

    first_day: date = Field(
        default=date(2013, 1, 1), description="first daily partition (a local date)"
    )
    schedule_time: str = Field(
        default="02:30",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="New York time the schedule runs the previous day's partition",
    )
    score_offset_days: int = Field(
        default=1,
        ge=0,
        le=7,
        description="batch-score the departures of partition day + this (1: the run's today)",
    )
    batch_in_process: bool = Field(
        default=False, description="batch scoring with --in-process instead of Triton"
    )
    monitor_window_days: int = Field(default=7, ge=1, le=366, description="monitor --window-days")
    monitor_source: str = Field(
        default="all", pattern="^(all|online|batch|shadow)$", description="monitor --source"
    )
    monitor_model: str = Field(default="champion", min_length=1, description="monitor --model")
    monitor_output_dir: str | None = Field(
        default=None,
        description="monitor --output-dir, a path where the monitoring job runs (default: the "
        "job's FTI_REPORT_DIR, else <data_root>/monitoring)",
    )
    retrain_config: Path | None = Field(
        default=None, description="training config file given to `retrain --config`"
    )
    retrain_args: list[str] = Field(
        default_factory=list,
        description='extra `retrain` options, JSON list (e.g. ["--train-days", "120"])',
    )

    @model_validator(mode="after")
    def _compose_file_named(self) -> DagSettings:
        if self.launch is LaunchMode.compose and self.compose_file.suffix not in {".yml", ".yaml"}:
            raise ValueError(f"FTI_DAG_COMPOSE_FILE={self.compose_file} is not a compose file")
        return self

    @property
    def schedule_hour_minute(self) -> tuple[int, int]:
        hour, minute = self.schedule_time.split(":")
        return int(hour), int(minute)
