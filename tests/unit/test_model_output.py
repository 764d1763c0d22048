"""The service refuses a model's non-finite answer by name: JSON would carry it as ``null``
where the response schema promises a probability."""

from __future__ import annotations

import numpy as np
import pytest

from inference_pipeline.scoring import finite_probabilities
from shared.errors import ModelOutputInvalid


def test_finite_probabilities_pass_unchanged() -> None:
    values = np.array([0.0, 0.25, 1.0], dtype=np.float32)
    assert finite_probabilities(values, "flight_delay v3") is values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_answer_is_refused_naming_the_model_and_the_count(bad: float) -> None:
    values = np.array([0.5, bad, 0.1, bad], dtype=np.float32)
    with pytest.raises(ModelOutputInvalid, match=r"flight_delay v3 answered 2 non-finite .* of 4"):
        finite_probabilities(values, "flight_delay v3")
