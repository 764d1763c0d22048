"""Fixtures the SQLite online store's cache tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.feature_store.online_sqlite import SQLiteOnlineStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a test's SQLite online store file lives."""
    return tmp_path / "online.sqlite"


@pytest.fixture
def cached(path: Path) -> Iterator[SQLiteOnlineStore]:
    """A SQLite online store at ``path`` with its default caches."""
    store = SQLiteOnlineStore(path)
    yield store
    store.close()
