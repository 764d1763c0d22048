"""Exit-code semantics of the DAG's tasks, with real child processes: 0 and a CLI's findings
(partial, drift, refused) succeed, 2 fails without a retry, anything else is retried; a task past
its timeout is stopped. The children are tiny Python modules that exit as told."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orchestration.commands import BATCH, FEATURES, MONITOR, TRAINING, Cli, Completed, Verdict
from orchestration.daily import DailyFlow
from orchestration.launch import Launcher, run_command
from orchestration.settings import DagSettings, LaunchMode

pytestmark = pytest.mark.unit

EXIT_WITH = """
import sys
print('progress', file=sys.stderr)
print('{"status": "done", "code": %s}' % sys.argv[1])
if sys.argv[1] != '0':
    print('error: the thing failed', file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize(
    ("cli", "code", "verdict"),
    [
        (FEATURES, 0, Verdict.ok),
        (FEATURES, 3, Verdict.finding),
        (FEATURES, 1, Verdict.failed),
        (FEATURES, 2, Verdict.usage),
        (BATCH, 3, Verdict.failed),  # the batch job has no "partial"
        (MONITOR, 3, Verdict.finding),  # drift is an answer
        (TRAINING, 3, Verdict.finding),  # refused by the gates is an answer
        (TRAINING, -9, Verdict.failed),  # killed
    ],
)
def test_each_cli_has_its_own_findings(cli: Cli, code: int, verdict: Verdict) -> None:
    assert cli.verdict(code) is verdict


def test_summary_is_the_last_json_line_and_the_error_the_last_error_line() -> None:
    done = Completed(
        argv=["x"],
        exit_code=1,
        stdout='a table\n{"a": 1}\n{"b": 2}\nnot json {\n',
        stderr="error: first\nprogress\nerror: second\ntrailing\n",
        seconds=1.0,
    )
    assert done.summary() == {"b": 2}
    assert done.error_line() == "error: second"
    assert Completed(["x"], 1, "", "", 1.0).summary() is None


def test_local_and_compose_command_lines() -> None:
    local = Launcher(LaunchMode.local, "/venv/bin/python", Path("dc.yml"), None, 60)
    assert local.argv(FEATURES, ["run", "--date", "2013-07-04"]) == [
        "/venv/bin/python", "-m", "feature_pipeline", "run", "--date", "2013-07-04",
    ]  # fmt: skip
    compose = Launcher(LaunchMode.compose, "python", Path("/opt/fti/docker-compose.yml"), None, 60)
    assert compose.argv(MONITOR, ["run", "--end", "2013-07-04"]) == [
        "docker", "compose", "--file", "/opt/fti/docker-compose.yml",
        "--project-directory", "/opt/fti", "run", "--rm", "-T", "monitoring",
        "run", "--end", "2013-07-04",
    ]  # fmt: skip


@pytest.fixture
def exit_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    (tmp_path / "exit_with.py").write_text(EXIT_WITH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return Cli("exit_with", "unused", {3: "partial"})


def one_task_job(cli: Cli, code: int, retries: int) -> dg.JobDefinition:
    @dg.op
    def task(context, flow: DailyFlow) -> None:  # type: ignore[no-untyped-def]
        flow.run(context, "task", cli, [str(code)])

    @dg.job(
        resource_defs={"flow": DailyFlow.from_settings(DagSettings(python=sys.executable))},
        op_retry_policy=dg.RetryPolicy(max_retries=retries, delay=0),
    )
    def one_task() -> None:
        task()

    return one_task


def attempts(result: dg.ExecuteInProcessResult) -> int:
    return 1 + sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


@pytest.mark.parametrize(
    ("code", "success", "tries"),
    [(0, True, 1), (3, True, 1), (1, False, 3), (2, False, 1), (4, False, 3)],
)
def test_retries_follow_the_exit_code(
    exit_module: Cli, code: int, success: bool, tries: int
) -> None:
    result = one_task_job(exit_module, code, retries=2).execute_in_process(raise_on_error=False)
    assert result.success is success
    assert attempts(result) == tries
    if not success:
        failure = next(e for e in result.all_events if e.is_step_failure)
        data = failure.step_failure_data
        assert data is not None and data.user_failure_data is not None
        assert data.user_failure_data.description == (
            f"task: exit {code} ({exit_module.meaning(code)}): error: the thing failed"
        )


def test_a_task_past_its_timeout_is_stopped(tmp_path: Path) -> None:
    began = time.perf_counter()
    done = run_command(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        timeout_s=1.0,
    )
    assert done.timed_out and done.exit_code != 0
    assert time.perf_counter() - began < 20
    assert done.stdout == "started\n"
    assert done.error_line() == "timed out after 1 s"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["run", "--date", "2013-13-01"], {}, "--date '2013-13-01' is not a YYYY-MM-DD date"),
        (["backfill", "--start", "2013-07-02", "--end", "2013-07-01"], {}, "is before --start"),
        (["run", "--date", "2013-07-01"], {"FTI_DAG_LAUNCH": "ssh"}, "FTI_DAG_LAUNCH: Input"),
    ],
)
def test_the_cli_refuses_bad_usage_with_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    from typer.testing import CliRunner

    from orchestration.__main__ import app

    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2
    assert message in result.output
