"""Data drift: each feature of a window of scored flights against the training reference.

The reference is ``reference_stats.json`` of the model version (format ``fti-reference-stats/1``,
written by the training pipeline): per numeric feature the decile edges, the share of training
values per decile, the null share, min/max and a sample of 1,000 values; per categorical feature
the share of each value (of all rows) and the null share.

Per feature, three things are measured:

- a **test of the values** (non-null only): two-sample Kolmogorov-Smirnov against the reference
  sample (numeric), chi-square test of homogeneity against the reference counts (categorical);
- a **test of the missing rate**: chi-square on (null, non-null) counts, reference vs window;
- the **Population Stability Index** over the reference deciles (numeric) or the categories
  (categorical), each with one extra bin for missing values, so a feature that goes missing
  moves the PSI too.

**Decision rule.** With thousands of rows a p-value alone flags differences nobody cares
about, and with few rows a PSI alone flags noise. And rows of one week share their weather and
their rolling statistics, so a week is never a random sample of a months-long training period:
on the real 2013 data every single week differs significantly, with PSI >= 0.2, in a third to a
half of the features, inside the training period or not. So a feature is *drifted* when the
change is

1. significant: ``p < drift_p_value`` (the smaller p of the two tests, Bonferroni-corrected for
   the two), **and**
2. large: ``PSI >= drift_psi`` (0.2, the industry's "significant shift"), **and**
3. unusual: PSI above the ``drift_baseline_quantile`` (0.99) of the PSI of every window of the
   same length inside the training period (:func:`baseline_psi`; skipped when the training data
   cannot be read or is shorter than the window).

A significant change with ``PSI >= drift_psi_warn`` (0.1) that is not unusual is *usual* when the
baseline covers it, else a *warning*. Drift is detected for the window when its drifted share
is above ``retrain_drift_share``: by default the mean over feature families (the group a
feature comes from, the fresh window features, the on-demand ones) of each family's drifted
share, or the share of the tested features (``drift_share_by``, see `summarize_drift`).

Out of distribution: numeric values outside the training [min, max], categorical values the
training data never had. Everything here is a pure function of frames and arrays.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from inference_pipeline.monitor.status import (
    ABSENT,
    DRIFT,
    NO_REFERENCE,
    OK,
    TESTED,
    TOO_FEW,
    USUAL,
    WARN,
)
from shared.reference_statistics import bin_fractions

PSI_FLOOR = 1e-4  # share given to empty bins, so PSI stays finite (a common convention)
MIN_EXPECTED = 5.0  # chi-square needs expected counts of about 5 per cell to be trustworthy
MISSING = "(missing)"


@dataclass(frozen=True)
class DriftRule:
    """How a feature is judged (see the module docstring)."""

    p_value: float = 0.01
    psi_drift: float = 0.2
    psi_warn: float = 0.1
    min_values: int = 50

    def status(self, p_value: float, psi_value: float, baseline: float | None = None) -> str:
        """``baseline``: the PSI that windows of the same length inside the training period
        reach (a high quantile); a change no larger than that is the data's usual variation."""
        if p_value >= self.p_value or psi_value < self.psi_warn:
            return OK
        if baseline is not None and psi_value <= baseline:
            return USUAL
        return DRIFT if psi_value >= self.psi_drift else WARN


# -- the statistics ------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population Stability Index: sum of (actual - expected) * ln(actual / expected).

    Both are shares per bin; empty bins count as :data:`PSI_FLOOR` so the index stays finite."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"PSI needs the same bins on both sides, got {e.shape} and {a.shape}")
    return float(psi_rows(e, a[np.newaxis, :])[0])


def psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """:func:`psi` of each row of ``actual`` (windows x bins) against ``expected``, at once."""
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(actual, PSI_FLOOR)
    return np.sum((a - e) * np.log(a / e), axis=1)


KS_EXACT_MAX = 1_000_000  # n1 * n2 up to which the exact p-value is worth its cost


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``).

    Exact p-values for small samples; the asymptotic distribution beyond (scipy's "auto" goes
    exact up to 10,000 per side, ten times slower for a week of flights, same p to 2 digits)."""
    method = "exact" if reference.size * current.size <= KS_EXACT_MAX else "asymp"
    result = stats.ks_2samp(reference, current, alternative="two-sided", method=method)
    return float(result.statistic), float(result.pvalue)


def pool_sparse_columns(table: np.ndarray, min_expected: float = MIN_EXPECTED) -> np.ndarray:
    """Merge the columns of a 2 x k count table whose expected count (under homogeneity) is
    below ``min_expected`` in either row into one column; if that pooled column is still too
    small it joins the smallest remaining column. Keeps the chi-square approximation valid."""
    table = table[:, table.sum(axis=0) > 0]
    total = table.sum()
    if total == 0 or table.shape[1] < 2:
        return table
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / total
    sparse = (expected < min_expected).any(axis=0)
    if not sparse.any():
        return table
    kept = table[:, ~sparse]
    pooled = table[:, sparse].sum(axis=1, keepdims=True)
    pooled_expected = np.outer(table.sum(axis=1), pooled.sum(axis=0)) / total
    if (pooled_expected < min_expected).any() and kept.shape[1] > 0:
        smallest = int(np.argmin(kept.sum(axis=0)))
        kept = kept.copy()
        kept[:, smallest] += pooled[:, 0]
        return kept
    return np.hstack([kept, pooled])


def chi_square_test(
    reference_counts: np.ndarray, current_counts: np.ndarray
) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors over the same categories
    (``scipy.stats.chi2_contingency`` without continuity correction), sparse categories
    pooled first. One category left: nothing to test (statistic 0, p-value 1)."""
    table = pool_sparse_columns(np.vstack([reference_counts, current_counts]).astype(np.float64))
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def missing_rate_test(
    reference_rows: int, reference_null_fraction: float, rows: int, nulls: int
) -> float:
    """p-value of "the window's missing rate equals the reference's" (2 x 2 chi-square)."""
    reference_nulls = round(reference_rows * reference_null_fraction)
    table = np.array(
        [[reference_nulls, reference_rows - reference_nulls], [nulls, rows - nulls]], np.float64
    )
    if (table.sum(axis=0) == 0).any():
        return 1.0  # everything null on both sides, or nothing null on both: no difference
    return chi_square_test(table[0], table[1])[1]


def combined_p_value(p_values: Iterable[float | None]) -> float:
    """Smallest p-value, Bonferroni-corrected for the number of tests that ran."""
    ran = [p for p in p_values if p is not None and not math.isnan(p)]
    return min(1.0, len(ran) * min(ran)) if ran else 1.0


# -- per feature ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftRow:
    """One feature's row of the drift report: the report's columns, in order (a feature that was
    not tested keeps the defaults)."""

    feature: str
    kind: str  # numeric | categorical
    status: str  # DRIFT, WARN, USUAL, OK, ABSENT or NO_REFERENCE
    drifted: bool = field(init=False)  # status == DRIFT
    test: str | None = None  # ks | chi2
    statistic: float | None = None
    p_value: float | None = None  # of the values and the missing rate, corrected for the two
    missing_p_value: float | None = None
    psi: float | None = None
    baseline_psi: float | None = None
    rows: int = 0
    values: int = 0  # non-null
    null_fraction_reference: float | None = None
    null_fraction_current: float | None = None
    ood_rate: float | None = None
    reference_mean: float | None = None
    current_mean: float | None = None
    bins: list[str] = field(default_factory=list)
    reference_fractions: list[float] = field(default_factory=list)
    current_fractions: list[float] = field(default_factory=list)
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "drifted", self.status == DRIFT)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _polars_type(annotation: Any) -> pl.DataType:
    """The column type of a :class:`DriftRow` field (``X | None``: a nullable X)."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return pl.List(_polars_type(item))
    return {str: pl.String(), bool: pl.Boolean(), int: pl.Int64(), float: pl.Float64()}[annotation]


_HINTS = typing.get_type_hints(DriftRow)
REPORT_SCHEMA: dict[str, Any] = {f.name: _polars_type(_HINTS[f.name]) for f in fields(DriftRow)}


def numeric_drift(
    name: str,
    reference: Mapping[str, Any],
    values: pl.Series,
    rule: DriftRule,
    reference_rows: int,
    baseline: float | None = None,
) -> dict[str, Any]:
    """One drift-report row for a numeric feature (see the module docstring for the rule)."""
    rows = values.len()
    if not reference.get("bin_edges") or not reference.get("sample"):
        return DriftRow(
            name, "numeric", NO_REFERENCE, rows=rows, note="no training values to compare"
        ).as_dict()
    present = values.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    nulls = rows - present.size
    edges = [float(e) for e in reference["bin_edges"]]
    ref_null = float(reference["null_fraction"])
    ref_values = (1.0 - ref_null) * np.asarray(reference["bin_fractions"], dtype=np.float64)
    cur_values = (1.0 - nulls / rows) * bin_fractions(present, edges) if rows else ref_values * 0
    statistic = p_values = None
    if present.size >= rule.min_values:
        statistic, p_values = ks_test(np.asarray(reference["sample"], dtype=np.float64), present)
        index = psi([*ref_values, ref_null], [*cur_values, nulls / max(rows, 1)])
        note = ""
    else:
        # Too few values to judge their distribution: only whether the feature is there.
        index = psi([1.0 - ref_null, ref_null], [1.0 - nulls / max(rows, 1), nulls / max(rows, 1)])
        note = "all values null" if present.size == 0 else f"only {present.size} values"
        baseline = None  # the baseline describes the full binning
    missing_p = missing_rate_test(reference_rows, ref_null, rows, nulls)
    p_value = combined_p_value([p_values, missing_p])
    status = rule.status(p_value, index, baseline)
    outside = int(((present < reference["min"]) | (present > reference["max"])).sum())
    return DriftRow(
        name,
        "numeric",
        status,
        test="ks",
        statistic=statistic,
        p_value=p_value,
        missing_p_value=missing_p,
        psi=index,
        baseline_psi=baseline,
        rows=rows,
        values=int(present.size),
        null_fraction_reference=ref_null,
        null_fraction_current=nulls / rows if rows else None,
        ood_rate=outside / present.size if present.size else None,
        reference_mean=reference.get("mean"),
        current_mean=float(present.mean()) if present.size else None,
        bins=[*_edge_labels(edges), MISSING],
        reference_fractions=[*ref_values.tolist(), ref_null],
        current_fractions=[*cur_values.tolist(), nulls / rows if rows else 0.0],
        note=note,
    ).as_dict()


def _edge_labels(edges: Sequence[float]) -> list[str]:
    labels = []
    for i in range(len(edges) - 1):
        low = "-inf" if i == 0 else f"{edges[i]:.4g}"
        high = "+inf" if i == len(edges) - 2 else f"{edges[i + 1]:.4g}"
        labels.append(f"[{low}, {high})")
    return labels


def categorical_drift(
    name: str,
    reference: Mapping[str, Any],
    values: pl.Series,
    rule: DriftRule,
    reference_rows: int,
    baseline: float | None = None,
) -> dict[str, Any]:
    """One drift-report row for a categorical feature (see the module docstring for the rule)."""
    rows = values.len()
    frequencies: dict[str, float] = dict(reference.get("frequencies") or {})
    if not frequencies:
        return DriftRow(
            name, "categorical", NO_REFERENCE, rows=rows, note="no training values"
        ).as_dict()
    text = values.cast(pl.String)
    nulls = text.null_count()
    counts = dict(text.drop_nulls().value_counts().iter_rows())
    present = rows - nulls
    unseen = {k: v for k, v in counts.items() if k not in frequencies}
    categories = [*frequencies, *sorted(unseen, key=lambda k: -unseen[k])]
    ref_counts = np.array([frequencies.get(c, 0.0) * reference_rows for c in categories])
    cur_counts = np.array([counts.get(c, 0) for c in categories], dtype=np.float64)
    statistic = p_values = None
    if present >= rule.min_values:
        statistic, p_values = chi_square_test(ref_counts, cur_counts)
    ref_null = float(reference["null_fraction"])
    ref_shares = [*(ref_counts / reference_rows).tolist(), ref_null]
    cur_shares = [*(cur_counts / max(rows, 1)).tolist(), nulls / max(rows, 1)]
    if present >= rule.min_values:
        index = psi(ref_shares, cur_shares)
        note = f"{len(unseen)} unseen values, e.g. {', '.join(list(unseen)[:3])}" if unseen else ""
    else:
        index = psi([1.0 - ref_null, ref_null], [present / max(rows, 1), nulls / max(rows, 1)])
        note = "all values null" if present == 0 else f"only {present} values"
        baseline = None  # the baseline describes the full binning
    missing_p = missing_rate_test(reference_rows, ref_null, rows, nulls)
    p_value = combined_p_value([p_values, missing_p])
    status = rule.status(p_value, index, baseline)
    return DriftRow(
        name,
        "categorical",
        status,
        test="chi2",
        statistic=statistic,
        p_value=p_value,
        missing_p_value=missing_p,
        psi=index,
        baseline_psi=baseline,
        rows=rows,
        values=int(present),
        null_fraction_reference=ref_null,
        null_fraction_current=nulls / rows if rows else None,
        ood_rate=sum(unseen.values()) / present if present else None,
        bins=[*categories, MISSING],
        reference_fractions=ref_shares,
        current_fractions=cur_shares,
        note=note,
    ).as_dict()


def drift_report(
    reference_stats: Mapping[str, Any],
    current: pl.DataFrame,
    rule: DriftRule | None = None,
    baseline: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """One row per feature of the reference: its test, PSI, status and the binned shares.

    ``baseline`` (see :func:`baseline_psi`) holds per feature the PSI that windows of the same
    length inside the training period reach; without it every significant PSI of at least
    ``rule.psi_drift`` is drift. A feature of the reference that ``current`` lacks is reported
    ``absent`` (not tested)."""
    rule = rule or DriftRule()
    baseline = baseline or {}
    reference_rows = int(reference_stats["rows"])
    rows = []
    kinds = (("numeric", numeric_drift), ("categorical", categorical_drift))
    for kind, measure in kinds:
        for name, reference in reference_stats.get(kind, {}).items():
            if name not in current.columns:
                absent = DriftRow(name, kind, ABSENT, rows=current.height, note="not in the window")
                rows.append(absent.as_dict())
                continue
            rows.append(
                measure(name, reference, current[name], rule, reference_rows, baseline.get(name))
            )
    return pl.DataFrame(rows, schema=REPORT_SCHEMA)


@dataclass(frozen=True)
class DriftSummary:
    tested: int
    drifted: int
    warned: int
    share: float  # what the threshold is compared with: by family, or by feature
    detected: bool
    drifted_features: list[str]
    absent_features: list[str]
    ignored_features: list[str]
    share_by: str = "feature"  # "family": the mean of each family's drifted share
    feature_share: float = 0.0  # drifted / tested, whatever ``share_by``
    drifted_families: dict[str, str] = field(default_factory=dict)  # family -> "drifted/tested"


def share_text(drift: Mapping[str, Any]) -> str:
    """The drifted share as reports say it: "3 of 69 features (19% by family)"."""
    by = " by family" if drift.get("share_by") == "family" else ""
    return f"{drift['drifted']} of {drift['tested']} features ({drift['share']:.0%}{by})"


def families_text(drift: Mapping[str, Any]) -> str:
    """The families with drifted features: "route_stats 4/8, airport_weather 3/9" (or "-")."""
    drifted = drift.get("drifted_families") or {}
    return ", ".join(f"{family} {count}" for family, count in drifted.items()) or "-"


def summarize_drift(
    report: pl.DataFrame,
    share_threshold: float,
    ignore: Sequence[str] = (),
    families: Mapping[str, str] | None = None,
) -> DriftSummary:
    """Share of drifted features among those tested (ignored ones left out of the share).

    With ``families`` (feature -> family, `FeatureView.feature_families`), the share is the
    mean over the tested families of each family's drifted share, so a family of many related
    features weighs as much as a family of few: on 2013's summer weeks against a winter
    reference, the 26 fresh window features (which follow the last hours at an airport, not the
    season) diluted the plain share below 15% in 4 of 12 weeks; by family, 1 of 12, with no
    training-period week above 7% (tests/monitor/test_drift_real_data.py). A feature the mapping
    does not name is a family of its own."""
    counted = report.filter(pl.col("status").is_in(TESTED) & ~pl.col("feature").is_in(ignore))
    drifted = counted.filter(pl.col("status") == DRIFT)["feature"].to_list()
    feature_share = len(drifted) / counted.height if counted.height else 0.0
    share, by_family = feature_share, {}
    if families is not None and counted.height:
        tally: dict[str, list[int]] = {}
        for feature, status in zip(counted["feature"], counted["status"], strict=True):
            counts = tally.setdefault(families.get(feature, feature), [0, 0])
            counts[0] += status == DRIFT
            counts[1] += 1
        share = sum(d / t for d, t in tally.values()) / len(tally)
        by_family = {family: f"{d}/{t}" for family, (d, t) in tally.items() if d}
    return DriftSummary(
        tested=counted.height,
        drifted=len(drifted),
        warned=counted.filter(pl.col("status") == WARN).height,
        share=share,
        detected=counted.height > 0 and share > share_threshold,
        drifted_features=drifted,
        absent_features=report.filter(pl.col("status") == ABSENT)["feature"].to_list(),
        ignored_features=[f for f in ignore if f in set(report["feature"].to_list())],
        share_by="feature" if families is None else "family",
        feature_share=feature_share,
        drifted_families=by_family,
    )


# -- the training period's own variation (baseline) ----------------------------------------


def _numeric_bins(values: pl.Series, reference: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bin index per row (the reference deciles, then one bin for missing) and the reference
    share per bin: the binning :func:`numeric_drift` uses."""
    edges = np.asarray(reference["bin_edges"], dtype=np.float64)
    ref_null = float(reference["null_fraction"])
    ref = (1.0 - ref_null) * np.asarray(reference["bin_fractions"], dtype=np.float64)
    x = values.cast(pl.Float64).fill_nan(None).to_numpy()
    index = np.searchsorted(edges[1:-1], np.nan_to_num(x), side="right")
    index[np.isnan(x)] = ref.size
    return index, np.append(ref, ref_null)


def _categorical_bins(
    values: pl.Series, reference: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Bin index per row (the reference categories, one bin for any unseen value, one for
    missing) and the reference share per bin: the binning :func:`categorical_drift` uses."""
    categories = list(reference["frequencies"])
    shares = [reference["frequencies"][c] for c in categories]
    codes = {c: i for i, c in enumerate(categories)}
    text = values.cast(pl.String)
    coded = text.replace_strict(codes, default=len(categories), return_dtype=pl.Int64)
    # replace_strict sends nulls to the default (unseen) too: missing is its own, last, bin
    index = np.where(text.is_null().to_numpy(), len(categories) + 1, coded.to_numpy())
    ref = np.array([*shares, 0.0, float(reference["null_fraction"])], dtype=np.float64)
    return index, ref


def _window_psi(counts: np.ndarray, reference: np.ndarray, days: int, min_rows: int) -> np.ndarray:
    """PSI of every run of ``days`` consecutive days (rows of ``counts``: days x bins)."""
    cumulative = np.vstack([np.zeros((1, counts.shape[1])), np.cumsum(counts, axis=0)])
    windows = cumulative[days:] - cumulative[:-days]
    totals = windows.sum(axis=1)
    windows = windows[totals >= min_rows] / totals[totals >= min_rows, None]
    return psi_rows(reference, windows)


def baseline_psi(
    reference_stats: Mapping[str, Any],
    training: pl.DataFrame,
    window_days: int,
    *,
    quantile: float = 0.95,
    min_rows: int = 50,
    day_column: str = "flight_date",
) -> dict[str, float]:
    """Per feature, the ``quantile`` of the PSI (against the reference) of every window of
    ``window_days`` consecutive days inside the training data ``training``.

    Rows of one week share their weather and their rolling statistics, so a week is never a
    random sample of a nine-month training period: on the real 2013 data every week, inside the
    training period or not, differs significantly with PSI >= 0.2 in a third to a half of the
    features. A window only counts as drifted where it differs more than the training period's
    own windows did. Empty when the training data spans fewer days than the window."""
    if training.is_empty() or day_column not in training.columns:
        return {}
    day = training[day_column].cast(pl.Date)
    day_index = (day.to_physical() - day.to_physical().min()).to_numpy().astype(np.int64)
    span = int(day_index.max()) + 1
    if span < window_days:
        return {}
    baseline = {}
    for kind in ("numeric", "categorical"):
        for name, reference in reference_stats.get(kind, {}).items():
            if name not in training.columns:
                continue
            if kind == "numeric" and reference.get("bin_edges"):
                index, ref = _numeric_bins(training[name], reference)
            elif kind == "categorical" and reference.get("frequencies"):
                index, ref = _categorical_bins(training[name], reference)
            else:
                continue
            counts = np.bincount(day_index * ref.size + index, minlength=span * ref.size)
            psis = _window_psi(counts.reshape(span, ref.size), ref, window_days, min_rows)
            if psis.size:
                baseline[name] = float(np.quantile(psis, quantile))
    return baseline


# -- out of distribution and predictions ----------------------------------------------------


def out_of_distribution(reference_stats: Mapping[str, Any], current: pl.DataFrame) -> pl.Series:
    """Per row: does any feature hold a value outside the training range or an unseen
    category? (Nulls are missing, not out of distribution: the missing rate is tested apart.)"""
    flags = []
    for name, ref in reference_stats.get("numeric", {}).items():
        if name in current.columns and ref.get("bin_edges"):
            value = pl.col(name).cast(pl.Float64)
            flags.append(((value < ref["min"]) | (value > ref["max"])).fill_null(False))
    for name, ref in reference_stats.get("categorical", {}).items():
        if name in current.columns and ref.get("frequencies"):
            value = pl.col(name).cast(pl.String)
            flags.append((~value.is_in(list(ref["frequencies"]))).fill_null(False))
    if not flags or current.is_empty():
        return pl.Series("ood", [False] * current.height, dtype=pl.Boolean)
    return current.select(pl.any_horizontal(flags).alias("ood")).to_series()


def prediction_drift(
    reference: Mapping[str, Any], probabilities: np.ndarray, reference_rows: int, rule: DriftRule
) -> dict[str, Any]:
    """The window's predicted probabilities against the training predictions' histogram:
    chi-square test of homogeneity and PSI over the same ten bins, judged by the same rule."""
    edges = [float(e) for e in reference["bin_edges"]]
    ref_shares = np.asarray(reference["bin_fractions"], dtype=np.float64)
    values = np.asarray(probabilities, dtype=np.float64)
    values = values[~np.isnan(values)]
    cur_shares = bin_fractions(values, edges)
    result: dict[str, Any] = {
        "rows": int(values.size),
        "bins": _edge_labels(edges),
        "reference_fractions": ref_shares.tolist(),
        "current_fractions": cur_shares.tolist(),
        "current_mean": float(values.mean()) if values.size else None,
        # the reference keeps no mean; the histogram's gives it to within half a bin
        "reference_mean_from_bins": float(np.dot(ref_shares, _bin_centres(edges))),
    }
    if values.size < rule.min_values:
        return result | {
            "statistic": None,
            "p_value": None,
            "psi": None,
            "status": TOO_FEW,
            "drifted": False,
        }
    statistic, p_value = chi_square_test(ref_shares * reference_rows, cur_shares * values.size)
    index = psi(ref_shares, cur_shares)
    status = rule.status(p_value, index)
    return result | {
        "statistic": statistic,
        "p_value": p_value,
        "psi": index,
        "status": status,
        "drifted": status == DRIFT,
    }


def _bin_centres(edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    return (e[:-1] + e[1:]) / 2
