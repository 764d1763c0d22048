"""The fresh window features of an online batch: the held, row and vectorised paths.

``shared.fresh_features.online_fresh_columns`` computes a batch of up to
``shared.recent_departure_rows.MAX_QUERIES`` flights from the indexes kept with the SQLite
store's held rows (``recent_departure_held``) or, where it declines or the store does not hold
them, with the plain-Python row path, and larger batches with
``shared.recent_departures.recent_departure_features`` (numpy, the implementation training and
the batch job run). This measures the three on what the online store really answers:
the flights of 2013-12-31 in departure order, each as of its departure minus the champion's
lead, in batches of consecutive flights (as coalesced requests arrive), their rows read once
from the online store of ``--data-root`` (``--order random``: each batch's flights drawn from
the whole day, as the one-flight requests of ``online_load.py`` at 16 connections coalesce).
The paths are timed on the same batches, alternating, over ``--rounds`` rounds; the values are
checked equal (bit for bit) on every batch. The table gives the median microseconds per batch
of each path, its range over rounds, and the vectorised path's ratio to the row path: where it
crosses 1 is where ``MAX_QUERIES`` belongs. The held path is timed with its indexes built (as a
serving process finds them between two writes of the event tables).

    python benchmarks/fresh_features.py --data-root /tmp/main1
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from _harness import print_table, use_repo_packages, write_results

use_repo_packages()

from online_load import real_flights, request_bodies  # noqa: E402

NAME = "fresh_features"
SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a root with a champion")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=300, help="batches per size and round")
    parser.add_argument(
        "--order",
        choices=["departure", "random"],
        default="departure",
        help="a batch's flights: consecutive in departure order, or drawn from the whole day",
    )
    args = parser.parse_args()

    import numpy as np

    from inference_pipeline.model_artifact import load_serving_model
    from inference_pipeline.settings import InferenceSettings
    from shared.feature_store import open_feature_store
    from shared.fresh_features import (
        FreshFeatures,
        FreshReads,
        held_fresh_values,
        online_fresh_known_since,
        online_fresh_reads,
        online_fresh_rows,
    )
    from shared.prediction_time import epoch_us
    from shared.recent_departure_rows import MAX_QUERIES, recent_departure_rows
    from shared.recent_departures import DepartureLog, Schedule, recent_departure_features
    from shared.registry import ModelRegistry

    settings = InferenceSettings(data_root=args.data_root)
    with tempfile.TemporaryDirectory(prefix="fti-fresh-bench-") as work:
        model = load_serving_model(
            ModelRegistry(settings.registry_settings()), "champion", Path(work) / "artifact"
        )
    fresh = model.view.fresh or FreshFeatures()
    tolerance_us = fresh.tolerance // timedelta(microseconds=1)
    store = open_feature_store(settings.store_settings())
    flights = real_flights(args.data_root)

    @dataclass(frozen=True)
    class Batch:
        events: list[Any]
        schedule: list[Any]
        reads: FreshReads
        found: Any  # the store's answer to the ranges: HeldRows from the SQLite store's memory
        watermark: int | None
        known_since: int | None

    def batch_inputs(body: dict[str, Any]) -> Batch:
        requests = [
            f | {"flight_date": date.fromisoformat(f["flight_date"])} for f in body["flights"]
        ]
        times = [epoch_us(datetime.fromisoformat(f["as_of"])) for f in body["flights"]]
        reads = online_fresh_reads(requests, times)
        found, ranges = store.get_online_rows_and_ranges([reads.progress], reads.ranges)
        events, schedule, watermark = online_fresh_rows(found[0], ranges)
        known = online_fresh_known_since(watermark)
        return Batch(events, schedule, reads, ranges, watermark, known)

    def held_path(b: Batch) -> Any:
        return held_fresh_values(fresh, b.reads, b.found, b.watermark, b.known_since)

    def rows_path(b: Batch) -> Any:
        return recent_departure_rows(
            b.events,
            b.schedule,
            b.reads.queries,
            covered_until=b.watermark,
            tolerance_us=tolerance_us,
            known_since=b.known_since,
        )

    def vectorised_path(b: Batch) -> Any:
        return recent_departure_features(
            DepartureLog.from_rows(b.events),
            Schedule.from_rows(b.schedule),
            b.reads.queries,
            covered_until=b.watermark,
            tolerance=fresh.tolerance,
            known_since=b.known_since,
        )

    paths = {"held": held_path, "rows": rows_path, "vectorised": vectorised_path}
    per_size: dict[int, dict[str, list[float]]] = {s: {p: [] for p in paths} for s in SIZES}
    events_read: dict[int, float] = {}
    shuffled = random.Random(13)
    for size in SIZES:
        if args.order == "random":
            singles = request_bodies(flights, 1, model.lead_minutes)
            bodies = [
                {"flights": [b["flights"][0] for b in shuffled.sample(singles, size)]}
                for _ in range(args.batches)
            ]
        else:
            step = max(1, len(flights) // args.batches)
            bodies = request_bodies(flights, size, model.lead_minutes)[::step]
        inputs = [batch_inputs(body) for body in bodies]
        events_read[size] = statistics.median(len(b.events) + len(b.schedule) for b in inputs)
        for one in inputs:  # the same numbers, every batch (and the held indexes built)
            a, b, c = held_path(one), rows_path(one), vectorised_path(one)
            assert a is not None and b is not None, "the 2013 data's delays are whole minutes"
            for name in fresh.features:
                np.testing.assert_array_equal(a[name], c[name], err_msg=name)
                np.testing.assert_array_equal(b[name], c[name], err_msg=name)
        for _ in range(args.rounds):
            for name, path in paths.items():
                began = time.perf_counter()
                for one in inputs:
                    path(one)
                per_size[size][name].append((time.perf_counter() - began) / len(inputs) * 1e6)
    store.close()

    rows = []
    results = []
    for size in SIZES:
        h, r, v = (per_size[size][p] for p in ("held", "rows", "vectorised"))
        ratio = [b / a for a, b in zip(r, v, strict=True)]
        results.append(
            {
                "flights_per_batch": size,
                "rows_read_median": events_read[size],
                "held_us": h,
                "rows_us": r,
                "vectorised_us": v,
                "vectorised_over_rows": ratio,
            }
        )
        rows.append(
            [
                str(size),
                f"{events_read[size]:.0f}",
                *(f"{statistics.median(t):.0f} ({min(t):.0f}-{max(t):.0f})" for t in (h, r, v)),
                f"x{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})",
            ]
        )
    print_table(
        f"Fresh window features per batch ({args.order} order), us (median, range over "
        f"{args.rounds} rounds); held or row path used up to {MAX_QUERIES} flights",
        ["flights", "rows read", "held path", "row path", "vectorised", "vectorised / rows"],
        rows,
    )
    write_results(
        NAME,
        {"max_queries": MAX_QUERIES, "rounds": args.rounds, "order": args.order, "sizes": results},
    )


if __name__ == "__main__":
    main()
