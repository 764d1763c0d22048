"""Batch scoring throughput: the same rows through Triton and in-process PyTorch, side by side.

The rows are real: the point-in-time feature frame of every flight in ``--start``..``--end``
(default: December 2013), transformed with the champion's MDT state, exactly what the nightly
batch job sends. Scorers, each timed ``--repeats`` times on the same matrices (median):

- ``in-process``: the registered TorchScript file run here (`score_in_process`, the batch job's
  ``--in-process``: it loads the file on each call, as one batch run does);
- ``in-process, warm``: the same module loaded once and warmed up (TorchScript's profiling
  executor optimises after the first calls), the fairest comparison with a Triton that has
  been serving for a while;
- ``triton-http``: the same file served by a managed Triton (Python backend, CPU), called with
  the batch job's own `score_with_triton` (HTTP, binary tensors) in ``--batch-size`` requests.

Goal (issue 4): Triton rows/s at least half of in-process PyTorch on the same rows.

    python benchmarks/batch_scoring.py --data-root /tmp/main1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from _harness import print_table, use_repo_packages, write_results

use_repo_packages()

NAME = "batch_scoring"
GOAL_RATIO = 0.5


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def warm_in_process(torchscript: Path, matrices: Any, batch_size: int, repeats: int) -> float:
    """Median seconds of the same loop as `score_in_process`, the module loaded once."""
    import torch

    module = torch.jit.load(str(torchscript), map_location="cpu").eval()

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, len(matrices), batch_size):
                part = matrices.rows(start, start + batch_size)
                module(torch.from_numpy(part.numeric), torch.from_numpy(part.categorical)).numpy()

    for _ in range(3):
        run()
    return timed(run, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a root with a champion")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2013, 12, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2013, 12, 31))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    from inference_pipeline.model_artifact import load_serving_model, publish_for_triton
    from inference_pipeline.scoring import score_in_process, score_with_triton, transform
    from inference_pipeline.settings import InferenceSettings
    from inference_pipeline.triton_server import TritonServer
    from shared.feature_store import open_feature_store
    from shared.feature_view import build_scoring_frame, pinned_versions, read_spine
    from shared.registry import ModelRegistry

    settings = InferenceSettings(data_root=args.data_root)
    work = Path(tempfile.mkdtemp(prefix="fti-batch-bench-"))
    model = load_serving_model(
        ModelRegistry(settings.registry_settings()), "champion", work / "artifact"
    )
    store = open_feature_store(settings.store_settings())
    try:
        versions = pinned_versions(store, model.view)
        spine = read_spine(
            store, model.view, args.start, args.end + timedelta(days=1), versions=versions
        )
        frame = build_scoring_frame(store, model.view, spine, versions=versions)
    finally:
        store.close()
    matrices = transform(frame, model.mdt)
    rows = len(matrices)

    in_process_s, local = timed(
        lambda: score_in_process(model.torchscript, matrices, args.batch_size), args.repeats
    )
    warm_s = warm_in_process(model.torchscript, matrices, args.batch_size, args.repeats)
    publish_for_triton(model, work / "repository", "cpu")
    with TritonServer.start_local(work / "repository", work / "runtime") as server:
        server.load_model(model.triton_name)
        client = server.http_client()
        score_with_triton(client, model.triton_name, model.version, matrices, args.batch_size)
        triton_s, served = timed(
            lambda: score_with_triton(
                client, model.triton_name, model.version, matrices, args.batch_size
            ),
            args.repeats,
        )
    max_diff = float(np.max(np.abs(local - served))) if rows else 0.0
    ratio = in_process_s / triton_s
    warm_ratio = warm_s / triton_s
    results = {
        "rows": rows,
        "batch_size": args.batch_size,
        "window": [str(args.start), str(args.end)],
        "model_version": model.version,
        "in_process": {"seconds": in_process_s, "rows_per_s": rows / in_process_s},
        "triton_http": {"seconds": triton_s, "rows_per_s": rows / triton_s},
        "in_process_warm": {"seconds": warm_s, "rows_per_s": rows / warm_s},
        "triton_over_in_process": ratio,
        "triton_over_in_process_warm": warm_ratio,
        "max_abs_probability_difference": max_diff,
        "goal_ratio": GOAL_RATIO,
        "goal_met": min(ratio, warm_ratio) >= GOAL_RATIO,
    }
    print_table(
        f"batch scoring, {rows:,} flights ({args.start}..{args.end}), batch {args.batch_size}",
        ["scorer", "seconds (median)", "rows/s"],
        [
            ["in-process PyTorch", f"{in_process_s:.3f}", f"{rows / in_process_s:,.0f}"],
            ["in-process, warm module", f"{warm_s:.3f}", f"{rows / warm_s:,.0f}"],
            ["Triton (HTTP, binary)", f"{triton_s:.3f}", f"{rows / triton_s:,.0f}"],
        ],
    )
    met = min(ratio, warm_ratio) >= GOAL_RATIO
    print(
        f"Triton / in-process rows/s: {ratio:.2f}, / warm in-process: {warm_ratio:.2f} "
        f"(goal >= {GOAL_RATIO}): {'met' if met else 'NOT met'}; "
        f"same probabilities to {max_diff:.1e}"
    )
    print(f"wrote {write_results(NAME, results)}")


if __name__ == "__main__":
    main()
