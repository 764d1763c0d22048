"""Replay 2013 as operations would have lived it, and write a one-page report.

    python scripts/replay_2013.py                      # the whole of July..December (27 weeks)
    python scripts/replay_2013.py --weeks 4 --data-root /tmp/replay --fresh

History first: the feature backfill of 2013-01-01..2013-06-30 and an initial champion trained on
it. Then week by week: the feature pipeline for the week, batch scoring of each day (champion,
and the challenger in shadow), monitoring, the shadow decision on the week's labels, and
continuous training when the retraining policy fires (the new version becomes challenger only).
See ``scripts/year_replay/flow.py`` for the steps and README "The year replay" for figures.

Resumable: the journal in ``<data-root>/replay`` records each finished week, so running the same
command again continues where it stopped (or does nothing) and never doubles a prediction.
Exit codes: 0 done, 1 a step failed (one ``error:`` line), 2 bad options or an unusable
data root.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table
from year_replay.calendar import selected_weeks
from year_replay.flow import run_replay
from year_replay.journal import JOURNAL_FILE
from year_replay.report import summary, write_report
from year_replay.settings import ReplayPlan, ReplaySettings, Scorer

from shared.command_line import CommandLine, LogLevel, LogLevelOption, configure_logging
from shared.errors import ConfigurationError, FTIError
from shared.setting_errors import invalid_settings_line

DEFAULT_ROOT = Path("data/replay-2013")

app = CommandLine(help=__doc__.split("\n\n")[0] if __doc__ else None)
err = Console(stderr=True)


def _fresh(root: Path) -> None:
    """Start over: delete a data root, but only one a replay made (never someone's `data`)."""
    if not root.exists():
        return
    if not (root / "replay" / JOURNAL_FILE).is_file() and any(root.iterdir()):
        raise ConfigurationError(
            f"--fresh: {root} was not made by a replay (no replay/{JOURNAL_FILE}); "
            "refusing to delete it"
        )
    shutil.rmtree(root)


def _training_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"--config {path}: {exc}") from exc


@app.command()
def replay(
    data_root: Annotated[
        Path,
        typer.Option(
            help="where the replay's store, registry and reports live (never FTI_DATA_ROOT: "
            "a replay does not write into a deployment's root)"
        ),
    ] = DEFAULT_ROOT,
    weeks: Annotated[
        int | None, typer.Option(min=1, help="replay this many weeks (default: to year end)")
    ] = None,
    start_week: Annotated[int, typer.Option(min=1, help="1 = the week of 2013-07-01")] = 1,
    epochs: Annotated[int, typer.Option(min=1, help="maximum epochs per training")] = 3,
    scorer: Annotated[
        Scorer, typer.Option(help="in-process TorchScript, or one managed Triton")
    ] = Scorer.in_process,
    config: Annotated[
        Path | None, typer.Option(help="JSON training config (the base; windows are derived)")
    ] = None,
    train_days: Annotated[int, typer.Option(min=7, help="retraining's training window")] = 120,
    validation_days: Annotated[
        int, typer.Option(min=1, help="retraining's early-stopping window")
    ] = 14,
    test_days: Annotated[int, typer.Option(min=1, help="the gates' window")] = 14,
    drift_share: Annotated[
        float | None, typer.Option(help="overrides FTI_RETRAIN_DRIFT_SHARE")
    ] = None,
    auc_drop: Annotated[float | None, typer.Option(help="overrides FTI_RETRAIN_AUC_DROP")] = None,
    schedule_weeks: Annotated[
        int | None,
        typer.Option(min=0, help="fallback: retrain after this many weeks; 0 = off"),
    ] = None,
    torch_threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="PyTorch intra-op threads; 1 is fastest on a shared 2-core machine (see README)",
        ),
    ] = 1,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="delete the replay's data root first")
    ] = False,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Replay July..December 2013 week by week; writes report.md/.html/.json."""
    configure_logging(log_level)
    # Oversubscribed intra-op threads made training 10x slower on our shared 2-core machines
    # (8.7k vs 82k rows/s, measured): the replay trains many small models, one thread each.
    torch.set_num_threads(torch_threads)
    try:
        if fresh:
            _fresh(data_root)
        overrides: dict[str, Any] = {"data_root": data_root}
        if schedule_weeks is not None:
            overrides["retrain_schedule_weeks"] = schedule_weeks or None
        settings = ReplaySettings(**overrides)
        plan = ReplayPlan(
            start_week=start_week,
            epochs=epochs,
            scorer=scorer,
            train_days=train_days,
            validation_days=validation_days,
            test_days=test_days,
            training_config=_training_config(config),
        )
        chosen = selected_weeks(start_week, weeks)
        journal = run_replay(
            settings,
            plan,
            chosen,
            monitor_overrides={"retrain_drift_share": drift_share, "retrain_auc_drop": auc_drop},
            notify=lambda line: err.print(f"[dim]replay[/dim] {line}", highlight=False),
        )
        paths = write_report(journal, settings.resolved_replay_dir)
    except (ValidationError, SettingsError) as exc:
        err.print(f"error: {invalid_settings_line(exc)}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except ConfigurationError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except FTIError as exc:
        err.print(f"error: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    totals = summary(journal)
    table = Table(title="2013 replay", show_header=False)
    for key, value in totals.items():
        table.add_row(key.replace("_", " "), str(value))
    for kind, path in paths.items():
        table.add_row(f"report ({kind})", str(path))
    err.print(table)
    sys.stdout.write(json.dumps(totals | {k: str(p) for k, p in paths.items()}) + "\n")


if __name__ == "__main__":
    app()
