"""Training throughput of the real loop (rows/s), on CPU or CUDA, beside the loop it replaced.

    python benchmarks/train_throughput.py                        # CPU, full-year matrices (store)
    python benchmarks/train_throughput.py --data synthetic       # same shapes, no feature store
    python benchmarks/train_throughput.py --data matrices.npz    # exported by gpu_check.py export
    python benchmarks/train_throughput.py --device cuda          # + CUDA graph, GPU utilisation

Implementations, each with a fresh network of the default config:

- ``previous``: the loop before the device-resident one, kept here as the reference - row indices
  built on the host each epoch, copied to the device and gathered per batch, default AdamW
  (a Python loop over parameters on CPU, ``foreach`` on CUDA), the learning rate set per step;
- ``device``: ``training_pipeline.loop.TrainSteps`` run eagerly (the CPU and DDP path);
- ``device+graph`` (CUDA only): the same steps captured as one CUDA graph (the one-GPU path).

Whole epochs are timed (shuffle and the end-of-epoch wait for the device included), as training
runs them: after one untimed epoch each (capture included), ``--rounds`` rounds alternate the
implementations (a, b, a, b, ...), each timing at least ``--min-window-s`` of epochs, so noise from
other work hits them alike; the table gives the median, range and the median paired ratio to
``previous``, of wall-clock rows/s and of rows per CPU-second of the process (on a shared CPU the
steadier figure: it leaves out the time other processes held the cores). On CUDA
``nvidia-smi`` (or ``torch.cuda.utilization``) is sampled during each window. Writes
``benchmarks/results/train_throughput_<device>.json`` (load average per round).

Imports no polars, pydantic or mlflow unless ``--data store``: ``gpu_check.py`` (same folder) uses
it on bare GPU boxes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training_pipeline.loop import (  # noqa: E402
    BatchPlan,
    Tensors,
    TrainSteps,
    autocast,
    epoch_batches,
    lr_at,
)
from training_pipeline.model import TabularNet  # noqa: E402

DEFAULT_CONFIG = Path(__file__).with_name("default_training_config.json")
# The full-year default split (2013: train Jan-Sep, validate Oct, test Nov-Dec).
YEAR_ROWS = {"train": 245_723, "validation": 28_653, "test": 54_145}
YEAR_CARDINALITIES = [17, 4, 97, 20, 8, 4, 28, 7]
# The default view's numeric features (the fresh window features included); the model's numeric
# input has one missing indicator per feature too.
YEAR_NUMERIC_FEATURES = 61


@dataclass(frozen=True)
class SplitMatrices:
    """One split's MDT matrices as ``shared.transforms.FeatureMatrices`` holds them (values
    float32, missing bool, categorical int64) and float32 labels."""

    values: np.ndarray
    missing: np.ndarray
    categorical: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def tensors(self, device: torch.device) -> Tensors:
        return Tensors(
            torch.from_numpy(self.values).to(device),
            torch.from_numpy(self.missing).to(device),
            torch.from_numpy(self.categorical).to(device),
            torch.from_numpy(self.labels).to(device),
        )


@dataclass(frozen=True)
class Matrices:
    splits: dict[str, SplitMatrices]
    cardinalities: list[int]
    config: dict[str, Any]  # the resolved TrainingConfig (JSON form)
    source: str

    @property
    def n_numeric(self) -> int:
        return 2 * int(self.splits["train"].values.shape[1])


def default_config() -> dict[str, Any]:
    """``TrainingConfig()`` as JSON, read from the committed file (a test keeps it equal), so
    that boxes without pydantic train with the real defaults."""
    config: dict[str, Any] = json.loads(DEFAULT_CONFIG.read_text())
    return config


def synthetic_matrices(scale: float = 1.0, seed: int = 0) -> Matrices:
    """Matrices of the full-year shapes (``scale`` x the rows) with a learnable label (base rate
    about 0.2): a stand-in where the feature store is not installed. Its ROC AUC says that the
    loop learns, not how good the real model is."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(scale=0.4, size=YEAR_NUMERIC_FEATURES)
    effects = [rng.normal(scale=0.3, size=c) for c in YEAR_CARDINALITIES]
    splits = {}
    for name, rows in YEAR_ROWS.items():
        n = max(64, int(rows * scale))
        values = np.clip(rng.normal(size=(n, YEAR_NUMERIC_FEATURES)), -8, 8)
        missing = rng.random((n, YEAR_NUMERIC_FEATURES)) < 0.03
        values[missing] = 0.0
        categorical = np.stack([rng.integers(0, c, n) for c in YEAR_CARDINALITIES], axis=1)
        logit = -1.6 + values @ weights * 0.5
        logit += sum(e[categorical[:, j]] for j, e in enumerate(effects))
        labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        splits[name] = SplitMatrices(
            values.astype(np.float32), missing, categorical.astype(np.int64), labels
        )
    return Matrices(splits, list(YEAR_CARDINALITIES), default_config(), f"synthetic x{scale:g}")


def load_npz(path: Path) -> Matrices:
    """Matrices written by :func:`export_matrices` (``gpu_check.py export``)."""
    with np.load(path, allow_pickle=False) as data:
        splits = {}
        for name in YEAR_ROWS:
            splits[name] = SplitMatrices(
                np.ascontiguousarray(data[f"{name}_values"], dtype=np.float32),
                data[f"{name}_missing"].astype(bool),
                data[f"{name}_categorical"].astype(np.int64),
                data[f"{name}_labels"].astype(np.float32),
            )
        meta = json.loads(str(data["meta"]))
    return Matrices(splits, meta["cardinalities"], meta["config"], f"{path.name} ({meta['about']})")


def store_matrices(data_root: Path | None, lead_minutes: int | None = None) -> Matrices:
    """The real matrices of the default config, read from the feature store (needs polars & co)
    exactly as ``python -m training_pipeline train`` reads them: the same feature view at the
    same lead (``lead_minutes``, else ``FTI_LEAD_MINUTES``, else the config's: the precedence of
    ``train --lead-minutes``), through the same function."""
    from training_pipeline.config import TrainingConfig, TrainingSettings
    from training_pipeline.data import read_training_data

    settings = TrainingSettings(**({"data_root": data_root} if data_root else {}))
    lead = lead_minutes if lead_minutes is not None else settings.lead_minutes
    config = TrainingConfig().with_overrides({"lead_minutes": "--lead-minutes"}, lead_minutes=lead)
    data = read_training_data(settings, config)
    splits = {
        s.name: SplitMatrices(
            s.features.values, s.features.missing, s.features.categorical, s.labels
        )
        for s in data.splits()
    }
    root = settings.data_root
    return Matrices(splits, data.mdt.cardinalities, config.model_dump(mode="json"), f"store {root}")


def export_matrices(matrices: Matrices, path: Path) -> Path:
    """Write the matrices compactly: values float32, missing indicators and categories as small
    integers (the full year: about 25 MB), plus the cardinalities and the config."""
    arrays: dict[str, np.ndarray] = {}
    for name, split in matrices.splits.items():
        arrays[f"{name}_values"] = split.values
        arrays[f"{name}_missing"] = split.missing.astype(np.uint8)
        arrays[f"{name}_categorical"] = split.categorical.astype(np.int16)
        arrays[f"{name}_labels"] = split.labels.astype(np.uint8)
    meta = {
        "cardinalities": matrices.cardinalities,
        "config": matrices.config,
        "about": matrices.source,
    }
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def matrices_from(source: str, data_root: Path | None = None) -> Matrices:
    if source == "synthetic":
        return synthetic_matrices()
    if source == "store":
        return store_matrices(data_root)
    return load_npz(Path(source))


def namespace(section: dict[str, Any], **changes: Any) -> SimpleNamespace:
    """A config section as the attribute object the loop and the model read."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    return SimpleNamespace(**(values | changes))


def new_network(matrices: Matrices, device: torch.device, seed: int = 0) -> TabularNet:
    torch.manual_seed(seed)
    model = namespace(matrices.config["model"])
    return TabularNet.from_config(model, matrices.n_numeric, matrices.cardinalities).to(device)  # type: ignore[arg-type]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PreviousLoop:
    """The training loop before the device-resident one (the reference of this benchmark), on
    the matrices as they were then: one float32 numeric matrix, the indicators as 0/1 floats."""

    def __init__(self, net: TabularNet, train: Tensors, optim: SimpleNamespace) -> None:
        self.net, self.train, self.optim = net, train, optim
        self.numeric = torch.cat([train.values, train.missing.to(train.values.dtype)], dim=1)
        self.optimizer = torch.optim.AdamW(
            net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay
        )
        self.device = train.labels.device

    def epoch(self, epoch: int) -> None:
        losses = []
        batches = epoch_batches(len(self.train), self.optim.batch_size, seed=0, epoch=epoch)
        for step, index in enumerate(batches):
            index = index.to(self.device)
            numeric, categorical = self.numeric[index], self.train.categorical[index]
            labels = self.train.labels[index]
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(
                    step,
                    total_steps=len(batches),
                    base_lr=self.optim.lr,
                    warmup=self.optim.warmup_steps,
                    min_ratio=self.optim.min_lr_ratio,
                )
            with autocast(self.device):
                logits = self.net(numeric, categorical).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        float(torch.stack(losses).sum())


class DeviceLoop:
    """``TrainSteps`` of the real loop, eager or captured as a CUDA graph."""

    def __init__(
        self, net: TabularNet, train: Tensors, optim: SimpleNamespace, *, graph: bool
    ) -> None:
        plan = BatchPlan.of(len(train), optim.batch_size)
        self.steps = TrainSteps(
            net, net, train, namespace(vars(optim), epochs=1), plan, capturable=graph
        )
        self.captured = graph and self.steps.capture()
        if graph and not self.captured:
            raise RuntimeError("CUDA graph capture failed (see the log)")

    def epoch(self, epoch: int) -> None:
        self.steps.run_epoch(0, epoch, 0)


class GpuSampler:
    """GPU utilisation (%) and memory used (MiB) while it runs: ``nvidia-smi`` every 100 ms, or
    ``torch.cuda.utilization()`` (pynvml) where nvidia-smi is missing."""

    def __init__(self, device: torch.device, period_s: float = 0.1) -> None:
        self.device, self.period_s = device, period_s
        self.samples: list[tuple[float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[float, float | None]:
        index = self.device.index or 0
        if shutil.which("nvidia-smi"):
            out = subprocess.run(
                [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            util, mem = (float(v) for v in out.strip().split(","))
            return util, mem
        return float(torch.cuda.utilization(self.device)), None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except (
                OSError,
                ValueError,
                RuntimeError,
                ModuleNotFoundError,
                subprocess.SubprocessError,
            ):
                return  # no way to read utilisation here: reported as None
            self._stop.wait(self.period_s)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict[str, float | None]:
        utils = [u for u, _ in self.samples]
        mems = [m for _, m in self.samples if m is not None]
        return {
            "gpu_util_mean_pct": statistics.fmean(utils) if utils else None,
            "gpu_mem_used_max_mib": max(mems) if mems else None,
        }


def timed_window(
    loop: PreviousLoop | DeviceLoop, first_epoch: int, min_seconds: float, device: torch.device
) -> tuple[float, float, int, dict[str, float | None]]:
    """(wall seconds, CPU seconds of this process, epochs) of whole epochs run until at least
    ``min_seconds`` have passed. On a shared CPU the CPU seconds are the steadier figure: wall
    time also counts the time other processes held the cores."""
    sampler = GpuSampler(device) if device.type == "cuda" else None
    epochs = 0
    with sampler if sampler else _nothing():
        started, cpu_started = time.perf_counter(), time.process_time()
        while True:
            loop.epoch(first_epoch + epochs)
            epochs += 1
            synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        cpu = time.process_time() - cpu_started
    return elapsed, cpu, epochs, sampler.summary() if sampler else {}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def implementations(device: torch.device) -> list[str]:
    return (
        ["previous", "device", "device+graph"] if device.type == "cuda" else ["previous", "device"]
    )


def build(
    name: str, matrices: Matrices, train: Tensors, batch: int, device: torch.device
) -> PreviousLoop | DeviceLoop:
    optim = namespace(matrices.config["optim"], batch_size=batch)
    net = new_network(matrices, device)
    net.train()
    if name == "previous":
        return PreviousLoop(net, train, optim)
    return DeviceLoop(net, train, optim, graph=name == "device+graph")


def measure(
    matrices: Matrices,
    device: torch.device,
    batch: int,
    *,
    rounds: int,
    min_window_s: float,
    names: list[str] | None = None,
    on_round: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Interleaved rounds of every implementation at one global batch size."""
    train = matrices.splits["train"].tensors(device)
    plan = BatchPlan.of(len(train), batch)
    rows_per_epoch = plan.batches * plan.per_batch
    loops = {
        name: build(name, matrices, train, batch, device)
        for name in names or implementations(device)
    }
    for loop in loops.values():
        loop.epoch(0)  # untimed: allocations, cuBLAS handles, lazy state
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        entry: dict[str, Any] = {"round": r + 1, "load_average_1m": os.getloadavg()[0]}
        for name, loop in loops.items():
            seconds, cpu, epochs, gpu = timed_window(loop, 1 + r * 1000, min_window_s, device)
            entry[name] = {
                "rows_per_s": epochs * rows_per_epoch / seconds,
                "rows_per_cpu_s": epochs * rows_per_epoch / max(cpu, 1e-9),
                "epochs": epochs,
                "seconds": seconds,
                "cpu_seconds": cpu,
                **gpu,
            }
        per_round.append(entry)
        on_round(
            f"  batch {batch} round {r + 1}/{rounds} (load {entry['load_average_1m']:.1f}): "
            + ", ".join(
                f"{n} {entry[n]['rows_per_s']:,.0f} rows/s ({entry[n]['rows_per_cpu_s']:,.0f} per "
                "CPU-s)"
                for n in loops
            )
        )
    summary: dict[str, Any] = {
        "batch_size": batch,
        "rows_per_epoch": rows_per_epoch,
        "rounds": per_round,
    }
    for name in loops:
        summary[name] = {}
        for key in ("rows_per_s", "rows_per_cpu_s"):
            rates = [e[name][key] for e in per_round]
            summary[name] |= {
                f"{key}_median": statistics.median(rates),
                f"{key}_min": min(rates),
                f"{key}_max": max(rates),
            }
        summary[name] |= {
            f"{prefix}ratio_to_previous_median": statistics.median(
                e[name][key] / e["previous"][key] for e in per_round
            )
            if "previous" in loops
            else None
            for prefix, key in (("", "rows_per_s"), ("cpu_", "rows_per_cpu_s"))
        }
        utils = [e[name].get("gpu_util_mean_pct") for e in per_round]
        if device.type == "cuda":
            known = [u for u in utils if u is not None]
            summary[name]["gpu_util_mean_pct"] = statistics.fmean(known) if known else None
    if device.type == "cuda":
        summary["torch_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return summary


def environment(device: torch.device, matrices: Matrices) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "data": matrices.source,
        "train_rows": len(matrices.splits["train"]),
        "n_numeric": matrices.n_numeric,
        "cardinalities": matrices.cardinalities,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data", default="store", help="store | synthetic | path of a .npz")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $FTI_DATA_ROOT")
    parser.add_argument("--batch-sizes", default="2048,8192")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-window-s", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is available")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    matrices = matrices_from(args.data, args.data_root)
    load_before = os.getloadavg()
    results = [
        measure(
            matrices,
            device,
            int(b),
            rounds=args.rounds,
            min_window_s=args.min_window_s,
            on_round=lambda line: print(line, flush=True),
        )
        for b in args.batch_sizes.split(",")
    ]
    env = environment(device, matrices) | {
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print(
        f"\ntraining throughput on {env['device']} ({env['precision']}), {env['data']}, "
        f"{env['torch_threads']} torch threads; rows/s of whole epochs, median [min-max] "
        f"of {args.rounds} interleaved rounds"
    )
    for r in results:
        for name in implementations(device):
            s = r[name]
            ratio = s["ratio_to_previous_median"]
            util = s.get("gpu_util_mean_pct")
            cpu_ratio = s["cpu_ratio_to_previous_median"]
            print(
                f"  batch {r['batch_size']:>6}  {name:<13} {s['rows_per_s_median']:>12,.0f} "
                f"[{s['rows_per_s_min']:,.0f}-{s['rows_per_s_max']:,.0f}]"
                + (f"  x{ratio:.2f} vs previous" if ratio else "")
                + f"  per CPU-s {s['rows_per_cpu_s_median']:,.0f} "
                f"[{s['rows_per_cpu_s_min']:,.0f}-{s['rows_per_cpu_s_max']:,.0f}]"
                + (f" x{cpu_ratio:.2f}" if cpu_ratio else "")
                + (f"  GPU {util:.0f}%" if util is not None else "")
            )
    suffix = f"_{args.threads}threads" if args.threads else ""
    out = (
        args.out
        or REPO_ROOT / "benchmarks" / "results" / f"train_throughput_{args.device}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"benchmark": "train_throughput", "environment": env, "results": results}, indent=1
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
