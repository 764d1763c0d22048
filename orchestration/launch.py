"""How a task runs its pipeline's CLI: a local subprocess, or the pipeline's image via compose.

Both are a child process whose exit code is the CLI's own: ``python -m <module> ...`` in the
pipelines' environment, or ``docker compose run --rm -T <service> ...``, which starts the
service's image with the stack's environment, volumes and network (the same definition the
crontab and the online service use) and exits with the container's code. Dagster's own Docker
and Kubernetes clients were not used for this: they turn every non-zero exit into one error and
lose the difference between "partial" (3), "bad usage" (2) and a failure worth retrying (1).

The child's stderr (progress, the summary table, the ``error:`` line) is copied to the step's
stderr as it comes, so Dagster's compute logs show a long training run live; its stdout is kept
for the JSON summary line. A task past its timeout, or a step cancelled from the UI, terminates
the child (SIGTERM, then SIGKILL after a grace period): ``docker compose run`` forwards the
signal to the container, so nothing keeps running behind a failed or cancelled step.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from orchestration.commands import Cli, Completed
from orchestration.settings import DagSettings, LaunchMode

log = logging.getLogger(__name__)

TERMINATE_GRACE_S = 30.0


@dataclass(frozen=True)
class Launcher:
    """Builds and runs the command line of a CLI invocation in the configured mode."""

    mode: LaunchMode
    python: str
    compose_file: Path
    compose_project_dir: Path | None
    timeout_s: float
    env: Mapping[str, str] | None = None  # None: the step's own environment

    @classmethod
    def from_settings(cls, settings: DagSettings) -> Launcher:
        return cls(
            mode=settings.launch,
            python=settings.python,
            compose_file=settings.compose_file,
            compose_project_dir=settings.compose_project_dir,
            timeout_s=settings.task_timeout_s,
        )

    def argv(self, cli: Cli, args: Sequence[str]) -> list[str]:
        if self.mode is LaunchMode.local:
            return [self.python, "-m", cli.module, *cli.command, *args]
        project = self.compose_project_dir or self.compose_file.parent
        return [
            "docker",
            "compose",
            "--file",
            str(self.compose_file),
            "--project-directory",
            str(project),
            "run",
            "--rm",
            "-T",  # no TTY: the output is logged, not a terminal
            cli.service,
            *args,
        ]

    def run(self, cli: Cli, args: Sequence[str]) -> Completed:
        return run_command(
            self.argv(cli, args),
            timeout_s=self.timeout_s,
            env=dict(self.env) if self.env is not None else None,
        )


def run_command(
    argv: list[str], *, timeout_s: float, env: dict[str, str] | None = None
) -> Completed:
    """Run ``argv``; stderr is copied to ours line by line, stdout kept; never left running."""
    began = time.perf_counter()
    log.info("running %s", " ".join(argv))
    child = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env if env is not None else os.environ.copy(),
    )
    assert child.stdout is not None and child.stderr is not None
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_copy, args=(child.stdout, out, sys.stdout), daemon=True),
        threading.Thread(target=_copy, args=(child.stderr, err, sys.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(child)
    except BaseException:  # a cancelled step (Dagster interrupts it): stop the child too
        _stop(child)
        raise
    for reader in readers:
        reader.join(timeout=10)
    return Completed(
        argv=argv,
        exit_code=child.returncode,
        stdout="".join(out),
        stderr="".join(err),
        seconds=round(time.perf_counter() - began, 3),
        timed_out=timed_out,
    )


def _copy(stream: IO[str], kept: list[str], echo: IO[str]) -> None:
    for line in stream:
        kept.append(line)
        echo.write(line)
    echo.flush()


def _stop(child: subprocess.Popen[str]) -> None:
    child.terminate()
    try:
        child.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
