"""``python -m training_pipeline``: train, retrain (continuous training), promote, rollback.

Commands are thin: they build the settings and the config, call plain functions of
:mod:`training_pipeline.pipeline` / :mod:`shared.registry`, and translate typed errors into one
readable line and an exit code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shared.errors import ConfigurationError, FTIError, GateFailed
from shared.promotion import Promotion, promote_if_eligible
from shared.registry import ModelRegistry
from training_pipeline.config import RecentWindows, TrainingConfig, TrainingSettings, Window
from training_pipeline.model_versions import METRICS, VersionRow, version_rows

if TYPE_CHECKING:  # torch & co. load only when a command trains, so promote/rollback are quick
    from training_pipeline.loop import EpochRecord
    from training_pipeline.pipeline import TrainingOutcome

app = typer.Typer(help="Training pipeline: feature view -> model -> validation -> registry.")
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
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from exc


def _settings() -> TrainingSettings:
    return TrainingSettings()


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # MLflow configures its own INFO handler (schema migrations, uploads): keep the CLI quiet.
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)


def _window(value: str | None) -> Window | None:
    return None if value is None else Window.parse(value)


def build_config(
    config_file: Path | None,
    *,
    epochs: int | None = None,
    train: str | None = None,
    validation: str | None = None,
    test: str | None = None,
    seed: int | None = None,
) -> TrainingConfig:
    base = TrainingConfig.from_file(config_file) if config_file else TrainingConfig()
    return base.with_overrides(
        **{
            "optim.epochs": epochs,
            "seed": seed,
            "windows.train": _window(train),
            "windows.validation": _window(validation),
            "windows.test": _window(test),
        }
    )


def _summary_table(outcome: TrainingOutcome) -> Table:
    table = Table(
        title=f"model version {outcome.version} (run {outcome.run_id[:8]})",
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
    validation_window: Annotated[str | None, typer.Option("--validation")] = None,
    test_window: Annotated[str | None, typer.Option("--test")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train on the feature view, validate on the test window, register (and maybe promote).

    Defaults to the full 2013 year: train Jan-Sep, validate Oct, test Nov-Dec.
    Exit 3 when the gates refuse the version (registered as challenger, champion unchanged).
    """
    _configure_logging(verbose)
    with _errors_as_exit():
        config = build_config(
            config_file,
            epochs=epochs,
            train=train_window,
            validation=validation_window,
            test=test_window,
            seed=seed,
        )
        _train_and_report(config, promotion=promote, resume=resume)


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
    validation_days: Annotated[int, typer.Option()] = _RECENT.validation_days,
    test_days: Annotated[int, typer.Option(help="the gates' window")] = _RECENT.test_days,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Continuous training: train on the newest window, register as challenger only.

    Windows run backwards from --until: test = the last --test-days, validation the
    --validation-days before, train the --train-days before that. The gates decide whether the
    version is eligible for promotion (recorded as tags); champion is never moved here.
    Exit 3 when the gates refuse it.
    """
    _configure_logging(verbose)
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
            raise ConfigurationError(f"retrain windows: {exc.errors()[0]['msg']}") from exc
        windows = recent.ending(last_day)
        config = build_config(config_file, epochs=epochs, seed=seed).with_overrides(windows=windows)
        _train_and_report(config, promotion=Promotion.never)


def _train_and_report(
    config: TrainingConfig, *, promotion: Promotion, resume: bool = False
) -> None:
    from training_pipeline.pipeline import raise_if_refused, run_training

    settings = _settings()
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
def promote(
    version: Annotated[str, typer.Argument(help="version number or alias, e.g. challenger")],
    require_eligible: Annotated[
        bool,
        typer.Option(
            "--require-eligible",
            help="refuse (exit 3) a version whose gates failed or were never recorded",
        ),
    ] = False,
) -> None:
    """Point the ``champion`` alias at VERSION (explicitly; without gates unless asked)."""
    _configure_logging(False)
    with _errors_as_exit():
        registry = ModelRegistry(_settings().registry_settings())
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
) -> None:
    """List the registered versions, newest first: aliases, the gates' decision, prediction
    lead, test metrics and the training run."""
    _configure_logging(False)
    with _errors_as_exit():
        settings = _settings()
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
def rollback() -> None:
    """Move ``champion`` back to the version that held it before."""
    _configure_logging(False)
    with _errors_as_exit():
        registry = ModelRegistry(_settings().registry_settings())
        moved = registry.rollback()
        print(f"champion -> {moved.name} version {moved.version}")


if __name__ == "__main__":
    app()
