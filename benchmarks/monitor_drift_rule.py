"""Evaluation of the monitoring drift rule on the real 2013 year (not a speed benchmark).

    python benchmarks/monitor_drift_rule.py [--data-root DIR]

How often does the window-level verdict ("more than 15% of the tested features drifted") fire,
for windows where it should stay quiet and windows where it should fire, under three rules:
significance + PSI only, and with the training-period baseline at the 0.95 and 0.99 quantiles
(:func:`inference_pipeline.monitor.drift.baseline_psi`). References are built with the training
pipeline's own ``reference_stats`` from the model's feature view, as a registered version has.

- quiet: every 7-day window inside Jan-Sep against a Jan-Sep reference (the default training
  split), 40 random half-splits of March (the classic no-drift control);
- drift: every 7-day window of Jun-Aug and each summer month against a Jan-Feb reference;
- unknown: every 7-day window of Oct-Dec against the Jan-Sep reference (out of sample).

Also times one drift report of a week and the baseline of the nine-month training split.
Writes ``benchmarks/results/monitor_drift_rule.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

if __package__:
    from benchmarks import _harness as h
else:
    import _harness as h

NAME = "monitor_drift_rule"
SHARE = 0.15
# rule -> (the baseline's quantile or None, whether the share is taken by feature family)
RULES = {
    "significance + PSI": (None, False),
    "+ baseline q0.95": (0.95, False),
    "+ baseline q0.99": (0.99, False),
    "+ baseline q0.99, share by family (default)": (0.99, True),
}


def year_frame(data_root: Path) -> Any:
    from feature_pipeline.pipeline import run_backfill
    from feature_pipeline.settings import FeaturePipelineSettings
    from shared.feature_store import open_feature_store
    from shared.feature_view import FLIGHT_DELAY_VIEW, build_training_frame

    settings = FeaturePipelineSettings(data_root=data_root)
    if not (data_root / "offline").exists():
        summary = run_backfill(settings, date(2013, 1, 1), date(2013, 12, 31))
        if summary.error:
            raise RuntimeError(summary.error)
    store = open_feature_store(settings)
    try:
        return build_training_frame(store, FLIGHT_DELAY_VIEW, date(2013, 1, 1), date(2014, 1, 1))
    finally:
        store.close()


def evaluate(year: Any) -> dict[str, Any]:
    import numpy as np
    import polars as pl

    from inference_pipeline.monitor.drift import baseline_psi, drift_report, summarize_drift
    from shared.feature_view import FLIGHT_DELAY_VIEW as VIEW
    from training_pipeline.reference_stats import reference_stats

    def between(start: date, end: date) -> pl.DataFrame:
        return year.filter(pl.col("flight_date").is_between(start, end, closed="left"))

    def reference(frame: pl.DataFrame, seed: int = 0) -> dict[str, Any]:
        return reference_stats(
            frame, VIEW.numeric, VIEW.categorical, np.zeros(frame.height), seed=seed
        )

    def weeks(first: date, last: date) -> list[tuple[date, date]]:
        out, start = [], first
        while start + timedelta(days=6) <= last:
            out.append((start, start + timedelta(days=7)))
            start += timedelta(days=7)
        return out

    families = VIEW.feature_families()

    def share(report: pl.DataFrame, by_family: bool) -> float:
        return summarize_drift(report, SHARE, families=families if by_family else None).share

    train = between(date(2013, 1, 1), date(2013, 10, 1))
    winter = between(date(2013, 1, 1), date(2013, 3, 1))
    train_ref, winter_ref = reference(train), reference(winter)
    began = time.perf_counter()
    baselines: dict[str, dict[float, dict[str, float]]] = {"train": {}, "winter": {}}
    for q in (0.95, 0.99):
        baselines["train"][q] = baseline_psi(train_ref, train, 7, quantile=q)
        baselines["winter"][q] = baseline_psi(winter_ref, winter, 7, quantile=q)
    baseline_s = (time.perf_counter() - began) / 4

    in_training = weeks(date(2013, 1, 1), date(2013, 9, 30))
    out_of_sample = weeks(date(2013, 10, 1), date(2013, 12, 31))
    summer = weeks(date(2013, 6, 1), date(2013, 8, 31))
    cases = {
        "weeks in Jan-Sep vs Jan-Sep (quiet)": (train_ref, "train", in_training),
        "weeks in Oct-Dec vs Jan-Sep (out of sample)": (train_ref, "train", out_of_sample),
        "weeks in Jun-Aug vs Jan-Feb (drift)": (winter_ref, "winter", summer),
    }
    results: dict[str, Any] = {}
    report_seconds = []
    for case, (ref, which, windows) in cases.items():
        for rule, (q, by_family) in RULES.items():
            shares = []
            for start, end in windows:
                t = time.perf_counter()
                report = drift_report(
                    ref, between(start, end), None, baselines[which].get(q) if q else None
                )
                report_seconds.append(time.perf_counter() - t)
                shares.append(share(report, by_family))
            results.setdefault(case, {})[rule] = _rates(shares, len(windows))
    for rule, (q, by_family) in RULES.items():
        shares = []
        for month in (6, 7, 8):
            current = between(date(2013, month, 1), date(2013, month + 1, 1))
            days = current["flight_date"].n_unique()
            base = baseline_psi(winter_ref, winter, days, quantile=q) if q else None
            shares.append(share(drift_report(winter_ref, current, None, base), by_family))
        results.setdefault("summer months vs Jan-Feb (drift)", {})[rule] = _rates(shares, 3)
    march = between(date(2013, 3, 1), date(2013, 4, 1))
    rng = np.random.default_rng(2013)
    shares, family_shares, any_feature = [], [], 0
    for draw in range(40):
        half = pl.Series(rng.random(march.height) < 0.5)
        report = drift_report(reference(march.filter(half), seed=draw), march.filter(~half))
        summary = summarize_drift(report, SHARE)
        shares.append(summary.share)
        family_shares.append(share(report, True))
        any_feature += summary.drifted > 0
    results["random halves of March (quiet)"] = {
        "significance + PSI": _rates(shares, 40) | {"any_feature_drifted": any_feature / 40},
        "significance + PSI, share by family": _rates(family_shares, 40),
    }
    return {
        "results": results,
        "seconds": {
            "drift_report_of_a_week_median": statistics.median(report_seconds),
            "baseline_of_nine_months": baseline_s,
        },
    }


def _rates(shares: list[float], windows: int) -> dict[str, Any]:
    return {
        "windows": windows,
        "alarm_rate": sum(s > SHARE for s in shares) / windows,
        "mean_drifted_share": statistics.fmean(shares),
        "max_drifted_share": max(shares),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="a store with the 2013 backfill")
    args = parser.parse_args()
    h.use_repo_packages()
    root = args.data_root or Path(tempfile.mkdtemp(prefix="fti-monitor-bench-"))
    try:
        year = year_frame(root).frame
        payload = evaluate(year)
    finally:
        if args.data_root is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = [
        [case, rule, f"{v['windows']}", f"{v['alarm_rate']:.0%}", f"{v['mean_drifted_share']:.0%}",
         f"{v['max_drifted_share']:.0%}"]
        for case, by_rule in payload["results"].items()
        for rule, v in by_rule.items()
    ]  # fmt: skip
    h.print_table(
        f"Window verdict (drift share > {SHARE:.0%}) on the real 2013 data",
        ["windows", "rule", "n", "alarms", "mean share", "max share"],
        rows,
    )
    seconds = payload["seconds"]
    print(
        f"drift report of a week: {seconds['drift_report_of_a_week_median']:.2f} s (median); "
        f"baseline of the nine-month training split: {seconds['baseline_of_nine_months']:.2f} s"
    )
    print(f"wrote {h.write_results(NAME, payload)}")


if __name__ == "__main__":
    main()
