"""The training data of a run as an MLflow dataset: its schema and size, and the feature store
tables and versions it was read from.

MLflow records a dataset as a schema, a profile, a digest and a *source*. The source here is
:class:`FeatureStoreSource`: the offline store's root, the feature view, and the Delta table
version of every feature group the view read, so the same rows can be read back by time travel.
The digest is the run's training-data sha256 (cut to MLflow's 36-character limit; the whole
hash is in the source and in the run's ``data_sha256`` tag). The rows themselves stay in the
store (at 100x the 2013 data they are tens of millions): the dataset is metadata, its schema
inferred from a sample of the rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.polars_dataset import infer_schema

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


class TrainingDataset(MetaDataset):
    """A run's training data as MLflow records it: no rows, a schema, how many rows."""

    def __init__(
        self, source: FeatureStoreSource, *, name: str, sample: pl.DataFrame, rows: int
    ) -> None:
        super().__init__(
            source,
            name=name,
            digest=source.data_sha256[:DIGEST_LENGTH],
            schema=infer_schema(sample),
        )
        self.rows, self.columns = rows, sample.width

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.rows, "num_elements": self.rows * self.columns}

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self.profile)}
