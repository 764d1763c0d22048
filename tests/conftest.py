"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from feature_pipeline.pipeline import run_backfill
from feature_pipeline.settings import FeaturePipelineSettings
from shared.feature_store import FeatureStore, open_feature_store


@pytest.fixture(scope="session")
def year_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the full-year 2013 backfill, built once per test session.

    Tests must treat it as read-only; a test that writes builds its own root."""
    root = tmp_path_factory.mktemp("year")
    summary = run_backfill(
        FeaturePipelineSettings(data_root=root), date(2013, 1, 1), date(2013, 12, 31)
    )
    assert summary.error is None, summary.error
    return root


@pytest.fixture
def year_store(year_root: Path) -> Iterator[FeatureStore]:
    store = open_feature_store(FeaturePipelineSettings(data_root=year_root))
    yield store
    store.close()
