"""The pipelines' CLIs as the daily flow calls them, and what each exit code means.

The DAG knows the pipelines only through their command lines (the same ones cron and the
Kubernetes CronJobs run), never through their Python code: each task is one CLI invocation in
the pipeline's own environment or image. This module is the contract: which module and which
compose service run a CLI, and which of its non-zero exit codes are answers rather than
failures. Every CLI shares the rest: 0 success, 2 bad command line or settings (a retry would
say the same: fail at once), anything else a failure worth retrying (1, killed, timed out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

USAGE = 2  # every CLI: bad command line or settings


class Verdict(StrEnum):
    ok = "ok"
    finding = "finding"  # a non-zero exit code that reports an answer (partial, drift, ...)
    usage = "usage"  # exit 2: not retried
    failed = "failed"  # retried


@dataclass(frozen=True)
class Cli:
    """One pipeline CLI: ``python -m <module> <command...>`` locally, ``<service>`` in the
    compose stack (whose entrypoint names the command)."""

    module: str
    service: str
    findings: Mapping[int, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # sub-command of the module's CLI, e.g. ("monitor",)

    def verdict(self, exit_code: int) -> Verdict:
        if exit_code == 0:
            return Verdict.ok
        if exit_code in self.findings:
            return Verdict.finding
        if exit_code == USAGE:
            return Verdict.usage
        return Verdict.failed

    def meaning(self, exit_code: int) -> str:
        if exit_code == 0:
            return "ok"
        if exit_code in self.findings:
            return self.findings[exit_code]
        if exit_code == USAGE:
            return "bad command line or settings"
        if exit_code < 0:
            return f"killed by signal {-exit_code}"
        return "failure"


# feature_pipeline/__main__.py: 3 = written, some input rows quarantined
FEATURES = Cli("feature_pipeline", "feature-pipeline", {3: "partial: rows quarantined"})
# inference_pipeline/batch.py: 0 or 1
BATCH = Cli("inference_pipeline.batch", "batch-scoring")
# inference_pipeline/monitor/__main__.py: 3 = drift detected or retraining recommended
MONITOR = Cli(
    "inference_pipeline", "monitoring", {3: "drift or retraining recommended"}, ("monitor",)
)
# training_pipeline/__main__.py: 3 = the gates refused the version (registered, not eligible)
TRAINING = Cli("training_pipeline", "training", {3: "refused by the gates"})


@dataclass(frozen=True)
class Completed:
    """What one CLI run left: its exit code, its output, how long it took."""

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    def summary(self) -> dict[str, Any] | None:
        """The CLI's one machine-readable line: the last JSON object printed on stdout."""
        for line in reversed(self.stdout.splitlines()):
            text = line.strip()
            if text.startswith("{") and text.endswith("}"):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return value
        return None

    def error_line(self) -> str:
        """The CLI's ``error:`` line on stderr (its last one), else the last line it wrote."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s"
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["(no output on stderr)"])[-1]
