"""Model-dependent transforms: fitted on training rows only, pure, JSON round trip, OOV index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.transforms import OOV_INDEX, FeatureMatrices, MDTState, apply_mdt, fit_mdt

pytestmark = pytest.mark.unit


@pytest.fixture
def train() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "distance": [100.0, 200.0, None, 400.0, float("nan")],
            "seats": pl.Series([10, 20, 30, 40, 50], dtype=pl.Int16),
            "carrier": ["AA", "AA", "UA", "B6", None],
            "hour": pl.Series([5, 5, 5, 7, 9], dtype=pl.Int8),
        }
    )


def test_fit_learns_median_mean_std_and_frequency_ordered_vocabulary(train: pl.DataFrame) -> None:
    state = fit_mdt(train, ["distance", "seats"], ["carrier", "hour"])
    distance = state.numeric[0]
    assert distance.fill == pytest.approx(200.0)
    assert distance.mean == pytest.approx(700 / 3)
    assert distance.std == pytest.approx(np.std([100, 200, 400]))
    assert state.categorical[0].vocabulary == ("AA", "B6", "UA")  # count desc, then value
    assert state.categorical[1].vocabulary == ("5", "7", "9")
    assert state.cardinalities == [4, 4]
    assert state.n_numeric == 4 and state.n_categorical == 2


def test_apply_imputes_scales_flags_missing_and_maps_unknown_to_oov(train: pl.DataFrame) -> None:
    state = fit_mdt(train, ["distance"], ["carrier"])
    serving = pl.DataFrame({"distance": [None, 200.0], "carrier": ["ZZ", "AA"]})
    m = apply_mdt(serving, state)
    assert m.numeric.dtype == np.float32 and m.categorical.dtype == np.int64
    s = state.numeric[0]
    np.testing.assert_allclose(m.numeric[:, 0], [(200 - s.mean) / s.std] * 2, rtol=1e-6)
    np.testing.assert_array_equal(m.numeric[:, 1], [1.0, 0.0])  # missing indicator
    np.testing.assert_array_equal(m.categorical[:, 0], [OOV_INDEX, 1])


def test_matrices_keep_indicators_as_bytes_and_build_the_model_input_per_rows(
    train: pl.DataFrame,
) -> None:
    state = fit_mdt(train, ["distance", "seats"], ["carrier"])
    serving = pl.DataFrame(
        {"distance": [None, 200.0, 50.0], "seats": [3.0, None, None], "carrier": ["AA"] * 3}
    )
    m = apply_mdt(serving, state)
    assert m.values.dtype == np.float32 and m.missing.dtype == np.bool_
    assert m.missing.tolist() == [[True, False], [False, True], [False, True]]
    # The model's input: the values, then the indicators as 0/1, for any rows taken first.
    np.testing.assert_array_equal(m.numeric, np.hstack([m.values, m.missing]).astype(np.float32))
    np.testing.assert_array_equal(m.rows(1, 3).numeric, m.numeric[1:3])
    np.testing.assert_array_equal(m.take(np.array([2, 0])).numeric, m.numeric[[2, 0]])
    # 4 + 1 bytes per numeric feature and row instead of 4 + 4.
    assert m.nbytes == 3 * (2 * 5 + 1 * 8)
    with pytest.raises(ValueError, match="same shape"):
        FeatureMatrices(m.values, m.missing[:, :1], m.categorical)


def test_rare_categories_map_to_oov_so_the_model_learns_it(train: pl.DataFrame) -> None:
    state = fit_mdt(train, [], ["carrier"], min_frequency=2)
    assert state.categorical[0].vocabulary == ("AA",)
    out = apply_mdt(train, state).categorical[:, 0]
    np.testing.assert_array_equal(out, [1, 1, 0, 0, 0])


def test_state_depends_on_training_rows_only(train: pl.DataFrame) -> None:
    """MDT fitted on train only: other splits cannot change it, whatever their values."""
    state = fit_mdt(train, ["distance", "seats"], ["carrier"])
    validation = pl.DataFrame(
        {"distance": [1e6], "seats": pl.Series([999], dtype=pl.Int16), "carrier": ["NEW"]}
    )
    both = pl.concat([train.select(validation.columns), validation])
    assert fit_mdt(both, ["distance", "seats"], ["carrier"]) != state  # it would leak...
    assert fit_mdt(train, ["distance", "seats"], ["carrier"]) == state  # ...so we fit on train
    assert apply_mdt(validation, state).categorical[0, 0] == OOV_INDEX


def test_json_round_trip_is_exact(train: pl.DataFrame) -> None:
    state = fit_mdt(train, ["distance", "seats"], ["carrier", "hour"], clip=5.0)
    again = MDTState.from_json(state.to_json())
    assert again == state
    np.testing.assert_array_equal(apply_mdt(train, again).numeric, apply_mdt(train, state).numeric)


def test_constant_column_and_all_null_column_do_not_divide_by_zero() -> None:
    frame = pl.DataFrame({"c": [3.0, 3.0], "n": pl.Series([None, None], dtype=pl.Float32)})
    state = fit_mdt(frame, ["c", "n"], [])
    m = apply_mdt(frame, state)
    assert np.isfinite(m.numeric).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_fit_is_deterministic_under_row_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "x": rng.normal(size=50),
            "k": rng.choice(["a", "b", "c", "d"], size=50).tolist(),
        }
    )
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    a, b = fit_mdt(frame, ["x"], ["k"]), fit_mdt(shuffled, ["x"], ["k"])
    assert a.categorical == b.categorical
    assert a.numeric[0].fill == b.numeric[0].fill
    assert a.numeric[0].mean == pytest.approx(b.numeric[0].mean, rel=1e-12)


def test_fit_on_parquet_files_equals_fit_in_memory(tmp_path: Path) -> None:
    """A training split too large for memory is fitted from its files, a column at a time;
    however the rows are cut into files, the state is the in-memory one, to the last bit."""
    rng = np.random.default_rng(3)
    big = pl.DataFrame(
        {
            "distance": rng.normal(500, 200, 5000),
            "seats": pl.Series(rng.integers(10, 400, 5000), dtype=pl.Int16),
            "carrier": rng.choice(["AA", "UA", "B6", "DL"], 5000),
            "hour": pl.Series(rng.integers(5, 23, 5000), dtype=pl.Int8),
        }
    )
    files = []
    for i, part in enumerate(big.iter_slices(777)):
        files.append(tmp_path / f"{i}.parquet")
        part.write_parquet(files[-1])
    args = (["distance", "seats"], ["carrier", "hour"])
    in_memory = fit_mdt(big, *args, min_frequency=2)
    assert fit_mdt(pl.scan_parquet(files), *args, min_frequency=2) == in_memory
    assert fit_mdt(big.lazy(), *args, min_frequency=2) == in_memory
