"""Write ``docs/configuration.md``: every setting of the system, from the settings classes.

    python -m scripts.configuration_reference           # rewrite docs/configuration.md
    python -m scripts.configuration_reference --check   # exit 1 when it is not current

The reference is generated, never edited by hand: each field of a settings class is one row
(its environment variable, the command-line option that sets it, its type, default and
description), and each option comes from the CLIs themselves, so the document, ``--help`` and
the code cannot disagree. ``tests/unit/test_configuration_reference.py`` regenerates it and
compares, and fails when a settings class is missing here or a variable is declared twice.
It lives in ``scripts/``, the one place allowed to import all three pipelines.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from feature_pipeline.settings import FeaturePipelineSettings
from feature_pipeline.stream.settings import StreamSettings
from inference_pipeline.monitor.settings import MonitorSettings
from inference_pipeline.settings import InferenceSettings
from orchestration.settings import DagSettings
from scripts.year_replay.settings import ReplaySettings
from shared.command_line import default_text
from shared.promotion import ShadowRuleSettings
from shared.registry import RegistrySettings
from shared.settings import CommonSettings, FeatureStoreSettings, PredictionTimeSettings
from training_pipeline.config import TrainingSettings, TuningSettings

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"(?<!`)(<[A-Za-z_][^<>`]*>[\w/.*-]*)")
REFERENCE = ROOT / "docs" / "configuration.md"

# Every CLI whose options the reference names: `python -m <module>` -> the module of its app.
CLIS = {
    "feature_pipeline": "feature_pipeline.__main__",
    "training_pipeline": "training_pipeline.__main__",
    "inference_pipeline": "inference_pipeline.__main__",
    "orchestration": "orchestration.__main__",
}


@dataclass(frozen=True)
class Section:
    title: str
    settings: type[BaseSettings]
    read_by: str


SECTIONS = (
    Section(
        "Every command",
        CommonSettings,
        "every CLI: `--data-root` and `--log-level` on every command",
    ),
    Section(
        "Feature store",
        FeatureStoreSettings,
        "every pipeline (feature, training, online service, batch, monitoring, replay)",
    ),
    Section(
        "Model registry",
        RegistrySettings,
        "training, the online service, the batch job, monitoring, the replay",
    ),
    Section(
        "Prediction time",
        PredictionTimeSettings,
        "training (`python -m training_pipeline train`, `retrain`) and the batch job "
        "(`python -m inference_pipeline batch`): T = scheduled departure - lead",
    ),
    Section(
        "Feature pipeline",
        FeaturePipelineSettings,
        "`python -m feature_pipeline` (plus the feature store's)",
    ),
    Section(
        "Streaming feature pipeline",
        StreamSettings,
        "`python -m feature_pipeline stream | replay-events` (plus the feature pipeline's); "
        "see docs/streaming.md",
    ),
    Section(
        "Training pipeline",
        TrainingSettings,
        "`python -m training_pipeline` (plus the feature store's and the registry's); the "
        "training itself (windows, model, optimiser, gates) is the config file of `--config`, "
        "see docs/training.md",
    ),
    Section(
        "Hyperparameter search",
        TuningSettings,
        "`python -m training_pipeline tune` (plus the training pipeline's); see docs/training.md",
    ),
    Section(
        "Online service, batch job and Triton",
        InferenceSettings,
        "`python -m inference_pipeline serve | batch | triton` (plus the feature store's and the "
        "registry's)",
    ),
    Section(
        "Monitoring",
        MonitorSettings,
        "`python -m inference_pipeline monitor` (plus the feature store's and the registry's)",
    ),
    Section(
        "Shadow decision",
        ShadowRuleSettings,
        "`python -m inference_pipeline monitor shadow` and `monitor run` (its report), and the "
        "year replay: the one rule by which a shadowed challenger replaces the champion",
    ),
    Section(
        "Year replay",
        ReplaySettings,
        "`python scripts/replay_2013.py` (plus the feature store's and the registry's; its "
        "retraining triggers are the monitoring's)",
    ),
    Section(
        "Daily DAG",
        DagSettings,
        "`dagster` and `python -m orchestration` (the tasks' own CLIs read their own settings)",
    ),
)

INTRO = """\
# Configuration reference

<!-- Generated by `python -m scripts.configuration_reference` from the settings classes and the
CLIs; do not edit by hand (tests/unit/test_configuration_reference.py checks it is current). -->

One story for every part of the system:

- **Every setting is an environment variable** `FTI_<NAME>` (the daily DAG's: `FTI_DAG_<NAME>`),
  read by a typed pydantic-settings class when a command starts. Values that are objects or
  lists are JSON (`FTI_STORAGE_OPTIONS='{"AWS_REGION": "us-east-1"}'`).
- **Some also have a command-line option**, which wins over the variable. `--help` of every
  command shows each option's variable and default.
- **Every command takes `--data-root` and `--log-level`** (`FTI_DATA_ROOT`, `FTI_LOG_LEVEL`).
  Everything a pipeline keeps locally lives under the data root unless its own setting moves it.
- **Each pipeline reads** the settings of every command, of the feature store, of the model
  registry where it uses one, and its own: a variable means the same thing in every pipeline.
- **A bad value stops the command before it does anything**: one line naming the option and its
  variable, the value given and what it must be, exit code 2.

| section | read by |
|---|---|
"""


def own_fields(settings: type[BaseSettings]) -> Iterator[tuple[str, FieldInfo]]:
    """The fields ``settings`` declares itself (a field it redeclares included)."""
    declared = inspect.get_annotations(settings)
    for name, info in settings.model_fields.items():
        if name in declared:
            yield name, info


def variable(settings: type[BaseSettings], name: str) -> str:
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def options_by_variable() -> dict[str, list[str]]:
    """``FTI_X`` -> the options that set it, over every command of every CLI."""
    found: dict[str, set[str]] = {}
    for module in CLIS.values():
        app = importlib.import_module(module).app
        for command in _leaves(typer.main.get_command(app)):
            for param in command.params:
                if isinstance(param.envvar, str):
                    found.setdefault(param.envvar, set()).update(param.opts)
    return {name: sorted(opts) for name, opts in found.items()}


def _leaves(command: Any) -> Iterator[Any]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield command
        return
    for sub in subcommands.values():
        yield from _leaves(sub)


def kind(info: FieldInfo) -> str:
    """The value a field takes, as an operator types it: ``number > 0``, `` `a` | `b` ``."""
    annotation = info.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, Enum):
        return " | ".join(f"`{member.value}`" for member in origin)
    names = {
        bool: "true/false",
        int: "integer",
        float: "number",
        str: "text",
        Path: "path",
        SecretStr: "secret",
        dict: "JSON object",
        list: "JSON list",
        date: "date",
    }
    text = names.get(origin, getattr(origin, "__name__", str(origin)))
    bounds = []
    for rule in info.metadata:
        for cls, attribute, sign in (
            (Ge, "ge", ">="),
            (Gt, "gt", ">"),
            (Le, "le", "<="),
            (Lt, "lt", "<"),
        ):
            if isinstance(rule, cls):
                bounds.append(f"{sign} {getattr(rule, attribute)}")
        if isinstance(rule, MinLen) and rule.min_length:
            bounds.append("not empty")
        if isinstance(rule, MaxLen):
            bounds.append(f"at most {rule.max_length} long")
        if getattr(rule, "pattern", None):
            bounds.append(f"matching `{rule.pattern}`")
    return f"{text} {', '.join(bounds)}" if bounds else text


def shown_default(info: FieldInfo) -> str:
    if info.default == sys.executable:  # a default that is the machine's, not the system's
        return "the running Python"
    text = default_text(info)
    return "-" if text is False else f"`{text}`"


def cell(text: str) -> str:
    """Text in a Markdown table cell: ``<placeholders>`` as code (not HTML tags), no column
    breaks."""
    text = PLACEHOLDER.sub(r"`\1`", " ".join(text.split()))
    return text.replace("|", "\\|")


def render() -> str:
    """The whole reference; raises when one variable is declared by two classes."""
    options = options_by_variable()
    declared: dict[str, str] = {}
    lines = [INTRO.rstrip("\n")]
    for section in SECTIONS:
        anchor = section.title.lower().replace(" ", "-").replace(",", "")
        lines.append(f"| [{section.title}](#{anchor}) | {section.read_by} |")
    for section in SECTIONS:
        settings = section.settings
        lines += [
            "",
            f"## {section.title}",
            "",
            f"`{settings.__module__}.{settings.__qualname__}`; read by {section.read_by}.",
            "",
            "| variable | option | type | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for name, info in own_fields(settings):
            env = variable(settings, name)
            if env in declared:
                raise ValueError(f"{env} is declared by {declared[env]} and {settings.__name__}")
            declared[env] = settings.__name__
            flags = ", ".join(f"`{flag}`" for flag in options.get(env, [])) or "-"
            lines.append(
                f"| `{env}` | {flags} | {cell(kind(info))} | {shown_default(info)} | "
                f"{cell(info.description or '')} |"
            )
    lines.append("")  # no total line: two branches adding settings would both change it
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = REFERENCE.read_text() if REFERENCE.exists() else ""
        if current != text:
            sys.stderr.write(
                f"error: {REFERENCE.relative_to(ROOT)} is not current: run "
                "python -m scripts.configuration_reference\n"
            )
            return 1
        return 0
    REFERENCE.write_text(text)
    sys.stdout.write(f"wrote {REFERENCE.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
