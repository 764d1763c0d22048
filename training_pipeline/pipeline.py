"""One training run, end to end: data -> fit -> evaluate -> baseline -> gates -> register.

Every process of a ``torchrun`` job runs :func:`run_training`; only rank 0 evaluates, talks to
MLflow and writes files. Commands in ``__main__`` are thin wrappers around these functions.
"""

from __future__ import annotations

import logging
import random
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from shared.errors import ConfigurationError, GateFailed
from shared.feature_view import FLIGHT_DELAY_VIEW, FeatureView
from shared.promotion import Promotion, gate_tags, promote_if_eligible
from shared.registry import CHAMPION, ModelRegistry, RegisteredVersion
from shared.segments import INPUT_COLUMNS as SEGMENT_INPUTS
from shared.segments import segment_columns, segment_name
from training_pipeline.baseline import train_baseline
from training_pipeline.champion import score_exported, score_version
from training_pipeline.config import TrainingConfig, TrainingSettings
from training_pipeline.data import Split, TrainingData, read_training_data
from training_pipeline.distributed import DistContext, distributed_context
from training_pipeline.evaluation import (
    classification_metrics,
    per_group_metrics,
    plot_reliability,
    reliability_curve,
    segment_document,
    segment_metrics,
)
from training_pipeline.gates import GateDecision, SegmentScores, check_gates
from training_pipeline.loop import EpochCallback, FitResult, Tensors, fit
from training_pipeline.model import TabularNet, export_torchscript
from training_pipeline.reference_stats import MAX_ROWS, reference_stats
from training_pipeline.register import build_model_package
from training_pipeline.tracking import TrainingRun, chain, training_run

log = logging.getLogger(__name__)

PYFUNC_EXAMPLE_ROWS = 5  # test-window rows stored as the MLflow model's input example


@dataclass(frozen=True)
class TrainingOutcome:
    run_id: str
    version: str
    promoted: bool
    promotion: Promotion
    decision: GateDecision
    network: dict[str, float]
    baseline: dict[str, float] | None
    champion_before: str | None
    champion_roc_auc: float | None
    lineage: dict[str, Any]
    epochs: int
    best_epoch: int
    resumed_from_epoch: int | None
    rows_per_s: float
    lead_minutes: int
    seconds: dict[str, float]  # wall time per stage: data.*, fit, test, baseline, register

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("lineage",)} | {
            "data_sha256": self.lineage["data_sha256"]
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit(settings: TrainingSettings) -> str:
    if settings.git_commit:
        return settings.git_commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def run_fingerprint(config: TrainingConfig, data: TrainingData) -> str:
    """A checkpoint resumes only with the same config AND the same training data."""
    return f"{config.fingerprint()}:{data.lineage.data_sha256}"


def train_network(
    settings: TrainingSettings,
    config: TrainingConfig,
    data: TrainingData,
    ctx: DistContext,
    *,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
) -> tuple[TabularNet, FitResult]:
    """Fit the network on this process's device; returns it with the best epoch's weights."""
    seed_everything(config.seed)
    net = TabularNet.from_config(config.model, data.mdt.n_numeric, data.mdt.cardinalities)
    net = net.to(ctx.device)
    result = fit(
        net,
        Tensors.from_split(data.train.features, data.train.labels, ctx.device),
        Tensors.from_split(data.validation.features, data.validation.labels, ctx.device),
        config.optim,
        seed=config.seed,
        ctx=ctx,
        checkpoint_dir=settings.resolved_checkpoint_dir,
        fingerprint=run_fingerprint(config, data),
        resume=resume,
        on_epoch_end=on_epoch_end,
        cuda_graphs=settings.cuda_graphs,
    )
    net.load_state_dict(result.best_state)
    return net, result


def score_champion(
    registry: ModelRegistry, test: Split, workdir: Path
) -> tuple[str | None, np.ndarray | None]:
    """The current champion's probabilities on this run's test window (None when there is
    none)."""
    version = registry.version_for(CHAMPION)
    if version is None:
        return None, None
    loaded = registry.load(version, workdir / f"champion-v{version}")
    try:
        # A chunk of the test window at a time: memory stays bounded on large stores.
        probs = np.concatenate([score_version(loaded, frame) for frame in test.frames()])
    except ValueError as exc:  # e.g. a champion trained on another feature view
        raise ConfigurationError(
            f"cannot score champion v{version} on this test window ({exc}); compare by hand and "
            "use `promote`"
        ) from exc
    return version, probs


def test_segments(test: Split) -> pl.DataFrame:
    """The segment of every test row, in row order (:mod:`shared.segments`)."""
    return segment_columns(pl.concat(list(test.frames(list(SEGMENT_INPUTS)))))


def segment_scores(
    candidate: list[dict[str, Any]], champion: list[dict[str, Any]]
) -> list[SegmentScores]:
    """Candidate and champion side by side on each segment both were measured on."""
    theirs = {(r["kind"], r["segment"]): r for r in champion}
    return [
        SegmentScores(
            name=segment_name(r["kind"], r["segment"]),
            share=r["share"],
            candidate_roc_auc=r["roc_auc"],
            champion_roc_auc=theirs[(r["kind"], r["segment"])]["roc_auc"],
        )
        for r in candidate
        if (r["kind"], r["segment"]) in theirs
    ]


def run_training(
    settings: TrainingSettings,
    config: TrainingConfig,
    *,
    resume: bool = False,
    view: FeatureView = FLIGHT_DELAY_VIEW,
    on_epoch_end: EpochCallback | None = None,
    promotion: Promotion = Promotion.if_gates_pass,
) -> TrainingOutcome | None:
    """Train, validate and register. Returns the outcome on rank 0, None on other ranks.

    The version is always registered (alias ``challenger``) with the gate decision as tags
    (:mod:`shared.promotion`). It becomes ``champion`` only when every gate passes and
    ``promotion`` allows it: continuous training passes :attr:`Promotion.never`, so a passing
    version is only an *eligible* challenger and a later step decides. See ``outcome.decision``
    (:func:`raise_if_refused` for callers that want an error).
    """
    with distributed_context(settings.device) as ctx:
        started = time.perf_counter()
        data = read_training_data(settings, config, view)  # every row as of departure - lead
        seconds = {f"data.{k}": v for k, v in data.seconds.items()}
        seconds["data"] = time.perf_counter() - started
        registry = ModelRegistry(settings.registry_settings()) if ctx.is_main else None
        commit = git_commit(settings)
        # The run opens as training starts (a window without data never makes a run), so its
        # duration, status and epoch curves are the training's own.
        with training_run(registry, config, commit=commit, world_size=ctx.world_size) as run:
            if run is not None:
                run.log_data(data, settings)
            started = time.perf_counter()
            net, result = train_network(
                settings,
                config,
                data,
                ctx,
                resume=resume,
                on_epoch_end=chain(run.log_epoch if run else None, on_epoch_end),
            )
            seconds["fit"] = time.perf_counter() - started
            if run is None:
                return None
            run.log_history(result.state.history)
            with tempfile.TemporaryDirectory(prefix="fti-train-") as tmp:
                return _validate_and_register(
                    settings,
                    config,
                    data,
                    net,
                    result,
                    ctx,
                    Path(tmp),
                    promotion,
                    seconds,
                    run,
                    commit,
                )


def _validate_and_register(
    settings: TrainingSettings,
    config: TrainingConfig,
    data: TrainingData,
    net: TabularNet,
    result: FitResult,
    ctx: DistContext,
    workdir: Path,
    promotion: Promotion,
    seconds: dict[str, float],
    run: TrainingRun,
    commit: str,
) -> TrainingOutcome:
    started = time.perf_counter()
    batch = config.optim.eval_batch_size
    test = data.test
    # The gates and the registry judge the served artifact: the exported float32 TorchScript
    # model, scored on CPU as Triton runs it (not the network, which may have run in bf16).
    exported = export_torchscript(net, workdir / "export" / "model.pt")
    probs = score_exported(exported, test.features, batch)
    network = classification_metrics(test.labels, probs)
    origins = test.column("origin").to_numpy()
    curves = {"network": reliability_curve(test.labels, probs)}
    segments = test_segments(test)
    network_segments = segment_metrics(segments, test.labels, probs)
    metrics: dict[str, Any] = {
        "network": network,
        "network_per_origin": per_group_metrics(origins, test.labels, probs),
        "network_per_segment": network_segments,
    }
    seconds["test"] = time.perf_counter() - started
    started = time.perf_counter()
    baseline_metrics = None
    if config.baseline.enabled:
        baseline = train_baseline(
            data.train.features,
            data.train.labels,
            data.validation.features,
            data.validation.labels,
            config.baseline,
            seed=config.seed,
        )
        baseline_probs = baseline.predict(test.features)
        baseline_metrics = classification_metrics(test.labels, baseline_probs)
        metrics["baseline"] = baseline_metrics | {"fit_seconds": baseline.fit_seconds}
        metrics["baseline_per_origin"] = per_group_metrics(origins, test.labels, baseline_probs)
        curves["hist_gradient_boosting"] = reliability_curve(test.labels, baseline_probs)
    metrics["reliability"] = curves
    seconds["baseline"] = time.perf_counter() - started
    started = time.perf_counter()

    registry, run_id = run.registry, run.run_id
    champion_version, champion_probs = score_champion(registry, test, workdir)
    champion_auc, champion_segments = None, []
    if champion_probs is not None:
        champion_auc = classification_metrics(test.labels, champion_probs)["roc_auc"]
        champion_segments = segment_metrics(segments, test.labels, champion_probs)
        metrics["champion_per_segment"] = champion_segments
    decision = check_gates(
        network["roc_auc"],
        champion_auc,
        config.gates,
        champion_version=champion_version,
        segments=segment_scores(network_segments, champion_segments),
    )
    metrics["gates"] = asdict(decision) | {
        "champion_version": champion_version,
        "champion_roc_auc": champion_auc,
    }
    log.info("gates: %s", decision.summary())

    lineage = data.lineage.to_dict() | {"git_commit": commit}
    tags = data.lineage.tags() | {
        "git_commit": commit,
        "config_sha256": config.fingerprint(),
        "lead_minutes": str(config.lead_minutes),
    }
    image = plot_reliability(
        curves, workdir / "plots" / "reliability.png", f"Test window {data.lineage.windows['test']}"
    )
    registry.log_metrics(run_id, _flat_metrics(metrics))
    version_number = registry.next_version()
    package = build_model_package(
        workdir / "model",
        torchscript=exported,
        mdt=data.mdt,
        model_name=settings.model_name,
        version=version_number,
        documents={
            "config": config.model_dump(mode="json"),
            "feature_view": data.lineage.feature_view,
            "lineage": lineage,
            "metrics": metrics,
            "reference_stats": _reference_stats(data, exported, config.seed, batch),
            "segment_metrics": segment_document(network_segments, data.lineage.windows["test"]),
        },
        images=[image],
        example=test.scan().head(PYFUNC_EXAMPLE_ROWS).collect(),
    )
    registry.log_artifacts(run_id, image.parent, "plots")
    registered = registry.register(
        run_id,
        package,
        tags | _version_tags(network) | gate_tags(decision.passed, decision.summary(), promotion),
        expected_version=version_number,
    )
    promoted = _maybe_promote(registry, registered, decision, promotion)
    registry.set_tags(run_id, {"model_version": registered.version, "promoted": str(promoted)})
    seconds["register"] = time.perf_counter() - started  # champion scoring, gates, MLflow
    outcome = TrainingOutcome(
        run_id=run_id,
        version=registered.version,
        promoted=promoted,
        promotion=promotion,
        decision=decision,
        network=network,
        baseline=baseline_metrics,
        champion_before=champion_version,
        champion_roc_auc=champion_auc,
        lineage=lineage,
        epochs=result.state.epoch,
        best_epoch=result.state.best_epoch,
        resumed_from_epoch=result.resumed_from_epoch,
        rows_per_s=result.rows_per_s,
        lead_minutes=config.lead_minutes,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
    return outcome


def _reference_stats(data: TrainingData, exported: Path, seed: int, batch: int) -> dict[str, Any]:
    """Drift reference: the training split's raw features and the served model's predictions,
    on a sample of at most ``reference_stats.MAX_ROWS`` rows (all of them for the 2013 year)."""
    mdt = data.mdt
    index, frame = data.train.sample(MAX_ROWS, seed=seed, columns=mdt.input_features)
    predictions = score_exported(exported, data.train.features.take(index), batch)
    return reference_stats(
        frame,
        mdt.numeric_features,
        mdt.categorical_features,
        predictions,
        seed=seed,
        split_rows=data.train.rows,
    )


def raise_if_refused(outcome: TrainingOutcome) -> None:
    if not outcome.decision.passed:
        raise GateFailed(
            f"version {outcome.version} stays challenger, champion unchanged "
            f"({outcome.champion_before or 'none'}): {outcome.decision.summary()}",
            reasons=outcome.decision.reasons,
        )


def _maybe_promote(
    registry: ModelRegistry,
    registered: RegisteredVersion,
    decision: GateDecision,
    promotion: Promotion,
) -> bool:
    if not decision.passed or promotion is Promotion.never:
        return False
    promote_if_eligible(registry, registered.version, f"training run: {decision.summary()}")
    return True


def _version_tags(network: dict[str, float]) -> dict[str, str]:
    return {f"test_{k}": f"{v:.6f}" for k, v in network.items()}


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name in ("network", "baseline"):
        for key, value in metrics.get(name, {}).items():
            flat[f"test_{key}" if name == "network" else f"baseline_test_{key}"] = value
    for name in ("network_per_origin", "baseline_per_origin"):
        prefix = "test" if name == "network_per_origin" else "baseline_test"
        for origin, values in metrics.get(name, {}).items():
            for key in ("roc_auc", "pr_auc", "log_loss", "brier", "base_rate", "rows"):
                flat[f"{prefix}_{key}.{origin}"] = values[key]
    for name, prefix in (("network_per_segment", "test"), ("champion_per_segment", "champion")):
        for row in metrics.get(name, []):
            where = f"{row['kind']}.{row['segment']}"
            for key in ("roc_auc", "log_loss", "rows"):
                flat[f"{prefix}_{key}.{where}"] = row[key]
    return {k: v for k, v in flat.items() if v == v}  # MLflow refuses NaN in some stores
