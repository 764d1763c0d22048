"""The reference model: gradient-boosted trees on the same features and the same split.

It sees exactly the network's inputs (the MDT matrices: imputed, scaled numerics with missing
indicators, and category indices declared categorical), so the comparison measures the model,
not the features. Early stopping uses the same validation window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from shared.transforms import FeatureMatrices
from training_pipeline.config import BaselineConfig

log = logging.getLogger(__name__)


def design_matrix(features: FeatureMatrices) -> np.ndarray:
    return np.hstack([features.numeric, features.categorical.astype(np.float32)])


@dataclass(frozen=True)
class Baseline:
    model: HistGradientBoostingClassifier
    fit_seconds: float

    def predict(self, features: FeatureMatrices, block_rows: int = 262_144) -> np.ndarray:
        """Probabilities in row order; the float32 design matrix is built a block at a time."""
        out = np.empty(len(features), dtype=np.float32)
        for start in range(0, len(features), block_rows):
            block = design_matrix(features.rows(start, start + block_rows))
            out[start : start + len(block)] = self.model.predict_proba(block)[:, 1]
        return out


def sample(
    features: FeatureMatrices, labels: np.ndarray, size: int, seed: int
) -> tuple[FeatureMatrices, np.ndarray]:
    """A seeded uniform sample of ``size`` rows in row order (all rows when there are fewer)."""
    if len(labels) <= size:
        return features, labels
    index = np.sort(np.random.default_rng(seed).choice(len(labels), size, replace=False))
    return features.take(index), labels[index]


def train_baseline(
    train: FeatureMatrices,
    train_labels: np.ndarray,
    validation: FeatureMatrices,
    validation_labels: np.ndarray,
    config: BaselineConfig,
    *,
    seed: int,
) -> Baseline:
    """Fit on at most ``config.max_rows`` rows of each split (a seeded sample beyond that)."""
    train, train_labels = sample(train, train_labels, config.max_rows, seed)
    validation, validation_labels = sample(validation, validation_labels, config.max_rows, seed)
    categorical = np.r_[
        np.zeros(2 * train.values.shape[1], dtype=bool), np.ones(train.categorical.shape[1], bool)
    ]
    model = HistGradientBoostingClassifier(
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        l2_regularization=config.l2_regularization,
        categorical_features=categorical,
        early_stopping=True,
        random_state=seed,
    )
    started = time.perf_counter()
    model.fit(
        design_matrix(train),
        train_labels,
        X_val=design_matrix(validation),
        y_val=validation_labels,
    )
    seconds = time.perf_counter() - started
    log.info("baseline: %d boosting iterations in %.1f s", model.n_iter_, seconds)
    return Baseline(model, seconds)
