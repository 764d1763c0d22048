"""The MLflow run of one training: opened when training starts, each epoch logged as it ends.

What the MLflow UI then shows for a run: its real duration and status (FAILED when training
raises), the resolved config as parameters, the epoch curves while training goes on, the source
tags (``mlflow.source.name``, ``mlflow.user``, ``mlflow.source.git.commit``), the lineage tags,
the training data as a dataset (rows, schema, and the feature store tables and versions it was
read from: :mod:`shared.mlflow_dataset`), then the test metrics and the logged model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from shared.registry import ModelRegistry
from training_pipeline.config import TrainingConfig, TrainingSettings
from training_pipeline.data import SPLITS, TrainingData
from training_pipeline.loop import EpochCallback, EpochRecord

GIT_COMMIT_TAG = "mlflow.source.git.commit"
SCHEMA_SAMPLE_ROWS = 1000  # training rows the dataset's schema is inferred from


@dataclass
class TrainingRun:
    """The open run (rank 0 only) and the epochs already logged to it."""

    registry: ModelRegistry
    run_id: str
    logged_epochs: set[int] = field(default_factory=set)

    def log_data(self, data: TrainingData, settings: TrainingSettings) -> None:
        """Lineage tags and the training data as an MLflow dataset."""
        from shared.mlflow_dataset import FeatureStoreSource, TrainingDataset

        lineage = data.lineage
        self.registry.set_tags(self.run_id, lineage.tags())
        view = f"{lineage.feature_view['name']}_v{lineage.feature_view['version']}"
        source = FeatureStoreSource(
            offline_root=settings.store_settings().resolved_offline_root,
            feature_view=view,
            table_versions=lineage.table_versions,
            windows=lineage.windows,
            data_sha256=lineage.data_sha256,
        )
        dataset = TrainingDataset(
            source,
            name=f"{view} {lineage.windows['train']}",
            sample=data.train.scan().head(SCHEMA_SAMPLE_ROWS).collect(),
            rows=sum(lineage.rows.values()),
        )
        # One dataset for the rows of all three windows (the training-data hash covers them);
        # how many rows each window holds is on the input's tags.
        self.registry.log_dataset(
            self.run_id,
            dataset,
            context="training",
            tags={f"rows.{name}": str(lineage.rows[name]) for name in SPLITS},
        )

    def log_epoch(self, record: EpochRecord) -> None:
        """One epoch's curves at step = epoch, as soon as it ends."""
        values = {k: v for k, v in asdict(record).items() if k != "epoch"}
        self.registry.log_metrics(self.run_id, values, step=record.epoch)
        self.logged_epochs.add(record.epoch)

    def log_history(self, history: Sequence[EpochRecord]) -> None:
        """Epochs not logged live (those a resumed run did before its checkpoint)."""
        for record in history:
            if record.epoch not in self.logged_epochs:
                self.log_epoch(record)


def run_tags(config: TrainingConfig, commit: str) -> dict[str, str]:
    """MLflow's own source tags (user, entry point, source type), as its fluent API sets them,
    with the commit this code runs (FTI_GIT_COMMIT or git) and the config's hash."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(
        {
            "git_commit": commit,
            GIT_COMMIT_TAG: commit,
            "config_sha256": config.fingerprint(),
            "lead_minutes": str(config.lead_minutes),
        }
    )


@contextmanager
def training_run(
    registry: ModelRegistry | None,
    config: TrainingConfig,
    *,
    commit: str,
    world_size: int,
) -> Iterator[TrainingRun | None]:
    """The run of this training on rank 0 (None on other ranks), ended FINISHED, or FAILED when
    the block raises."""
    if registry is None:
        yield None
        return
    name = f"train-{config.windows.train}"
    with registry.run(name, run_tags(config, commit)) as run_id:
        registry.log_params(run_id, config.flat() | {"world_size": world_size})
        yield TrainingRun(registry, run_id)


def chain(*hooks: EpochCallback | None) -> EpochCallback | None:
    """One epoch hook calling each given one in turn (None when none is given); it asks to stop
    training when any of them does."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None

    def each(record: EpochRecord) -> bool:
        return any([bool(hook(record)) for hook in present])  # (a list: every hook runs)

    return each
