"""One readable line for settings that fail validation, used at every CLI's edge.

pydantic's own message ("1 validation error for FeaturePipelineSettings", then the field, then
"Input should be ... [type=..., input_value=...]" and a URL) spans lines and names the settings
class, not what the operator typed. Operators give settings as a CLI option or an ``FTI_*``
environment variable (or a key of a config file), so the line names those, the value given,
what it must be, and what to do:

    invalid setting --max-bad-share (env FTI_MAX_BAD_SHARE): got 2.0, must be less than or
    equal to 1. Fix the option or the environment variable (--help lists each with its default).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

FIX_SETTING = "Fix the option or the environment variable (--help lists each with its default)."
_MESSAGE_BY_TYPE = {
    "missing": "is required",
    "extra_forbidden": "is not a known setting",
}
_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([^"]+)"')


def invalid_settings_line(
    exc: ValidationError | SettingsError,
    *,
    flags: Mapping[str, str] | None = None,
    env_prefix: str | None = "FTI_",
    where: str | None = None,
    advice: str = FIX_SETTING,
) -> str:
    """``exc`` as one line. ``flags`` maps a field to the CLI option that sets it; ``env_prefix``
    names its environment variable (None: not an environment setting); ``where`` says where
    nested keys come from ("the config file x.toml")."""
    problems = setting_problems(exc, flags=flags, env_prefix=env_prefix, where=where)
    head = "invalid setting" if len(problems) == 1 else f"{len(problems)} invalid settings:"
    return f"{head} {'; '.join(problems)}. {advice}".strip()


def setting_problems(
    exc: ValidationError | SettingsError,
    *,
    flags: Mapping[str, str] | None = None,
    env_prefix: str | None = "FTI_",
    where: str | None = None,
) -> list[str]:
    """One "<setting>: got <value>, must be <rule>" per error."""
    if isinstance(exc, SettingsError):  # an FTI_* value that is not the JSON its type needs
        found = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        name = found.group(1) if found else "a setting"
        return [f"{_name((name,), flags or {}, env_prefix, where)}: is not valid JSON for it"]
    return [_problem(error, flags or {}, env_prefix, where) for error in exc.errors()]


def _problem(
    error: Mapping[str, Any], flags: Mapping[str, str], env_prefix: str | None, where: str | None
) -> str:
    loc = tuple(str(part) for part in error.get("loc", ()))
    rule = _MESSAGE_BY_TYPE.get(str(error.get("type"))) or rule_text(str(error["msg"]))
    given = _given(error.get("input"))
    said = f"got {given}, {rule}" if given is not None else rule
    name = _name(loc, flags, env_prefix, where)
    return f"{name}: {said}" if name else said


def _name(
    loc: tuple[str, ...], flags: Mapping[str, str], env_prefix: str | None, where: str | None
) -> str | None:
    """The option and variable (or key) that set the value; None for a whole model's check."""
    if not loc:
        return where
    dotted = ".".join(loc)
    env = f"{env_prefix}{loc[0].upper()}" if env_prefix is not None and len(loc) == 1 else None
    flag = flags.get(dotted) or flags.get(loc[0])
    if flag:
        return f"{flag} (env {env})" if env else flag
    if env:
        return env
    return f"{dotted} in {where}" if where else dotted


def rule_text(message: str) -> str:
    """pydantic's (and Typer's, which parses with pydantic) "Input should be x" -> "must be x";
    validators' own text without its prefix."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if message.startswith("Input should "):
        return "must " + message.removeprefix("Input should ")
    return message[:1].lower() + message[1:]


def _given(value: object) -> str | None:
    """The value as the operator typed it; None for whole objects (a model's own check)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool | int | float | Path):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return None
