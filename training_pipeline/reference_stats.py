"""Reference statistics of the training data, for drift monitoring to compare live traffic with.

Saved as ``reference_stats.json`` in every model version. Format ``fti-reference-stats/1``::

    {"format": ..., "split": "train", "rows": n (described), "split_rows": N,
     "numeric": {feature: {"null_fraction", "mean", "std", "min", "max",
                           "bin_edges": [11 decile edges], "bin_fractions": [10 shares],
                           "sample": [<= 1000 values, for KS tests]}},
     "categorical": {feature: {"null_fraction", "frequencies": {value: share}}},
     "prediction": {"bin_edges": [0, .1, ..., 1], "bin_fractions": [...]}}

The statistics describe the whole training split, or a seeded uniform sample of ``MAX_ROWS`` of
its rows when it is larger (``rows`` is then the sample's size, ``split_rows`` the split's):
deciles and shares of a million rows differ from the full split's by about 0.1 %.

Numeric bins are deciles of the training values (PSI on equal-mass bins); values outside the
training range fall in the first or last bin. Raw feature values (before the MDT) are described,
since drift is a property of the data, not of a model's scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from shared.reference_statistics import FORMAT, bin_fractions

SAMPLE_SIZE = 1000
MAX_ROWS = 1_000_000


def numeric_stats(series: pl.Series, *, seed: int) -> dict[str, Any]:
    values = series.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    null_fraction = 1.0 - values.size / max(series.len(), 1)
    if values.size == 0:
        return {"null_fraction": null_fraction, "bin_edges": [], "bin_fractions": [], "sample": []}
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 11))).tolist()
    if len(edges) < 2:
        edges = [edges[0], edges[0]]
    rng = np.random.default_rng(seed)
    sample = rng.choice(values, size=min(SAMPLE_SIZE, values.size), replace=False)
    return {
        "null_fraction": null_fraction,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "bin_edges": edges,
        "bin_fractions": bin_fractions(values, edges).tolist(),
        "sample": np.sort(sample).tolist(),
    }


def categorical_stats(series: pl.Series) -> dict[str, Any]:
    text = series.cast(pl.String)
    counts = text.drop_nulls().value_counts(sort=True)
    total = max(series.len(), 1)
    return {
        "null_fraction": text.null_count() / total,
        "frequencies": {str(row[0]): row[1] / total for row in counts.iter_rows()},
    }


def reference_stats(
    frame: pl.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    predictions: np.ndarray,
    *,
    seed: int = 0,
    split_rows: int | None = None,
) -> dict[str, Any]:
    """Statistics of ``frame`` (the training split, or a sample of ``split_rows``) and of the
    model's ``predictions`` for its rows."""
    prediction_edges = np.linspace(0.0, 1.0, 11).tolist()
    return {
        "format": FORMAT,
        "split": "train",
        "rows": frame.height,
        "split_rows": frame.height if split_rows is None else split_rows,
        "numeric": {name: numeric_stats(frame[name], seed=seed) for name in numeric},
        "categorical": {name: categorical_stats(frame[name]) for name in categorical},
        "prediction": {
            "bin_edges": prediction_edges,
            "bin_fractions": bin_fractions(
                np.asarray(predictions, np.float64), prediction_edges
            ).tolist(),
        },
    }
