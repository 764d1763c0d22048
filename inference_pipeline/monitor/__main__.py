"""``python -m inference_pipeline.monitor run``: drift, quality and the retraining decision.

    python -m inference_pipeline.monitor run --end 2013-07-07 --window-days 7 --source all \\
        --model champion --output-dir reports/

Exit codes: 0 healthy, 3 drift detected or retraining recommended, 1 failure (one ``error:``
line on stderr), 2 bad command line or settings. The summary table goes to stderr and one JSON
line to stdout; the JSON result and the HTML report are written to the output directory.
Settings (thresholds, retraining policy, Prometheus outputs) are ``FTI_*`` variables, see
:mod:`inference_pipeline.monitor.settings`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn
from zoneinfo import ZoneInfo

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inference_pipeline.monitor.settings import MonitorSettings, PredictionSource
from shared.errors import ConfigurationError, FTIError
from shared.setting_errors import invalid_settings_line

if TYPE_CHECKING:
    from inference_pipeline.monitor.pipeline import MonitorResult

EXIT_HEALTHY, EXIT_FAILURE, EXIT_USAGE, EXIT_DRIFT = 0, 1, 2, 3
NYC_TZ = ZoneInfo("America/New_York")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])


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
        typer.Option(
            help="where the JSON result and HTML report go (default FTI_REPORT_DIR, "
            "else <data_root>/monitoring)"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Python log level")] = "WARNING",
) -> None:
    """Monitor a window of logged predictions against the model's training reference."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # MLflow configures its own INFO handler (schema migrations, downloads): keep the CLI quiet.
    logging.getLogger("mlflow").setLevel(max(logging.WARNING, logging.getLogger().level))
    err = Console(stderr=True)
    last_day = _parse_end(end, err)
    try:
        settings = MonitorSettings()
    except (ValidationError, SettingsError) as exc:
        _fail(err, invalid_settings_line(exc), EXIT_USAGE)
    except ConfigurationError as exc:
        _fail(err, f"invalid settings: {_one_line(exc)}", EXIT_USAGE)
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
    status_style = "red" if result.status == "drift" else "green"
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
        ("features drifted", f"{drift['drifted']} of {drift['tested']} ({drift['share']:.0%})"),
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
