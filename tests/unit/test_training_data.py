"""Training data in bounded memory: built a chunk of days at a time, the same whatever the chunk."""

from __future__ import annotations

import gc
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from shared.feature_store import FeatureStore
from shared.feature_view import FLIGHT_DELAY_VIEW
from tests.training_fixtures import SMALL_WINDOWS
from training_pipeline.config import MDTConfig
from training_pipeline.data import FrameDigest, date_chunks, frame_sha256, load_training_data

pytestmark = pytest.mark.unit


def test_date_chunks_cover_the_range_once() -> None:
    chunks = list(date_chunks(date(2013, 1, 1), date(2013, 1, 11), 4))
    assert [(a.day, b.day) for a, b in chunks] == [(1, 5), (5, 9), (9, 11)]


def test_chunked_build_equals_one_read_of_the_whole_range(year_store: FeatureStore) -> None:
    whole = load_training_data(
        year_store, FLIGHT_DELAY_VIEW, SMALL_WINDOWS, MDTConfig(), chunk_days=400
    )
    chunked = load_training_data(
        year_store, FLIGHT_DELAY_VIEW, SMALL_WINDOWS, MDTConfig(), chunk_days=3
    )
    assert len(chunked.train.files) > 1 and len(whole.train.files) == 1
    assert chunked.lineage == whole.lineage  # data_sha256, counts, table versions
    assert chunked.mdt == whole.mdt
    for a, b in zip(whole.splits(), chunked.splits(), strict=True):
        assert a.rows == b.rows == a.frame.height
        assert_frame_equal(a.frame, b.frame)
        np.testing.assert_array_equal(a.features.numeric, b.features.numeric)
        np.testing.assert_array_equal(a.features.categorical, b.features.categorical)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_a_sample_is_the_rows_at_its_indices_and_the_files_go_with_the_data(
    year_store: FeatureStore,
) -> None:
    data = load_training_data(
        year_store, FLIGHT_DELAY_VIEW, SMALL_WINDOWS, MDTConfig(), chunk_days=5
    )
    train = data.train
    index, sample = train.sample(500, seed=1, columns=["flight_id", "distance"])
    assert len(index) == sample.height == 500 and np.all(np.diff(index) > 0)
    assert_frame_equal(sample, train.frame.select("flight_id", "distance")[index])
    everything, rows = train.sample(train.rows + 1, seed=1)
    np.testing.assert_array_equal(everything, np.arange(train.rows))
    assert_frame_equal(rows, train.frame)

    folder = Path(train.files[0]).parent
    assert folder.is_dir()
    del data, train, sample, rows
    gc.collect()
    assert not folder.exists()


def test_the_data_hash_depends_on_the_values_not_on_the_chunks() -> None:
    rows = 150_000  # more than two hash blocks
    frame = pl.DataFrame(
        {
            "flight_id": [f"f{i}" for i in range(rows)],
            "distance": pl.Series(np.arange(rows) % 977, dtype=pl.Int16),
            "wx_temp": pl.Series(np.linspace(-5, 30, rows), dtype=pl.Float32),
            "flight_date": pl.date_range(date(2013, 1, 1), date(2013, 12, 31), eager=True).sample(
                rows, with_replacement=True, seed=1
            ),
        }
    )
    whole = frame_sha256(frame)
    for sizes in ([70_000, 80_000], [1, 65_535, 65_536, 18_928], [149_999, 1]):
        digest, start = FrameDigest(), 0
        for size in sizes:
            digest.update(frame.slice(start, size))
            start += size
        assert digest.hexdigest() == whole
    null_not_zero = frame.with_columns(pl.col("distance").replace(0, None))
    other_text = frame.with_columns(pl.col("flight_id").str.replace("f149999", "f14999 9"))
    for changed in (null_not_zero, other_text, frame.reverse()):
        assert frame_sha256(changed) != whole
