"""The training data of a run as an MLflow dataset: the rows, and the feature store tables and
versions they were read from.

MLflow records a dataset as a schema, a profile, a digest and a *source*. The source here is
:class:`FeatureStoreSource`: the offline store's root, the feature view, and the Delta table
version of every feature group the view read, so the same rows can be read back by time travel.
The digest is the run's training-data sha256 (cut to MLflow's 36-character limit; the whole
hash is in the source and in the run's ``data_sha256`` tag).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.polars_dataset import PolarsDataset, from_polars

# MLflow keeps at most this many characters of a dataset digest.
DIGEST_LENGTH = 36


@dataclass
class FeatureStoreSource(DatasetSource):
    """Where a training frame came from: feature group tables at pinned versions."""

    offline_root: str
    feature_view: str
    table_versions: Mapping[str, int]
    windows: Mapping[str, str] = field(default_factory=dict)
    data_sha256: str = ""

    @staticmethod
    def _get_source_type() -> str:
        return "fti_feature_store"

    def load(self, dst_path: str | None = None) -> str:
        """The offline store's tables on local disk (downloaded when the root is remote); read
        each at its recorded version to get the rows back."""
        import mlflow.artifacts

        return str(mlflow.artifacts.download_artifacts(self.offline_root, dst_path=dst_path))

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built from a training run's lineage, never guessed from a string

    @classmethod
    def _resolve(cls, raw_source: Any) -> FeatureStoreSource:
        raise NotImplementedError("FeatureStoreSource is built from a run's lineage")

    def to_dict(self) -> dict[str, Any]:
        return {
            "offline_root": self.offline_root,
            "feature_view": self.feature_view,
            "table_versions": dict(self.table_versions),
            "windows": dict(self.windows),
            "data_sha256": self.data_sha256,
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> FeatureStoreSource:
        return cls(**source_dict)


# So that mlflow.data.get_source(...) reads the source of a logged dataset back.
register_dataset_source(FeatureStoreSource)  # type: ignore[arg-type]  # (it keeps classes)


def training_dataset(
    frame: pl.DataFrame, source: FeatureStoreSource, *, name: str, label: str
) -> PolarsDataset:
    """The rows a run trained, validated and tested on, as an MLflow dataset."""
    return from_polars(
        frame,
        source=source,
        targets=label,
        name=name,
        digest=source.data_sha256[:DIGEST_LENGTH],
    )
