"""Every CLI takes the shared options the same way, says what each option is, and answers a bad
command line with one line and exit 2 (shared/command_line.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from shared.command_line import (
    CommandLine,
    DataRootOption,
    LogLevel,
    LogLevelOption,
    build_settings,
    setting_option,
)
from shared.settings import FeatureStoreSettings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

# `python -m <module>` -> the Typer app it runs
CLIS = (
    "feature_pipeline",
    "training_pipeline",
    "inference_pipeline",
    "inference_pipeline.batch",
    "inference_pipeline.monitor",
)


def _app(module: str) -> typer.Typer:
    import importlib

    name = module if module.endswith("batch") else f"{module}.__main__"
    app = importlib.import_module(name).app
    assert isinstance(app, CommandLine), f"python -m {module} is not a CommandLine"
    return app


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf command of a Click tree, with its path of sub-command names."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


def _every_command() -> list[tuple[str, tuple[str, ...], Any]]:
    return [
        (module, path, command)
        for module in CLIS
        for path, command in _commands(typer.main.get_command(_app(module)))
    ]


def _id(case: tuple[str, tuple[str, ...], Any]) -> str:
    return " ".join((case[0], *case[1]))


@pytest.mark.parametrize("case", _every_command(), ids=_id)
def test_every_command_takes_the_shared_options_with_their_variables(
    case: tuple[str, tuple[str, ...], Any],
) -> None:
    module, path, command = case
    options = {opt: param for param in command.params for opt in param.opts}
    for option, envvar in (("--data-root", "FTI_DATA_ROOT"), ("--log-level", "FTI_LOG_LEVEL")):
        assert option in options, f"python -m {module} {' '.join(path)} has no {option}"
        assert options[option].envvar == envvar
        assert options[option].show_envvar


@pytest.mark.parametrize("case", _every_command(), ids=_id)
def test_every_option_says_what_it_is(case: tuple[str, tuple[str, ...], Any]) -> None:
    module, path, command = case
    silent = [
        "/".join(param.opts)
        for param in command.params
        if param.param_type_name == "option" and not (param.help or "").strip()
    ]
    assert not silent, f"python -m {module} {' '.join(path)}: no help text on {silent}"


@pytest.mark.parametrize("module", CLIS)
def test_help_shows_the_variables_and_defaults(module: str) -> None:
    app = _app(module)
    for path, _ in _commands(typer.main.get_command(app)):
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        for text in ("--data-root", "FTI_DATA_ROOT", "(data)", "--log-level", "FTI_LOG_LEVEL"):
            assert text in shown.output, f"{module} {' '.join(path)} --help lacks {text}"


def test_monitoring_is_a_command_of_the_inference_cli() -> None:
    listed = CliRunner().invoke(_app("inference_pipeline"), ["--help"], env={"COLUMNS": "200"})
    assert "monitor" in listed.output
    for module, args in (
        ("inference_pipeline", ["monitor", "run", "--help"]),
        ("inference_pipeline.monitor", ["run", "--help"]),  # the old entry point, kept
    ):
        shown = CliRunner().invoke(_app(module), args, env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "--window-days" in shown.output, shown.output


# -- one line, exit 2 -------------------------------------------------------------------------

demo = CommandLine()


@demo.callback()
def _group() -> None:
    """A group, as the pipelines' CLIs are."""


class DemoSettings(FeatureStoreSettings):
    pass


@demo.command()
def ingest(
    day: Annotated[str, typer.Option("--date", help="the day")],
    timeout: Annotated[
        float | None, setting_option(FeatureStoreSettings, "online_timeout_s", "--timeout")
    ] = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Demo command."""
    settings = build_settings(
        DemoSettings, {"online_timeout_s": "--timeout"}, online_timeout_s=timeout
    )
    typer.echo(f"{day} {settings.online_timeout_s} {log_level.value}")


def _run(monkeypatch: pytest.MonkeyPatch, capsys: Any, *args: str, **env: str) -> tuple[int, str]:
    for name in [n for n in os.environ if n.startswith("FTI_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        demo(args=list(args), prog_name="demo")
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.err + captured.out


CASES = {
    "unknown option": (
        ["ingest", "--date", "d", "--bogus"], {},
        "error: no such option: --bogus (see 'demo ingest --help')",
    ),
    "missing option": (["ingest"], {}, "error: missing option '--date' (see 'demo ingest --help')"),
    "unknown command": (
        ["ingestt"], {},
        "error: no such command 'ingestt'. Did you mean 'ingest'? (see 'demo --help')",
    ),
    "bad value on the command line": (
        ["ingest", "--date", "d", "--timeout", "soon"], {},
        "error: invalid setting --timeout (env FTI_ONLINE_TIMEOUT_S): must be a valid number, "
        "unable to parse string as a number. Fix the option or the environment variable "
        "(--help lists each with its default).",
    ),
    "bad value in the environment": (
        ["ingest", "--date", "d"], {"FTI_ONLINE_TIMEOUT_S": "soon"},
        "error: invalid setting --timeout (env FTI_ONLINE_TIMEOUT_S): got 'soon', must be a valid "
        "number, unable to parse string as a number. Fix the option or the environment variable "
        "(--help lists each with its default).",
    ),
    "value the settings refuse": (
        ["ingest", "--date", "d", "--timeout", "-1"], {},
        "error: invalid setting --timeout (env FTI_ONLINE_TIMEOUT_S): got -1.0, must be greater "
        "than 0. Fix the option or the environment variable (--help lists each with its "
        "default).",
    ),
    "bad log level": (
        ["ingest", "--date", "d"], {"FTI_LOG_LEVEL": "loud"},
        "error: invalid setting --log-level (env FTI_LOG_LEVEL): got 'loud', 'loud' is not one "
        "of 'debug', 'info', 'warning', 'error'. Fix the option or the environment variable "
        "(--help lists each with its default).",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_command_line_is_one_line_and_exit_2(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    args, env, expected = CASES[case]
    code, output = _run(monkeypatch, capsys, *args, **env)
    assert code == 2
    assert output.strip() == expected


def test_a_good_command_line_runs_with_the_environment_and_the_options(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, output = _run(
        monkeypatch, capsys, "ingest", "--date", "d", FTI_ONLINE_TIMEOUT_S="3", FTI_LOG_LEVEL="info"
    )
    assert (code, output.strip()) == (0, "d 3.0 INFO")
    code, output = _run(monkeypatch, capsys, "ingest", "--date", "d", "--timeout", "4")
    assert (code, output.strip()) == (0, "d 4.0 WARNING")


def test_a_real_cli_refuses_a_bad_date_in_one_line() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    result = subprocess.run(
        [sys.executable, "-m", "feature_pipeline", "run", "--date", "2013-02-30"],
        capture_output=True, text=True, cwd=ROOT, env=clean, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --date '2013-02-30' is not a date; use YYYY-MM-DD "
        "(see 'python -m feature_pipeline run --help')"
    )
