"""``python -m inference_pipeline monitor run``: drift, quality and the retraining decision;
``... monitor shadow``: the shadow decision on a challenger scored beside the champion.

    python -m inference_pipeline monitor run --end 2013-07-07 --window-days 7 --source all \\
        --model champion --output-dir reports/
    python -m inference_pipeline monitor shadow --end 2013-07-07 --window-days 7 [--promote]

(``python -m inference_pipeline.monitor run|shadow`` is the same command.)

Exit codes of ``run``: 0 healthy, 3 drift detected or retraining recommended, 1 failure (one
``error:`` line on stderr), 2 bad command line or settings. ``shadow``: 0 whatever it decided
(promoted, kept the champion, keep shadowing, no challenger: the JSON line says which), 1
failure, 2 bad command line or settings. The summary table goes to stderr and one JSON line to
stdout; the JSON result and the HTML report are written to the output directory. Settings
(thresholds, retraining policy, shadow margins, Prometheus outputs) are ``FTI_*`` variables, see
:mod:`inference_pipeline.monitor.settings`.
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inference_pipeline.monitor.drift import families_text, share_text
from inference_pipeline.monitor.settings import MonitorSettings, PredictionSource
from inference_pipeline.monitor.status import DRIFT
from shared.command_line import (
    CommandLine,
    DataRootOption,
    LogLevel,
    LogLevelOption,
    build_settings,
    configure_logging,
    setting_option,
)
from shared.errors import ConfigurationError, FTIError

if TYPE_CHECKING:
    from inference_pipeline.monitor.pipeline import MonitorResult, ShadowResult

EXIT_HEALTHY, EXIT_FAILURE, EXIT_USAGE, EXIT_DRIFT = 0, 1, 2, 3
NYC_TZ = ZoneInfo("America/New_York")

app = CommandLine(
    no_args_is_help=True,
    help="Model monitoring: data drift, prediction drift, delayed-label quality, retraining.",
)


@app.callback()
def main() -> None:
    """Model monitoring: data drift, prediction drift, delayed-label quality, retraining."""


@app.command()
def run(
    end: Annotated[
        str | None,
        typer.Option(
            help="last local flight date of the window (inclusive), YYYY-MM-DD; "
            "default: yesterday in New York"
        ),
    ] = None,
    window_days: Annotated[
        int, typer.Option(min=1, max=366, help="days in the window, ending at --end")
    ] = 7,
    source: Annotated[
        PredictionSource,
        typer.Option(
            help="predictions of the online service, the batch job, the online shadow "
            "challenger, or all of them"
        ),
    ] = PredictionSource.all,
    model: Annotated[str, typer.Option(help="registry alias or version to monitor")] = "champion",
    include_test_traffic: Annotated[
        bool,
        typer.Option(
            help="count predictions of requests sent as tests (X-FTI-Test-Traffic: true), "
            "left out by default"
        ),
    ] = False,
    output_dir: Annotated[
        Path | None,
        setting_option(
            MonitorSettings,
            "report_dir",
            "--output-dir",
            help="where the JSON result and HTML report go",
            show_default="<data_root>/monitoring",
        ),
    ] = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Monitor a window of logged predictions against the model's training reference."""
    configure_logging(log_level, "%(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True)
    last_day = _parse_end(end, err)
    settings = build_settings(MonitorSettings, data_root=data_root)
    from inference_pipeline.monitor.pipeline import run_monitor  # scipy, MLflow: only when run

    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            result = run_monitor(
                settings,
                last_day,
                window_days,
                source.value,
                model,
                output_dir=output_dir,
                progress=progress,
                include_test_traffic=include_test_traffic,
            )
    except ConfigurationError as exc:
        _fail(err, f"{type(exc).__name__}: {_one_line(exc)}", EXIT_USAGE)
    except (FTIError, OSError) as exc:
        _fail(err, f"{type(exc).__name__}: {_one_line(exc)}", EXIT_FAILURE)
    render_summary(err, result)
    sys.stdout.write(json.dumps(summary_line(result), sort_keys=True) + "\n")
    raise typer.Exit(result.exit_code)


@app.command()
def shadow(
    end: Annotated[
        str | None,
        typer.Option(
            help="last local flight date of the window (inclusive), YYYY-MM-DD; "
            "default: yesterday in New York"
        ),
    ] = None,
    window_days: Annotated[
        int, typer.Option(min=1, max=366, help="days in the window, ending at --end")
    ] = 7,
    promote: Annotated[
        bool | None,
        setting_option(
            MonitorSettings,
            "shadow_promote",
            "--promote/--no-promote",
            help="promote a challenger the shadow rule prefers; --no-promote records the "
            "decision only",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        setting_option(
            MonitorSettings,
            "report_dir",
            "--output-dir",
            help="where the JSON result and HTML report go",
            show_default="<data_root>/monitoring",
        ),
    ] = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Shadow decision: champion vs the challenger in shadow on the window's labelled flights.

    Promotes the challenger when it is gate-eligible and not worse by FTI_SHADOW_MIN_AUC_GAIN /
    FTI_SHADOW_MAX_LOG_LOSS_INCREASE on at least FTI_SHADOW_MIN_LABELS flights (and promotion is
    on), else records why not on the version (tag shadow_result) or keeps shadowing.
    """
    configure_logging(log_level, "%(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True)
    last_day = _parse_end(end, err)
    settings = build_settings(MonitorSettings, data_root=data_root)
    from inference_pipeline.monitor.pipeline import run_shadow

    try:
        result = run_shadow(settings, last_day, window_days, promote=promote, output_dir=output_dir)
    except ConfigurationError as exc:
        _fail(err, f"{type(exc).__name__}: {_one_line(exc)}", EXIT_USAGE)
    except (FTIError, OSError) as exc:
        _fail(err, f"{type(exc).__name__}: {_one_line(exc)}", EXIT_FAILURE)
    render_shadow_summary(err, result)
    sys.stdout.write(json.dumps(shadow_line(result), sort_keys=True) + "\n")


def shadow_line(result: ShadowResult) -> dict[str, object]:
    """The shadow step's JSON line: what it did and why."""
    step = result.shadow
    comparison = step.get("comparison") or {}
    return {
        "window": result.window,
        "champion": step["champion"],
        "challenger": step["challenger"],
        "action": step["action"],
        "pending": step["pending"],
        "reason": step["reason"],
        "flights": comparison.get("flights"),
        "auc_gain": comparison.get("auc_gain"),
        "log_loss_increase": comparison.get("log_loss_increase"),
        "outputs": result.outputs,
        "seconds": result.seconds,
    }


def render_shadow_summary(console: Console, result: ShadowResult) -> None:
    step = result.shadow
    comparison = step.get("comparison") or {}
    table = Table(
        title=f"Shadow decision {result.window['start']}..{result.window['end']}",
        show_header=False,
    )
    table.add_column("", style="bold")
    table.add_column("")
    rows = [("champion / challenger", f"v{step['champion']} / v{step['challenger']}")]
    if comparison:
        rows += [
            ("labelled flights (both)", f"{comparison['flights']:,}"),
            ("ROC AUC gain", _number(comparison.get("auc_gain"))),
            ("log loss increase", _number(comparison.get("log_loss_increase"))),
        ]
    rows += [("done", step["action"]), ("report", result.outputs.get("html", "-"))]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"why: {step['reason']}", markup=False, highlight=False, soft_wrap=True)


def _parse_end(end: str | None, err: Console) -> date:
    if end is None:
        return datetime.now(NYC_TZ).date() - timedelta(days=1)
    try:
        return date.fromisoformat(end)
    except ValueError:
        _fail(err, f"--end {end!r} is not a YYYY-MM-DD date", EXIT_USAGE)


def _fail(err: Console, message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def summary_line(result: MonitorResult) -> dict[str, object]:
    """The one JSON line on stdout: the verdict and where the full result is."""
    quality = (result.quality or {}).get("window") or {}
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "window": result.window,
        "model_version": result.model["version"],
        "flights": result.predictions["flights"],
        "drift_share": result.drift["share"],
        "drifted_features": result.drift["drifted_features"],
        "ood_rate": result.ood["row_rate"],
        "prediction_psi": (result.prediction_drift or {}).get("psi"),
        "window_roc_auc": quality.get("roc_auc"),
        "retrain": {"fire": result.retrain["fire"], "reasons": result.retrain["reasons"]},
        "shadow": {
            k: (result.shadow or {}).get(k) for k in ("challenger", "pending", "action", "reason")
        },
        "outputs": result.outputs,
        "seconds": result.seconds,
    }


def render_summary(console: Console, result: MonitorResult) -> None:
    window = result.window
    quality = result.quality or {}
    scored = quality.get("window") or {}
    test = quality.get("test") or {}
    drift = result.drift
    predicted = result.prediction_drift or {}
    table = Table(
        title=f"Monitoring {window['start']}..{window['end']} ({window['source']})",
        show_header=False,
    )
    table.add_column("", style="bold")
    table.add_column("")
    status_style = "red" if result.status == DRIFT else "green"
    auc = scored.get("roc_auc")
    auc_text = scored.get("status", "-") if auc is None else f"{auc:.4f}"
    drifted = ", ".join(drift["drifted_features"][:8])
    if len(drift["drifted_features"]) > 8:
        drifted += " ..."
    reasons = "; ".join(result.retrain["reasons"])
    flights = f"{result.predictions['rows']:,} / {result.predictions['flights']:,}"
    for name, value in (
        ("status", f"[{status_style}]{result.status}[/]"),
        ("model", f"{result.model['ref']} -> v{result.model['version']}"),
        ("predictions / flights", flights),
        ("features drifted", share_text(drift)),
        ("drifted families", families_text(drift)),
        ("drifted", drifted or "-"),
        ("out-of-distribution flights", _share(result.ood["row_rate"])),
        ("prediction PSI", _number(predicted.get("psi"))),
        ("window ROC AUC (test)", f"{auc_text} ({_number(test.get('roc_auc'))})"),
        ("labelled flights", f"{scored.get('labelled', 0):,}"),
        ("retrain", f"yes: {reasons}" if result.retrain["fire"] else "no"),
        ("report", result.outputs.get("html", "-")),
        ("seconds", f"{result.seconds:.1f}"),
    ):
        table.add_row(name, value)
    console.print(table)
    for alert in result.alerts:
        console.print(f"alert: {alert}", markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if "pushgateway_error" in result.outputs:
        console.print(f"warning: {result.outputs['pushgateway_error']}", markup=False)


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _share(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


if __name__ == "__main__":
    app()
