"""The nightly batch job: score one day's scheduled flights and upsert the predictions.

    python -m inference_pipeline batch --date 2013-03-10 [--in-process] [--model champion]

(``python -m inference_pipeline.batch`` is the same command.)

Reads the day's flights and their point-in-time features from the offline store
(:func:`shared.feature_view.build_scoring_frame`, the function training uses), as of each
flight's prediction time T = scheduled departure - the model's lead (the lead it was trained
at), applies the model's MDT state, scores through Triton in large batches (or the same
TorchScript file in process), and upserts the rows into the ``predictions`` group under
``batch-<date>`` at the day's local midnight: a re-run writes the same rows (nothing inserted,
nothing updated).

A lead other than the model's (``--lead-minutes``, ``FTI_LEAD_MINUTES``) is refused with exit 2:
its features would be fresher or staler than any the model learned from, and its rows would
replace the model-lead predictions of the day under the same request id. Train a version at
that lead to score at it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Annotated

import numpy as np
import polars as pl
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inference_pipeline.model_artifact import ServingModel, load_serving_model, publish_for_triton
from inference_pipeline.scoring import input_reports, score_in_process, score_with_triton
from inference_pipeline.settings import InferenceSettings, TritonMode
from inference_pipeline.triton_server import TritonServer
from shared.command_line import (
    CommandLine,
    DataRootOption,
    LogLevel,
    LogLevelOption,
    build_settings,
    configure_logging,
    setting_option,
)
from shared.errors import ConfigurationError, FTIError, NothingToScore
from shared.feature_store import FeatureStore, open_feature_store
from shared.feature_view import (
    build_scoring_frame,
    local_day_start_utc,
    pinned_versions,
    read_spine,
)
from shared.prediction_log import BATCH_SOURCE, PREDICTIONS, prediction_rows
from shared.registry import ModelRegistry
from shared.transforms import FeatureMatrices, apply_mdt

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    date: str
    model_ref: str
    model_version: str = ""
    lead_minutes: int | None = None  # T = scheduled departure - this
    scorer: str = ""
    flights: int = 0
    with_missing_features: int = 0
    mean_probability: float | None = None
    predicted_delayed: int = 0  # probability >= 0.5
    inserted: int = 0
    updated: int = 0
    predictions_table_version: int | None = None
    table_versions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def score_day(
    settings: InferenceSettings,
    day: date,
    *,
    model_ref: str = "champion",
    in_process: bool = False,
    progress: Progress | None = None,
) -> BatchSummary:
    """Score every scheduled departure of local ``day``; returns what was done."""
    began = time.perf_counter()
    summary = BatchSummary(date=day.isoformat(), model_ref=model_ref)
    workdir = settings.serving_dir / "batch" / uuid.uuid4().hex
    store = open_feature_store(settings.store_settings())
    try:
        task = progress.add_task("load model", total=None) if progress else None

        def step(label: str) -> None:
            if progress is not None and task is not None:
                progress.update(task, description=label)

        registry = ModelRegistry(settings.registry_settings())
        model = load_serving_model(registry, model_ref, workdir, flavour=settings.triton_flavour)
        summary.model_version = model.version
        summary.lead_minutes = check_lead(model, settings.lead_minutes)
        step(f"read features for {day}")
        frame, versions = scoring_frame(store, model, day)
        summary.table_versions = versions
        matrices = apply_mdt(frame, model.mdt)
        reports = input_reports(frame, model, matrices)
        step(f"score {frame.height:,} flights")
        if in_process:
            summary.scorer = "in-process TorchScript"
            probability = score_in_process(model.torchscript, matrices, settings.batch_size)
        else:
            summary.scorer = f"Triton ({settings.triton_mode})"
            probability = _score_on_triton(settings, model, matrices)
        step("upsert predictions")
        rows = prediction_rows(
            frame,
            model.input_features,
            probability.tolist(),
            [r.missing_features for r in reports],
            model_version=model.version,
            request_id=f"batch-{day.isoformat()}",
            scored_at=local_day_start_utc(day),
            source=BATCH_SOURCE,
        )
        store.register(PREDICTIONS)
        result = store.insert(PREDICTIONS, rows)
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summary.flights = frame.height
    summary.with_missing_features = sum(1 for r in reports if r.missing_features)
    summary.mean_probability = float(np.mean(probability)) if len(probability) else None
    summary.predicted_delayed = int((probability >= 0.5).sum())
    summary.inserted, summary.updated = result.inserted, result.updated
    summary.predictions_table_version = result.table_version
    summary.seconds = round(time.perf_counter() - began, 3)
    return summary


def check_lead(model: ServingModel, asked: int | None) -> int:
    """The lead to score at: the model's; another one asked for is refused (see the module
    docstring)."""
    if asked is not None and asked != model.lead_minutes:
        raise ConfigurationError(
            f"--lead-minutes/FTI_LEAD_MINUTES {asked}: model version {model.version} was "
            f"trained at a lead of {model.lead_minutes} minutes; omit it to score at the "
            f"model's lead, or train a version with --lead-minutes {asked}"
        )
    return model.lead_minutes


def scoring_frame(
    store: FeatureStore, model: ServingModel, day: date
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The day's flights with point-in-time features as of departure minus the model's lead,
    and the table versions read."""
    versions = pinned_versions(store, model.view)
    flights = read_spine(store, model.view, day, day + timedelta(days=1), versions=versions)
    if flights.is_empty():
        raise NothingToScore(f"no scheduled flights on {day} in the feature store")
    return build_scoring_frame(store, model.view, flights, versions=versions), versions


def _score_on_triton(
    settings: InferenceSettings, model: ServingModel, matrices: FeatureMatrices
) -> np.ndarray:
    publish_for_triton(model, settings.model_repository, settings.triton_flavour)
    if settings.triton_mode is TritonMode.external:
        assert settings.triton_url is not None
        server = TritonServer.connect(settings.triton_url, request_timeout_s=600.0)
    else:
        server = TritonServer.start_local(
            settings.model_repository,
            settings.serving_dir / "triton-batch",
            startup_timeout_s=settings.triton_startup_timeout_s,
        )
    with server:
        server.load_model(model.triton_name)
        return score_with_triton(
            server.http_client(), model.triton_name, model.version, matrices, settings.batch_size
        )


def render_summary(console: Console, summary: BatchSummary) -> None:
    table = Table(title=f"Batch scoring {summary.date}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    mean = "-" if summary.mean_probability is None else f"{summary.mean_probability:.3f}"
    for name, value in (
        ("model", f"{summary.model_ref} -> v{summary.model_version}"),
        ("prediction time", f"departure - {summary.lead_minutes} min (the model's lead)"),
        ("scorer", summary.scorer),
        ("flights scored", f"{summary.flights:,}"),
        ("with missing features", f"{summary.with_missing_features:,}"),
        ("mean probability", mean),
        ("predicted delayed (p >= 0.5)", f"{summary.predicted_delayed:,}"),
        ("rows inserted / updated", f"{summary.inserted:,} / {summary.updated:,}"),
        ("predictions table version", str(summary.predictions_table_version)),
        (
            "feature table versions",
            ", ".join(f"{k}={v}" for k, v in summary.table_versions.items()),
        ),
        ("seconds", f"{summary.seconds:.1f}"),
    ):
        table.add_row(name, value)
    console.print(table)


app = CommandLine(help=__doc__.split("\n\n")[0] if __doc__ else None)


@app.command()
def batch(
    day: Annotated[str, typer.Option("--date", help="local flight date to score, YYYY-MM-DD")],
    model: Annotated[str, typer.Option(help="registry alias or version")] = "champion",
    in_process: Annotated[
        bool, typer.Option("--in-process", help="run the TorchScript file here, not on Triton")
    ] = False,
    lead_minutes: Annotated[
        int | None, setting_option(InferenceSettings, "lead_minutes", min=0)
    ] = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.warning,
) -> None:
    """Score one day's scheduled flights and upsert the predictions (idempotent)."""
    configure_logging(log_level, "%(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True)
    try:
        scored_day = date.fromisoformat(day)
    except ValueError:
        err.print(f"error: --date {day!r} is not a YYYY-MM-DD date", markup=False)
        raise typer.Exit(2) from None
    settings = build_settings(
        InferenceSettings,
        data_root=data_root,
        lead_minutes=lead_minutes,
        allow_unauthenticated=True,
    )
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            summary = score_day(
                settings, scored_day, model_ref=model, in_process=in_process, progress=progress
            )
    except FTIError as exc:
        err.print(
            f"error: {type(exc).__name__}: {exc}", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(2 if isinstance(exc, ConfigurationError) else 1) from None
    render_summary(err, summary)
    sys.stdout.write(json.dumps(asdict(summary), sort_keys=True) + "\n")


if __name__ == "__main__":
    app()
