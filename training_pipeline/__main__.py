"""``python -m training_pipeline``: train, retrain (continuous training), promote, rollback.

Commands are thin: they build the settings and the config, call plain functions of
:mod:`training_pipeline.pipeline` / :mod:`shared.registry`, and translate typed errors into one
readable line and an exit code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shared.command_line import (
    CommandLine,
    DataRootOption,
    LogLevel,
    LogLevelOption,
    build_settings,
    configure_logging,
    setting_option,
)
from shared.errors import ConfigurationError, FTIError, GateFailed
from shared.promotion import Promotion, promote_if_eligible
from shared.registry import ModelRegistry
from shared.setting_errors import invalid_settings_line
from training_pipeline.config import (
    RecentWindows,
    TrainingConfig,
    TrainingSettings,
    TuningSettings,
    Window,
)
from training_pipeline.model_versions import METRICS, VersionRow, version_rows

if TYPE_CHECKING:  # torch & co. load only when a command trains, so promote/rollback are quick
    from training_pipeline.loop import EpochRecord
    from training_pipeline.pipeline import TrainingOutcome
    from training_pipeline.tuning import StudyOutcome

app = CommandLine(
    help="Training pipeline: feature view -> model -> validation -> registry.",
    no_args_is_help=True,
)
console = Console(stderr=True)

EXIT_CODES: dict[type[FTIError], int] = {ConfigurationError: 2, GateFailed: 3}
_RECENT = RecentWindows()  # the defaults of `retrain`'s window lengths


@contextmanager
def _errors_as_exit() -> Iterator[None]:
    """Typed errors -> one readable line on stderr + an exit code (never a stack trace)."""
    try:
        yield
    except FTIError as exc:
        code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code) from exc
    except (ValidationError, SettingsError) as exc:  # FTI_* settings of the environment
        typer.echo(f"error: {invalid_settings_line(exc)}", err=True)
        raise typer.Exit(2) from exc


def _settings(data_root: Path | None) -> TrainingSettings:
    return build_settings(TrainingSettings, data_root=data_root)


# The config keys each training option overrides (named in error lines).
OPTION_KEYS = {
    "optim.epochs": "--epochs",
    "seed": "--seed",
    "lead_minutes": "--lead-minutes",
    "windows.train": "--train",
    "windows.validation": "--validation",
    "windows.test": "--test",
    "windows": "--train/--validation/--test",
}


class TuneTarget(StrEnum):  # training_pipeline.tuning.SearchTarget, without importing Optuna
    network = "network"
    baseline = "baseline"


# --lead-minutes, else FTI_LEAD_MINUTES (read by the option), else the config's lead_minutes.
LeadMinutes = Annotated[int | None, setting_option(TrainingSettings, "lead_minutes")]


def _window(flag: str, value: str | None) -> Window | None:
    if value is None:
        return None
    try:
        return Window.parse(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{flag}: {exc}") from exc


def build_config(
    config_file: Path | None,
    *,
    epochs: int | None = None,
    train: str | None = None,
    validation: str | None = None,
    test: str | None = None,
    seed: int | None = None,
    lead_minutes: int | None = None,
) -> TrainingConfig:
    base = TrainingConfig.from_file(config_file) if config_file else TrainingConfig()
    return base.with_overrides(
        OPTION_KEYS,
        **{
            "optim.epochs": epochs,
            "seed": seed,
            "lead_minutes": lead_minutes,
            "windows.train": _window("--train", train),
            "windows.validation": _window("--validation", validation),
            "windows.test": _window("--test", test),
        },
    )


def _summary_table(outcome: TrainingOutcome) -> Table:
    table = Table(
        title=f"model version {outcome.version} (run {outcome.run_id[:8]}), "
        f"lead {outcome.lead_minutes} min",
        caption=_alias_line(outcome),
    )
    table.add_column("test window metric")
    table.add_column("network", justify="right")
    table.add_column("boosted trees", justify="right")
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "base_rate", "rows"):
        base = outcome.baseline[key] if outcome.baseline else float("nan")
        table.add_row(key, f"{outcome.network[key]:.4f}", f"{base:.4f}")
    return table


def _alias_line(outcome: TrainingOutcome) -> str:
    if outcome.promoted:
        return f"champion -> v{outcome.version}: {outcome.decision.summary()}"
    champion = f"champion unchanged (v{outcome.champion_before or ' none'})"
    if not outcome.decision.passed:
        return f"challenger v{outcome.version}, refused by the gates; {champion}"
    return f"challenger v{outcome.version}, gate-eligible for promotion; {champion}"


def _progress_hook(progress: Progress, total: int) -> Callable[[EpochRecord], None]:
    task = progress.add_task("training", total=total)

    def advance(record: EpochRecord) -> None:
        progress.update(
            task,
            completed=record.epoch,
            description=f"epoch {record.epoch} val auc {record.val_roc_auc:.4f}",
        )

    return advance


@app.command()
def train(
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML or JSON training config")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    train_window: Annotated[
        str | None, typer.Option("--train", help="START:END local dates, END exclusive")
    ] = None,
    validation_window: Annotated[
        str | None,
        typer.Option("--validation", help="START:END of early stopping's window, END exclusive"),
    ] = None,
    test_window: Annotated[
        str | None, typer.Option("--test", help="START:END of the gates' window, END exclusive")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the config's)")] = None,
    lead_minutes: LeadMinutes = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the last checkpoint")
    ] = False,
    promote: Annotated[
        Promotion,
        typer.Option(
            "--promote",
            help="if-gates-pass: a passing version becomes champion; never: challenger only "
            "(continuous training), the gate decision is recorded on the version",
        ),
    ] = Promotion.if_gates_pass,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Train on the feature view, validate on the test window, register (and maybe promote).

    Defaults to the full 2013 year: train Jan-Sep, validate Oct, test Nov-Dec.
    Exit 3 when the gates refuse the version (registered as challenger, champion unchanged).
    """
    configure_logging(log_level)
    with _errors_as_exit():
        config = build_config(
            config_file,
            epochs=epochs,
            train=train_window,
            validation=validation_window,
            test=test_window,
            seed=seed,
            lead_minutes=lead_minutes,
        )
        _train_and_report(config, _settings(data_root), promotion=promote, resume=resume)


@app.command()
def retrain(
    until: Annotated[
        str,
        typer.Option(
            help="last local date whose outcomes are known (inclusive): the newest window ends "
            "with it",
        ),
    ],
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML or JSON training config")
    ] = None,
    train_days: Annotated[int, typer.Option(help="days of training data")] = _RECENT.train_days,
    validation_days: Annotated[
        int, typer.Option(help="days of early stopping's window, before the test days")
    ] = _RECENT.validation_days,
    test_days: Annotated[int, typer.Option(help="the gates' window")] = _RECENT.test_days,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: the config's)")] = None,
    lead_minutes: LeadMinutes = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Continuous training: train on the newest window, register as challenger only.

    Windows run backwards from --until: test = the last --test-days, validation the
    --validation-days before, train the --train-days before that. The gates decide whether the
    version is eligible for promotion (recorded as tags); champion is never moved here.
    Exit 3 when the gates refuse it.
    """
    configure_logging(log_level)
    with _errors_as_exit():
        try:
            last_day = date.fromisoformat(until)
        except ValueError as exc:
            raise ConfigurationError(f"--until {until!r} is not a YYYY-MM-DD date") from exc
        try:
            recent = RecentWindows(
                train_days=train_days, validation_days=validation_days, test_days=test_days
            )
        except ValidationError as exc:
            flags = {f"{n}_days": f"--{n}-days" for n in ("train", "validation", "test")}
            raise ConfigurationError(
                invalid_settings_line(exc, flags=flags, env_prefix=None, advice="")
            ) from exc
        windows = recent.ending(last_day)
        config = build_config(
            config_file, epochs=epochs, seed=seed, lead_minutes=lead_minutes
        ).with_overrides(OPTION_KEYS, windows=windows)
        _train_and_report(config, _settings(data_root), promotion=Promotion.never)


def _train_and_report(
    config: TrainingConfig,
    settings: TrainingSettings,
    *,
    promotion: Promotion,
    resume: bool = False,
) -> None:
    from training_pipeline.pipeline import raise_if_refused, run_training

    with Progress(console=console, transient=True) as progress:
        outcome = run_training(
            settings,
            config,
            resume=resume,
            on_epoch_end=_progress_hook(progress, config.optim.epochs),
            promotion=promotion,
        )
    if outcome is None:  # a non-zero rank of a torchrun job: rank 0 reports
        return
    Console().print(_summary_table(outcome))
    print(json.dumps(outcome.summary(), default=_jsonable, sort_keys=True))
    raise_if_refused(outcome)


def _jsonable(value: Any) -> Any:
    return str(value)


@app.command()
def tune(
    trials: Annotated[
        int,
        typer.Option(
            min=1,
            help="finished (complete or pruned) trials the study should hold, over all its "
            "workers; this worker stops when it does",
        ),
    ],
    timeout: Annotated[
        float | None,
        typer.Option(min=1, help="seconds after which this worker starts no new trial"),
    ] = None,
    storage: Annotated[
        str | None, setting_option(TuningSettings, "tuning_storage", "--storage")
    ] = None,
    study: Annotated[str | None, setting_option(TuningSettings, "tuning_study", "--study")] = None,
    model: Annotated[
        TuneTarget,
        typer.Option(
            "--model",
            help="what to search: the network (width, depth, dropout, embedding size, learning "
            "rate, weight decay, batch size) or the boosted-trees baseline",
        ),
    ] = TuneTarget.network,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="base TOML or JSON training config the search varies"),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs of each trial")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="where to write the best configuration (a `train --config` file); default "
            "<data_root>/tuning/<study>.json"
        ),
    ] = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Hyperparameter search with Optuna, every trial a nested MLflow run; writes the best
    configuration as a training config file for `train --config`.

    Trials train on the training window and are scored by their validation ROC AUC; the test
    window is never read. Start several workers with the same --storage and --study to search
    in parallel. Exit 1 when the study ends without a completed trial.
    """
    configure_logging(log_level)
    with _errors_as_exit():
        settings = build_settings(
            TuningSettings,
            {"tuning_storage": "--storage", "tuning_study": "--study"},
            data_root=data_root,
            tuning_storage=storage,
            tuning_study=study,
        )
        base = build_config(config_file, epochs=epochs)
        from training_pipeline.tuning import SearchTarget, run_study

        outcome = run_study(
            settings,
            base,
            trials=trials,
            timeout=timeout,
            target=SearchTarget(model.value),
            output=output,
        )
    Console(stderr=True).print(_study_table(outcome))
    print(json.dumps(outcome.summary(), default=_jsonable, sort_keys=True))


def _study_table(outcome: StudyOutcome) -> Table:
    table = Table(
        title=f"study {outcome.study} ({outcome.target.value}), best trial "
        f"{outcome.best_trial}: validation ROC AUC {outcome.best_value:.4f}",
        caption=f"best configuration -> {outcome.config_file}; MLflow run "
        f"{outcome.mlflow_run_id[:8]}",
    )
    table.add_column("parameter")
    table.add_column("best value", justify="right")
    for name, value in sorted(outcome.best_params.items()):
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    states = ", ".join(f"{n.lower()} {c}" for n, c in sorted(outcome.states.items()))
    table.add_row("trials", f"{states}; this worker {outcome.worker_trials}")
    return table


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="version number or alias, e.g. challenger")],
    require_eligible: Annotated[
        bool,
        typer.Option(
            "--require-eligible",
            help="refuse (exit 3) a version whose gates failed or were never recorded",
        ),
    ] = False,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Point the ``champion`` alias at VERSION (explicitly; without gates unless asked)."""
    configure_logging(log_level)
    with _errors_as_exit():
        registry = ModelRegistry(_settings(data_root).registry_settings())
        if require_eligible:
            moved = promote_if_eligible(registry, version, "promoted by an operator (eligible)")
        else:
            moved = registry.promote(registry.resolve(version).version)
        print(f"champion -> {moved.name} version {moved.version}")


@app.command()
def models(
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="show only the newest N versions")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per version on stdout, not a table")
    ] = False,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """List the registered versions, newest first: aliases, the gates' decision, prediction
    lead, test metrics and the training run."""
    configure_logging(log_level)
    with _errors_as_exit():
        settings = _settings(data_root)
        rows = version_rows(ModelRegistry(settings.registry_settings()))[:limit]
    if as_json:
        for row in rows:
            print(json.dumps(row.to_json(), sort_keys=True))
        return
    if not rows:
        console.print(f"no versions of {settings.model_name} registered at {settings.tracking_uri}")
        return
    Console().print(_versions_table(settings.model_name, rows))


def _versions_table(name: str, rows: list[VersionRow]) -> Table:
    table = Table(title=f"registered versions of {name} (test-window metrics)")
    for column in ("version", "aliases", "registered (UTC)", "gates", "lead (min)"):
        table.add_column(column)
    for metric in METRICS:
        table.add_column(metric.replace("_", " "), justify="right")
    table.add_column("run")
    table.add_column("gates' reasons", overflow="fold")
    for row in rows:
        table.add_row(
            row.version,
            ", ".join(row.aliases) or "-",
            "-" if row.registered is None else row.registered.strftime("%Y-%m-%d %H:%M"),
            row.gates,
            "-" if row.lead_minutes is None else str(row.lead_minutes),
            *(f"{row.metrics[m]:.4f}" if m in row.metrics else "-" for m in METRICS),
            row.run_id[:8],
            row.gates_summary,
        )
    return table


@app.command()
def rollback(
    data_root: DataRootOption = None, log_level: LogLevelOption = LogLevel.warning
) -> None:
    """Move ``champion`` back to the version that held it before."""
    configure_logging(log_level)
    with _errors_as_exit():
        registry = ModelRegistry(_settings(data_root).registry_settings())
        moved = registry.rollback()
        print(f"champion -> {moved.name} version {moved.version}")


if __name__ == "__main__":
    app()
