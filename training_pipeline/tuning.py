"""Hyperparameter search: an Optuna study over the network's (or the boosted trees') settings,
every trial a nested MLflow run, the best configuration written as a training config file.

How a worker (one ``python -m training_pipeline tune`` process) runs:

1. It builds the training and validation matrices ONCE (:func:`load_search_data`: the feature
   store is never read for the test window) and keeps them for all its trials.
2. It creates or joins the study in the shared storage (:mod:`training_pipeline.study_storage`);
   the creator opens the study's MLflow run, every trial is a run nested under it.
3. Each trial samples a configuration from :data:`NETWORK_SPACE` (or :data:`BASELINE_SPACE`)
   on top of the base config, trains it on the training window and scores it by the best
   validation ROC AUC of its epochs (what early stopping keeps). After every epoch the score so
   far is reported to the pruner: a trial below the median of the earlier trials at the same
   epoch stops there (PRUNED). The boosted trees have no per-epoch hook and are not pruned.
4. When the study holds ``trials`` finished trials (by any worker) or ``timeout`` passed, the
   worker writes the best trial's configuration as a config file that ``train --config`` reads:
   the tuned model then goes through the same test window, gates and registry as any other.

The test window is the gates' and nothing of the search looks at it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import BaseTrial, FrozenTrial, TrialState
from sklearn.metrics import roc_auc_score

from shared.errors import FTIError
from shared.feature_store import open_feature_store
from shared.feature_view import FLIGHT_DELAY_VIEW, FeatureView
from shared.registry import ModelRegistry
from training_pipeline.baseline import train_baseline
from training_pipeline.config import TrainingConfig, TuningSettings
from training_pipeline.data import SearchData, load_search_data, training_view
from training_pipeline.distributed import DistContext, choose_device
from training_pipeline.loop import EpochRecord, FitResult, Tensors, fit
from training_pipeline.model import TabularNet
from training_pipeline.pipeline import git_commit, seed_everything
from training_pipeline.study_storage import (
    MLFLOW_RUN_ATTR,
    create_or_join,
    masked,
    open_storage,
    parent_run_id,
)
from training_pipeline.tracking import TrainingRun, run_tags

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"  # what makes MLflow show a run nested under another
STATE_TAG = "optuna.state"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"  # host:pid of the process that ran a trial


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SearchTarget(StrEnum):
    network = "network"
    baseline = "baseline"


class NoTrialCompleted(FTIError):
    """The study ended without one completed trial: nothing to write."""


# -- the search spaces ---------------------------------------------------------------------------


def network_config(trial: BaseTrial, base: TrainingConfig) -> TrainingConfig:
    """The network's search space on top of ``base``: width and depth of the hidden layers
    (each layer half the one before, as the default 128-64), dropout, embedding size, learning
    rate, weight decay, batch size. The MDT is not searched: the matrices are built once."""
    width = trial.suggest_int("width", 32, 256, log=True)
    depth = trial.suggest_int("depth", 1, 3)
    changes: dict[str, Any] = {
        "model.hidden": [max(8, width >> layer) for layer in range(depth)],
        "model.dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "model.max_embedding_dim": trial.suggest_categorical("max_embedding_dim", [4, 8, 16, 32]),
        "optim.lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "optim.weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
        "optim.batch_size": trial.suggest_categorical("batch_size", [512, 1024, 2048, 4096]),
    }
    return base.with_overrides(None, **changes)


def baseline_config(trial: BaseTrial, base: TrainingConfig) -> TrainingConfig:
    """The boosted trees' search space on top of ``base`` (iterations stop early on the
    validation window, so their number is a bound, not searched)."""
    changes: dict[str, Any] = {
        "baseline.enabled": True,
        "baseline.learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "baseline.max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 15, 255, log=True),
        "baseline.l2_regularization": trial.suggest_float(
            "l2_regularization", 1e-3, 10.0, log=True
        ),
    }
    return base.with_overrides(None, **changes)


SPACES: dict[SearchTarget, Callable[[BaseTrial, TrainingConfig], TrainingConfig]] = {
    SearchTarget.network: network_config,
    SearchTarget.baseline: baseline_config,
}


def tuned_config(
    target: SearchTarget, base: TrainingConfig, params: dict[str, Any]
) -> TrainingConfig:
    """The config of a trial's parameters, exactly as the trial trained it."""
    return SPACES[target](optuna.trial.FixedTrial(params), base)


# -- one worker -----------------------------------------------------------------------------------


@dataclass
class Worker:
    """What one process keeps across its trials: the data (built once), the registry, the
    study's run."""

    settings: TuningSettings
    base: TrainingConfig
    target: SearchTarget
    data: SearchData
    device: DistContext
    registry: ModelRegistry
    study_run: str = ""
    commit: str = "unknown"
    trials_run: int = 0
    _tensors: tuple[Tensors, Tensors] | None = field(default=None, repr=False)

    def tensors(self) -> tuple[Tensors, Tensors]:
        """The training and validation splits on the device, once per process."""
        if self._tensors is None:
            d = self.device.device
            self._tensors = (
                Tensors.from_split(self.data.train.features, self.data.train.labels, d),
                Tensors.from_split(self.data.validation.features, self.data.validation.labels, d),
            )
        return self._tensors

    def objective(self, trial: optuna.Trial) -> float:
        self.trials_run += 1
        trial.set_user_attr(WORKER_ATTR, worker_id())
        config = SPACES[self.target](trial, self.base)
        with self.trial_run(trial, config) as run:
            if self.target is SearchTarget.network:
                score, pruned = self.train_network(trial, config, run)
            else:
                score, pruned = self.fit_baseline(config, run), False
            # (the epochs' curve is val_roc_auc by step; the trial's score is its best epoch)
            self.registry.log_metrics(run.run_id, {"best_val_roc_auc": score})
            self.registry.set_tags(run.run_id, {STATE_TAG: "PRUNED" if pruned else "COMPLETE"})
        if pruned:
            raise optuna.TrialPruned()
        return score

    @contextmanager
    def trial_run(self, trial: optuna.Trial, config: TrainingConfig) -> Iterator[TrainingRun]:
        """The trial's MLflow run, nested under the study's: its parameters, then its curve and
        score; FAILED when the trial raises."""
        tags = run_tags(config, self.commit) | {
            PARENT_RUN_TAG: self.study_run,
            "optuna.study": trial.study.study_name,
            "optuna.trial": str(trial.number),
            "tuning.target": self.target.value,
        }
        with self.registry.run(f"trial-{trial.number}", tags) as run_id:
            trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
            self.registry.log_params(
                run_id, {f"trial.{k}": v for k, v in trial.params.items()} | config.flat()
            )
            yield TrainingRun(self.registry, run_id)

    def train_network(
        self, trial: optuna.Trial, config: TrainingConfig, run: TrainingRun
    ) -> tuple[float, bool]:
        """(best validation ROC AUC, pruned?) of one network trial."""
        pruning = PruningHook(trial, config.optim.epochs)

        def each_epoch(record: EpochRecord) -> bool:
            run.log_epoch(record)
            return pruning(record)

        result = self.fit(config, each_epoch)
        self.registry.log_metrics(run.run_id, {"best_epoch": result.state.best_epoch})
        return result.state.best_val_auc, pruning.pruned_at is not None

    def fit(self, config: TrainingConfig, on_epoch_end: Callable[[EpochRecord], bool]) -> FitResult:
        seed_everything(config.seed)
        mdt = self.data.mdt
        net = TabularNet.from_config(config.model, mdt.n_numeric, mdt.cardinalities)
        train, validation = self.tensors()
        # A checkpoint folder of the trial's own: workers and trials never resume each other.
        with tempfile.TemporaryDirectory(prefix="fti-trial-") as checkpoints:
            return fit(
                net.to(self.device.device),
                train,
                validation,
                config.optim,
                seed=config.seed,
                ctx=self.device,
                checkpoint_dir=Path(checkpoints),
                fingerprint=f"{config.fingerprint()}:{self.data.lineage.data_sha256}",
                on_epoch_end=on_epoch_end,
                cuda_graphs=self.settings.cuda_graphs,
            )

    def fit_baseline(self, config: TrainingConfig, run: TrainingRun) -> float:
        """Validation ROC AUC of one boosted-trees trial; its per-iteration validation loss is
        the trial's curve."""
        data = self.data
        baseline = train_baseline(
            data.train.features,
            data.train.labels,
            data.validation.features,
            data.validation.labels,
            config.baseline,
            seed=config.seed,
        )
        for step, score in enumerate(baseline.model.validation_score_):
            # sklearn's default scorer is the negative loss
            self.registry.log_metrics(run.run_id, {"val_loss": -float(score)}, step=step)
        probs = baseline.predict(data.validation.features)
        return float(roc_auc_score(data.validation.labels, probs))


def end_dead_trial_run(registry: ModelRegistry) -> Callable[[FrozenTrial], None]:
    """What happens to a dead worker's trial (failed by the heartbeat check): its MLflow run
    ends FAILED."""

    def end(trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
        log.warning("trial %d had no heartbeat for too long: marked failed", trial.number)
        if run_id:
            registry.set_tags(run_id, {STATE_TAG: "FAIL", "optuna.fail_reason": "heartbeat"})
            registry.client.set_terminated(run_id, status="FAILED")

    return end


@dataclass
class PruningHook:
    """After each epoch: report the best validation ROC AUC so far, stop when the pruner says."""

    trial: optuna.Trial
    last_epoch: int
    best: float = -math.inf
    pruned_at: int | None = None

    def __call__(self, record: EpochRecord) -> bool:
        if not math.isnan(record.val_roc_auc):
            self.best = max(self.best, record.val_roc_auc)
        if self.best == -math.inf:
            return False
        self.trial.report(self.best, record.epoch)
        # The last epoch's trial is trained already: pruning it would only discard its score.
        if record.epoch < self.last_epoch and self.trial.should_prune():
            self.pruned_at = record.epoch
            return True
        return False


# -- the study ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyOutcome:
    study: str
    storage: str
    target: SearchTarget
    mlflow_run_id: str
    created: bool
    states: dict[str, int]  # trials of the study by state, all workers
    worker_trials: int  # trials this worker ran
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    config_file: Path
    seconds: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "command": "tune",
            "study": self.study,
            "storage": self.storage,
            "target": self.target.value,
            "mlflow_run_id": self.mlflow_run_id,
            "created_study": self.created,
            "trials": self.states,
            "worker_trials": self.worker_trials,
            "best": {"trial": self.best_trial, "val_roc_auc": self.best_value}
            | {"params": self.best_params},
            "config_file": str(self.config_file),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def default_output(settings: TuningSettings) -> Path:
    return settings.data_root / "tuning" / f"{settings.tuning_study}.json"


def run_study(
    settings: TuningSettings,
    base: TrainingConfig,
    *,
    trials: int,
    timeout: float | None = None,
    target: SearchTarget = SearchTarget.network,
    output: Path | None = None,
    view: FeatureView = FLIGHT_DELAY_VIEW,
) -> StudyOutcome:
    """One worker of the study ``settings.tuning_study``: trials until the study holds
    ``trials`` finished ones (or ``timeout`` seconds pass), then the best config to ``output``."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    # Optuna's own per-trial lines follow the command's --log-level.
    optuna.logging.set_verbosity(logging.getLogger().getEffectiveLevel())
    registry = ModelRegistry(settings.registry_settings())
    storage = open_storage(settings, end_dead_trial_run(registry))  # before the data: fail fast
    store = open_feature_store(settings.store_settings())
    try:
        data = load_search_data(
            store,
            training_view(view, base),
            base.windows,
            base.mdt,
            chunk_days=settings.training_chunk_days,
        )
    finally:
        store.close()
    seconds["data"] = time.perf_counter() - started
    worker = Worker(
        settings,
        base,
        target,
        data,
        DistContext(0, 1, 0, choose_device(settings.device)),
        registry,
        commit=git_commit(settings),
    )
    joined = create_or_join(
        storage,
        settings.tuning_study,
        optuna.samplers.TPESampler(n_startup_trials=4, constant_liar=True, seed=None),
        # Trials stop at an epoch where their best so far is below the median of the earlier
        # trials at that epoch, once 2 trials finished and from the second epoch on.
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
        {"target": target.value, "base_config_sha256": base.fingerprint()},
    )
    study = joined.study
    if joined.created:
        study.set_user_attr(MLFLOW_RUN_ATTR, open_study_run(worker, study, storage.url))
    worker.study_run = parent_run_id(study)
    started = time.perf_counter()
    try:
        study.optimize(
            worker.objective,
            n_trials=trials,
            timeout=timeout,
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED_STATES)],
            gc_after_trial=True,
            catch=(),
        )
    finally:
        seconds["trials"] = time.perf_counter() - started
    states = _states(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state is TrialState.COMPLETE]
    if not complete:
        _end_study_run(worker, study, states, None)
        raise NoTrialCompleted(
            f"study {study.study_name!r} has no completed trial ({states}); nothing written. "
            "Give more --trials or a longer --timeout"
        )
    best = max(complete, key=lambda t: t.value if t.value is not None else -math.inf)
    config = tuned_config(target, base, best.params)
    path = output or default_output(settings)
    write_config(config, path)
    _end_study_run(worker, study, states, best, path)
    return StudyOutcome(
        study=study.study_name,
        storage=masked(storage.url),
        target=target,
        mlflow_run_id=worker.study_run,
        created=joined.created,
        states=states,
        worker_trials=worker.trials_run,
        best_trial=best.number,
        best_value=float(best.value or math.nan),
        best_params=best.params,
        config_file=path,
        seconds=seconds,
    )


def open_study_run(worker: Worker, study: optuna.Study, storage_url: str) -> str:
    """The study's MLflow run (left open: each worker ends it when it finishes, so it ends with
    the last one)."""
    tags = (
        run_tags(worker.base, worker.commit)
        | {
            "optuna.study": study.study_name,
            "optuna.storage": masked(storage_url),
            "tuning.target": worker.target.value,
        }
        | worker.data.lineage.tags()
    )
    run = worker.registry.client.create_run(
        worker.registry.experiment_id(), run_name=f"tune-{study.study_name}", tags=tags
    )
    run_id = str(run.info.run_id)
    worker.registry.log_params(
        run_id, {f"base.{k}": v for k, v in worker.base.flat().items()} | {"target": worker.target}
    )
    return run_id


def _end_study_run(
    worker: Worker,
    study: optuna.Study,
    states: dict[str, int],
    best: FrozenTrial | None,
    path: Path | None = None,
) -> None:
    registry, run_id = worker.registry, worker.study_run
    metrics = {f"trials_{k.lower()}": float(v) for k, v in states.items()}
    if best is not None:
        metrics |= {"best_val_roc_auc": float(best.value or math.nan)}
        on_shared_run(lambda: registry.set_tags(run_id, {"best_trial": str(best.number)}))
    on_shared_run(lambda: registry.log_metrics(run_id, metrics))
    if path is not None:
        with tempfile.TemporaryDirectory(prefix="fti-tuned-") as tmp:
            copy = Path(tmp) / "tuned_config.json"
            copy.write_text(path.read_text())
            registry.log_artifacts(run_id, Path(tmp), "tuning")
    on_shared_run(lambda: registry.client.set_terminated(run_id, status="FINISHED"))


# Every worker ends the study's one MLflow run when it finishes. Two that finish together race
# in MLflow's SQL store (a tag or a latest metric is a SELECT, then an INSERT), and the second
# INSERT fails on the unique key (seen in CI: "UNIQUE constraint failed: tags.key,
# tags.run_uuid"). These writes are idempotent, so the loser writes again.
_SHARED_RUN_ATTEMPTS = 4
_UNIQUE_KEY_CLASH = ("unique constraint", "duplicate entry", "duplicate key")


def on_shared_run(write: Callable[[], object]) -> None:
    """``write`` to the study's shared run, again after a clash with another worker's write."""
    for attempt in range(1, _SHARED_RUN_ATTEMPTS + 1):
        try:
            write()
            return
        except MlflowException as exc:
            clash = any(marker in str(exc).lower() for marker in _UNIQUE_KEY_CLASH)
            if not clash or attempt == _SHARED_RUN_ATTEMPTS:
                raise
            log.info(
                "a write to the study run clashed with another worker's (try %d): again", attempt
            )
            time.sleep(0.05 * attempt)


def _states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def write_config(config: TrainingConfig, path: Path) -> None:
    """Atomically: a reader never sees half a file (several workers may write it at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    os.replace(staged, path)
