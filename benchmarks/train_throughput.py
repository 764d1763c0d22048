"""Training throughput of the flight-delay network (rows/s), on CPU or on a GPU (CUDA, bf16).

    python benchmarks/train_throughput.py                      # CPU, full-year features
    python benchmarks/train_throughput.py --device cuda        # GPU: bf16 autocast + utilisation
    python benchmarks/train_throughput.py --data synthetic     # same shapes, no feature store

It times the real ``train_step`` of ``training_pipeline.loop`` (same model, same autocast
context, same batches as training) for several global batch sizes: warm-up steps first, then
``--repeats`` timed windows of ``--steps`` steps each; the median window is reported. On a GPU it
synchronises around each window and samples ``nvidia-smi`` every 100 ms while it runs to report
mean GPU utilisation and peak memory. Prints a table and writes
``benchmarks/results/train_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from shared.transforms import FeatureMatrices  # noqa: E402
from training_pipeline.config import TrainingConfig  # noqa: E402
from training_pipeline.loop import Tensors, epoch_batches, train_step  # noqa: E402
from training_pipeline.model import TabularNet  # noqa: E402


class GpuSampler:
    """Polls nvidia-smi in a thread: utilisation (%) and memory used (MiB) of one GPU."""

    def __init__(self, index: int, period_s: float = 0.1) -> None:
        self.index, self.period_s = index, period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    [*query, "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout
                util, mem = (float(v) for v in out.strip().split(","))
                self.samples.append((util, mem))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(self.period_s)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean_pct": None, "gpu_mem_used_max_mib": None}
        return {
            "gpu_util_mean_pct": statistics.fmean(u for u, _ in self.samples),
            "gpu_mem_used_max_mib": max(m for _, m in self.samples),
        }


def load_features(
    source: str, data_root: Path | None
) -> tuple[FeatureMatrices, np.ndarray, list[int]]:
    config = TrainingConfig()
    if source == "synthetic":
        rng = np.random.default_rng(0)
        rows, cards = 245_723, [17, 4, 97, 20, 8, 4, 28, 7]  # the full-year train split's shape
        numeric = rng.normal(size=(rows, 70)).astype(np.float32)
        categorical = np.stack([rng.integers(0, c, rows) for c in cards], axis=1)
        labels = (rng.random(rows) < 0.22).astype(np.float32)
        return FeatureMatrices(numeric, categorical), labels, cards
    from shared.feature_store import open_feature_store
    from shared.feature_view import FLIGHT_DELAY_VIEW
    from training_pipeline.config import TrainingSettings
    from training_pipeline.data import load_training_data

    settings = TrainingSettings(**({"data_root": data_root} if data_root else {}))
    store = open_feature_store(settings.store_settings())
    data = load_training_data(store, FLIGHT_DELAY_VIEW, config.windows, config.mdt)
    return data.train.features, data.train.labels, data.mdt.cardinalities


def measure(
    features: FeatureMatrices,
    labels: np.ndarray,
    cards: list[int],
    device: torch.device,
    batch_size: int,
    *,
    steps: int,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    config = TrainingConfig()
    torch.manual_seed(0)
    net = TabularNet.from_config(config.model, features.numeric.shape[1], cards).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.optim.lr)
    data = Tensors.from_split(features, labels, device)
    batches = epoch_batches(len(data), batch_size, seed=0, epoch=1)
    net.train()

    def run(n: int, offset: int) -> None:
        for i in range(n):
            index = batches[(offset + i) % len(batches)]
            train_step(net, optimizer, data.rows(index), config.optim.lr)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(warmup, 0)
    sync()
    sampler = GpuSampler(device.index or 0) if device.type == "cuda" else None
    rates = []
    if sampler:
        sampler.__enter__()
    try:
        for r in range(repeats):
            started = time.perf_counter()
            run(steps, warmup + r * steps)
            sync()
            rates.append(steps * batch_size / (time.perf_counter() - started))
    finally:
        if sampler:
            sampler.__exit__()
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "rows_per_s_median": statistics.median(rates),
        "rows_per_s_min": min(rates),
        "rows_per_s_max": max(rates),
        "epoch_s_estimate": len(data) / statistics.median(rates),
    }
    if sampler:
        result |= sampler.summary()
        result["torch_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data", choices=["store", "synthetic"], default="store")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $FTI_DATA_ROOT")
    parser.add_argument("--batch-sizes", default="512,2048,8192")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is available")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")

    features, labels, cards = load_features(args.data, args.data_root)
    rows = [
        measure(
            features,
            labels,
            cards,
            device,
            int(b),
            steps=args.steps,
            repeats=args.repeats,
            warmup=args.warmup,
        )
        for b in args.batch_sizes.split(",")
    ]
    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "train_rows": len(features),
        "n_numeric": int(features.numeric.shape[1]),
        "n_categorical": int(features.categorical.shape[1]),
        "data": args.data,
    }
    header = f"{'batch':>6} {'rows/s (median)':>16} {'min':>10} {'max':>10} {'epoch s':>8}"
    if device.type == "cuda":
        header += f" {'GPU util %':>10} {'GPU MiB':>8}"
    print(f"training throughput on {environment['device']} ({environment['precision']})")
    print(header)
    for r in rows:
        line = (
            f"{r['batch_size']:>6} {r['rows_per_s_median']:>16,.0f} {r['rows_per_s_min']:>10,.0f}"
            f" {r['rows_per_s_max']:>10,.0f} {r['epoch_s_estimate']:>8.2f}"
        )
        if device.type == "cuda":
            util, mem = r.get("gpu_util_mean_pct"), r.get("gpu_mem_used_max_mib")
            line += f" {util if util is None else round(util, 1)!s:>10} {mem!s:>8}"
        print(line)
    suffix = f"_{args.threads}threads" if args.threads else ""
    out = REPO_ROOT / "benchmarks" / "results" / f"train_throughput_{args.device}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "environment": environment,
                "results": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
