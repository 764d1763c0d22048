"""Reference statistics of a model's training data: the contract between the training pipeline,
which writes them with every model version, and monitoring, which compares live traffic with
them.

A version carries ``reference_stats.json`` in the format ``fti-reference-stats/1`` (described in
:mod:`training_pipeline.reference_stats`, which builds it): per numeric feature decile edges and
the share of training values per decile, per categorical feature the share of each value, and
the same histogram of the model's training predictions. The binning of values into those edges
is part of the contract, so both sides call the one :func:`bin_fractions`: a window binned
differently from its reference would show drift that is not there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FORMAT = "fti-reference-stats/1"
REFERENCE_FILE = "reference_stats.json"


def bin_fractions(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Share of ``values`` per bin of ``edges``: the first and last bins are open-ended (values
    outside the training range count in them), and a value on an inner edge belongs to the bin
    above it. Empty ``values``: all zeros; fewer than two edges: no bins."""
    if len(edges) < 2:
        return np.zeros(0)
    if values.size == 0:
        return np.zeros(len(edges) - 1)
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(edges) - 1)
    return counts / values.size
