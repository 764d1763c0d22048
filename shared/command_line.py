"""What every command line of the project shares: the common options, options backed by a
setting, and errors as one line.

Each pipeline's ``__main__`` is a :class:`CommandLine` (a ``typer.Typer``), and every command
takes the shared options the same way, so an operator learns them once::

    from shared.command_line import (
        CommandLine, DataRootOption, LogLevel, LogLevelOption, build_settings,
        configure_logging, setting_option,
    )

    app = CommandLine(help="My pipeline: what it does.")
    MaxBad = Annotated[float | None, setting_option(MySettings, "max_bad_share")]

    @app.command()
    def run(
        max_bad_share: MaxBad = None,
        data_root: DataRootOption = None,
        log_level: LogLevelOption = LogLevel.warning,
    ) -> None:
        \"\"\"One line for the command list.\"\"\"
        configure_logging(log_level)
        settings = build_settings(MySettings, data_root=data_root, max_bad_share=max_bad_share)

- ``--data-root`` (``FTI_DATA_ROOT``) and ``--log-level`` (``FTI_LOG_LEVEL``) on every command.
- An option that sets a field of a settings class comes from :func:`setting_option`: its
  environment variable, default and help text are the field's, so ``--help``, the settings and
  ``docs/configuration.md`` (generated from the settings classes) say the same thing.
- :func:`build_settings` builds the settings from the environment and the options given (None:
  not given); a bad value is ONE line naming the option and its variable, exit 2
  (:mod:`shared.setting_errors`).
- :class:`CommandLine` turns Click's own usage errors (unknown option, missing option, a value
  that does not parse) into one ``error:`` line and exit 2 too, instead of a multi-line box.
  Only when the app is called as a program (``app()``: ``python -m``, console scripts); Typer's
  ``CliRunner`` calls the Click command directly and sees Click's own behaviour.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsError

from shared.errors import FTIError
from shared.setting_errors import FIX_SETTING, invalid_settings_line, rule_text
from shared.settings import CommonSettings, LogLevel

try:  # Typer vendors its own Click (typer._click) in recent releases; older releases use click
    from typer._click import exceptions as click_errors
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef,unused-ignore]
    from click.core import ParameterSource  # type: ignore[no-redef,assignment,unused-ignore]

__all__ = [
    "CommandLine",
    "DataRootOption",
    "LogLevel",
    "LogLevelOption",
    "build_settings",
    "configure_logging",
    "fail",
    "setting_option",
]

S = TypeVar("S", bound=BaseSettings)

EXIT_USAGE = 2  # bad command line or setting, in every CLI of the project


class CommandLine(typer.Typer):
    """A Typer app whose bad command lines are one ``error:`` line and exit 2.

    Tracebacks of unexpected errors stay plain Python ones (no locals: they may hold secrets).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("add_completion", False)
        kwargs.setdefault("pretty_exceptions_enable", False)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        super().__init__(**kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode", True) is False:
            return super().__call__(*args, **kwargs)
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as exc:  # the help is the answer; Click exits 2
            if exc.format_message().strip():
                typer.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            typer.echo(f"error: {usage_error_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_error_line(exc: Exception) -> str:
    """Click's complaint about a command line as one line: the option and its variable (when
    it has one), the value when it came from the environment, what it must be, and where to
    look."""
    param = getattr(exc, "param", None)
    ctx = getattr(exc, "ctx", None)
    help_hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(str(getattr(exc, "message", exc)).split()).rstrip(".")
    if not isinstance(exc, click_errors.BadParameter):  # no such option, missing command, ...
        return f"{_first_lower(_click_message(exc))}{help_hint}"
    if isinstance(exc, click_errors.MissingParameter) or param is None:
        return f"{_first_lower(_click_message(exc).removeprefix('Invalid value: '))}{help_hint}"
    option = "/".join(param.opts)
    envvar = getattr(param, "envvar", None)
    rule = rule_text(message)
    if not isinstance(envvar, str):
        return f"invalid value for {option}: {rule}{help_hint}"
    from_env = (
        ctx is not None and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    )
    given = f"got {os.environ.get(envvar, '')!r}, " if from_env else ""
    return f"invalid setting {option} (env {envvar}): {given}{rule}. {FIX_SETTING}"


def _click_message(exc: Exception) -> str:
    format_message = getattr(exc, "format_message", None)
    text = str(format_message() if callable(format_message) else exc)
    return " ".join(text.split()).rstrip(".")


def _first_lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def fail(message: str, code: int = 1) -> NoReturn:
    """One ``error:`` line on stderr (never wrapped, no markup), then exit ``code``."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


# -- options --------------------------------------------------------------------------------


def default_text(field: FieldInfo) -> str | bool:
    """A field's default as ``--help`` and the configuration reference show it (False: none)."""
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        return str(made) if made or made == 0 else False
    value = field.default
    if value is None or value is PydanticUndefined:
        return False
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def setting_option(settings: type[BaseModel], field: str, *names: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` that sets ``settings.field``: named ``--field-name`` unless ``names``
    are given, read from the field's environment variable, its default and description shown
    (``kwargs`` pass through, e.g. ``help=`` to say more than the field's description)."""
    info = settings.model_fields[field]
    prefix = str(settings.model_config.get("env_prefix", ""))
    kwargs.setdefault("help", info.description)
    kwargs.setdefault("show_default", default_text(info))
    return typer.Option(
        *(names or ("--" + field.replace("_", "-"),)),
        envvar=f"{prefix}{field}".upper(),
        show_envvar=True,
        **kwargs,
    )


DataRootOption = Annotated[Path | None, setting_option(CommonSettings, "data_root")]
LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        envvar="FTI_LOG_LEVEL",
        show_envvar=True,
        case_sensitive=False,
        help="how much to log on stderr",
    ),
]


def configure_logging(level: LogLevel | str, fmt: str | None = None) -> None:
    """Configure the root logger once, at the entry point. MLflow installs its own INFO handler
    (schema migrations, uploads): it follows the level given, never louder than WARNING unless
    asked for DEBUG or INFO."""
    name = str(level.value if isinstance(level, LogLevel) else level).upper()
    logging.basicConfig(level=name, format=fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(name)


# -- settings -------------------------------------------------------------------------------


def build_settings(
    settings: type[S], flags: Mapping[str, str] | None = None, /, **options: object
) -> S:
    """``settings`` from the environment and the options given (None: not given; an option
    never given keeps the environment's value or the default). ``flags`` names the option of a
    field where it is not ``--field-name`` (``{"model_alias": "--model"}``). A bad value is one
    line naming the option and its variable, exit 2."""
    given: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    named = {name: "--" + name.replace("_", "-") for name in options} | dict(flags or {})
    try:
        return settings(**given)
    except (ValidationError, SettingsError) as exc:
        fail(invalid_settings_line(exc, flags=named), EXIT_USAGE)
    except FTIError as exc:  # a settings class's own consistency check
        fail(f"invalid settings: {exc}", EXIT_USAGE)
