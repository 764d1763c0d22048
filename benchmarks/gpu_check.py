"""GPU check of the training loop: one script for a bare GPU box, no feature store needed.

On the GPU box - Python 3.12 with torch (CUDA), numpy, scikit-learn (pandas, pyarrow, typer and
rich may be there too; polars, deltalake, pandera, pydantic and mlflow are NOT needed) - from a
copy of the repository (only ``benchmarks/``, ``training_pipeline/`` and ``shared/`` are read):

    python benchmarks/gpu_check.py                        # synthetic matrices, full-year shapes
    python benchmarks/gpu_check.py --matrices year.npz    # the real full-year matrices

The real matrices are exported beforehand on a machine with the feature store (after the
full-year backfill; about 25 MB, so they travel with the copy):

    FTI_DATA_ROOT=data python benchmarks/gpu_check.py --export year.npz

(read exactly as ``python -m training_pipeline train`` reads them: the same feature view at the
same lead, ``--lead-minutes`` / ``FTI_LEAD_MINUTES`` / the config's 60, through
``training_pipeline.data.read_training_data``; the lead travels in the file's config).

What it runs, all with the real ``training_pipeline.loop`` and the default config:

1. throughput of whole training epochs at global batch 2048 and 8192: the previous loop, the
   device-resident steps eager, and captured as a CUDA graph (``train_throughput.measure``):
   rows/s, GPU utilisation (``nvidia-smi``, else ``torch.cuda.utilization``), memory;
2. the default fit (``loop.fit``: all epochs with early stopping, evaluation and checkpoints) at
   batch 2048 and 8192: seconds after start-up, epochs, GPU utilisation, the network's test ROC
   AUC, and the test ROC AUC of the exported float32 TorchScript model scored on CPU as Triton's
   Python backend runs it (with the largest difference between the two).

It prints a table with the issue's goals (>= 20 M rows/s at batch 8192, >= 5 M at 2048, GPU
utilisation >= 70 %, default fit < 2 s) and writes ``benchmarks/results/gpu_check_<device>.json``
(or ``--out``). Without a GPU it runs on CPU (what the test does, with ``--scale 0.01``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput, beside this file

import contextlib

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from train_throughput import (
    REPO_ROOT,
    GpuSampler,
    Matrices,
    environment,
    export_matrices,
    load_npz,
    measure,
    namespace,
    new_network,
    store_matrices,
    synchronize,
    synthetic_matrices,
)

from training_pipeline.distributed import DistContext
from training_pipeline.loop import Tensors, fit, predict
from training_pipeline.model import export_torchscript

BATCHES = (2048, 8192)
GOALS = {2048: 5e6, 8192: 20e6}  # rows/s on an H200 or H100 (issue 15)
GOAL_UTIL_PCT = 70.0
GOAL_FIT_S = 2.0
ABSENT_ON_GPU_BOXES = ("polars", "deltalake", "pandera", "pydantic", "mlflow")


def served_probabilities(net: torch.nn.Module, features: Tensors, workdir: Path) -> np.ndarray:
    """The exported TorchScript model scored on CPU in float32, as Triton's Python backend runs
    it (``torch.jit.load(map_location="cpu")``, inference mode)."""
    path = export_torchscript(net, workdir / "model.pt")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated")
        module = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.inference_mode():
        batch = features.slice(0, len(features))
        out = module(batch.numeric.cpu(), batch.categorical.cpu())
    return out.squeeze(1).numpy()


def run_fit(
    matrices: Matrices, device: torch.device, batch: int, seed: int, epochs: int | None = None
) -> dict[str, Any]:
    """The default fit at global batch ``batch``, timed from the call to its return."""
    config = matrices.config
    optim = namespace(config["optim"], batch_size=batch, epochs=epochs or config["optim"]["epochs"])
    train = matrices.splits["train"].tensors(device)
    validation = matrices.splits["validation"].tensors(device)
    test = matrices.splits["test"]
    net = new_network(matrices, device, seed)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    sampler = GpuSampler(device) if device.type == "cuda" else None
    synchronize(device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if sampler:
            sampler.__enter__()
        started = time.perf_counter()
        try:
            result = fit(
                net,
                train,
                validation,
                optim,
                seed=config["seed"],
                ctx=ctx,  # type: ignore[arg-type]
                checkpoint_dir=Path(tmp),
                fingerprint="gpu-check",
            )
            synchronize(device)
            seconds = time.perf_counter() - started
        finally:
            if sampler:
                sampler.__exit__()
        net.load_state_dict(result.best_state)
        tensors = test.tensors(device)
        network = predict(net, tensors, int(optim.eval_batch_size)).float().cpu().numpy()
        served = served_probabilities(net, tensors, Path(tmp))
    history = result.state.history
    return {
        "batch_size": batch,
        "fit_seconds": seconds,
        "epochs": result.state.epoch,
        "best_epoch": result.state.best_epoch,
        "cuda_graph": result.cuda_graph,
        "rows_per_s_median": result.rows_per_s,
        "epoch_seconds": [r.seconds for r in history],
        "val_roc_auc_best": result.state.best_val_auc,
        "test_roc_auc_network": float(roc_auc_score(test.labels, network)),
        "test_roc_auc_served": float(roc_auc_score(test.labels, served)),
        "max_abs_diff_network_vs_served": float(np.abs(network - served).max()),
        **(sampler.summary() if sampler else {}),
        "torch_max_memory_allocated_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
    }


def box() -> dict[str, Any]:
    """What the figures depend on, and which of the store's packages are (not) installed."""
    absent = []
    for name in ABSENT_ON_GPU_BOXES:
        try:
            __import__(name)
        except ImportError:
            absent.append(name)
    driver = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nvidia_driver": driver,
        "load_average": os.getloadavg(),
        "packages_absent": absent,
    }


def met(value: float | None, goal: float, *, below: bool = False) -> str:
    if value is None:
        return "n/a"
    return "yes" if (value < goal if below else value >= goal) else "NO"


def report(payload: dict[str, Any], device: torch.device) -> None:
    env = payload["environment"]
    print(
        f"\nGPU check on {env['device']} ({env['precision']}, torch {env['torch']}, "
        f"CUDA {env['cuda']}), data: {env['data']}"
    )
    graph = "device+graph" if device.type == "cuda" else "device"
    print("\nthroughput of whole epochs (rows/s, median of the rounds)")
    for r in payload["throughput"]:
        line = f"  batch {r['batch_size']:>5}: "
        line += ", ".join(
            f"{name} {r[name]['rows_per_s_median']:,.0f}"
            + (
                f" (GPU {r[name]['gpu_util_mean_pct']:.0f}%)"
                if r[name].get("gpu_util_mean_pct") is not None
                else ""
            )
            for name in ("previous", "device", "device+graph")
            if name in r
        )
        print(line)
    print("\ndefault fit (early stopping, evaluation and checkpoints included)")
    for f in payload["fits"]:
        util = f.get("gpu_util_mean_pct")
        print(
            f"  batch {f['batch_size']:>5}: {f['fit_seconds']:.2f} s, {f['epochs']} epochs "
            f"(best {f['best_epoch']}), CUDA graph {f['cuda_graph']}, "
            f"{f['rows_per_s_median']:,.0f} rows/s"
            + (f", GPU {util:.0f}%" if util is not None else "")
            + f"; test ROC AUC network {f['test_roc_auc_network']:.4f}, served "
            f"{f['test_roc_auc_served']:.4f} (max |diff| {f['max_abs_diff_network_vs_served']:.4f})"
        )
    print("\ngoals (issue 15, on an H200 or H100)")
    for r in payload["throughput"]:
        rate = r[graph]["rows_per_s_median"]
        goal = GOALS.get(r["batch_size"])
        if goal:
            print(
                f"  batch {r['batch_size']}: {rate / 1e6:.2f} M rows/s, goal >= "
                f"{goal / 1e6:.0f} M: {met(rate, goal)}"
            )
        util = r[graph].get("gpu_util_mean_pct")
        print(
            f"  batch {r['batch_size']}: GPU utilisation {util}, goal >= {GOAL_UTIL_PCT:.0f} %: "
            f"{met(util, GOAL_UTIL_PCT)}"
        )
    default = next(f for f in payload["fits"] if f["batch_size"] == BATCHES[0])
    print(
        f"  default fit {default['fit_seconds']:.2f} s, goal < {GOAL_FIT_S:.0f} s: "
        f"{met(default['fit_seconds'], GOAL_FIT_S, below=True)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrices", type=Path, default=None, help=".npz from --export")
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        help="write the store's full-year matrices here and exit",
    )
    parser.add_argument("--data-root", type=Path, default=None, help="for --export")
    parser.add_argument(
        "--lead-minutes",
        type=int,
        default=None,
        help="for --export: as train's (default: FTI_LEAD_MINUTES, else the config's 60)",
    )
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic rows x this")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-window-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0, help="network initialisation")
    parser.add_argument("--epochs", type=int, default=None, help="fits: default the config's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.export:
        path = export_matrices(store_matrices(args.data_root, args.lead_minutes), args.export)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        sys.exit("error: --device cuda but no CUDA device is available")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.ones(1, device=device).sum().item()  # start-up (CUDA context) is not timed
    matrices = load_npz(args.matrices) if args.matrices else synthetic_matrices(args.scale)
    throughput = [
        measure(
            matrices,
            device,
            b,
            rounds=args.rounds,
            min_window_s=args.min_window_s,
            on_round=lambda line: print(line, flush=True),
        )
        for b in BATCHES
    ]
    fits = [run_fit(matrices, device, b, args.seed, args.epochs) for b in BATCHES]
    payload = {
        "benchmark": "gpu_check",
        "environment": environment(device, matrices) | box(),
        "goals": {"rows_per_s": GOALS, "gpu_util_pct": GOAL_UTIL_PCT, "fit_s": GOAL_FIT_S},
        "throughput": throughput,
        "fits": fits,
    }
    report(payload, device)
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"gpu_check_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
