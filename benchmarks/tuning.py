"""A real hyperparameter search on the full 2013 year, and what it buys on the test window.

    python benchmarks/tuning.py                                   # 16 trials, 35 min at most
    python benchmarks/tuning.py --trials 20 --timeout 2400 --trial-epochs 12 --name tuning_12 \
        --data-root /tmp/year

As an operator runs it, each step its own process through the CLIs, on one full-year data root
(built here with the feature pipeline's backfill unless ``--data-root`` holds one):

1. ``python -m training_pipeline tune --trials N --timeout S --epochs E`` (one worker, SQLite
   storage in a fresh folder): trials train on Jan-Sep and are scored on October; the test
   window (Nov-Dec) is not read.
2. ``python -m training_pipeline train --promote never`` with the default config, and
   ``train --config <tuned file> --promote never`` with the study's best: both with the same
   epoch budget (``--epochs``, default each file's: 12 for the default, the trials' own for the
   tuned file, which is exactly the best trial's config), judged on the same test window.

Prints a table (trials by state, wall time, best validation ROC AUC, test ROC AUC of both, with
the load average) and writes ``benchmarks/results/tuning.json``. One study is one sample of a
noisy search on a shared machine: read the difference as that, not as a law.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import REPO_ROOT, print_table, use_repo_packages, write_results

use_repo_packages()

NAME = "tuning"


def cli(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """One CLI run: its summary (the last stdout line), wall seconds and load average."""
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return summary | {
        "wall_s": round(time.perf_counter() - began, 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def best_validation_auc(run_id: str, tracking_uri: str) -> float:
    """The best epoch's validation ROC AUC of a training run (its curve in MLflow)."""
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, "val_roc_auc")
    return max(m.value for m in history)


def training(summary: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    return {
        "version": summary["version"],
        "test_roc_auc": round(summary["network"]["roc_auc"], 4),
        "test_log_loss": round(summary["network"]["log_loss"], 4),
        "baseline_test_roc_auc": (
            round(summary["baseline"]["roc_auc"], 4) if summary.get("baseline") else None
        ),
        "best_val_roc_auc": round(best_validation_auc(summary["run_id"], tracking_uri), 4),
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "wall_s": summary["wall_s"],
        "load_average_1m": summary["load_average_1m"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=2100.0, help="seconds for the study")
    parser.add_argument("--trial-epochs", type=int, default=4, help="maximum epochs per trial")
    parser.add_argument("--epochs", type=int, default=None, help="the two trainings' (12)")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="a full-year backfill (built when empty)"
    )
    parser.add_argument("--name", default=NAME, help="benchmarks/results/<name>.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fti-tuning-") as tmp:
        root = args.data_root or Path(tmp) / "data"
        work = Path(tmp) / "work"  # registry, study and checkpoints: fresh on every run
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
        env |= {
            "FTI_DATA_ROOT": str(work),
            "FTI_OFFLINE_ROOT": str(root / "offline"),
            "FTI_CHECKPOINT_DIR": str(work / "checkpoints"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),  # contended CPUs: see training.md
        }
        if not (root / "offline").is_dir():
            backfill = ["feature_pipeline", "backfill", "--start", "2013-01-01"]
            cli([*backfill, "--end", "2013-12-31", "--data-root", str(root)], env, ok=(0, 3))
        tracking = f"sqlite:///{work.resolve()}/mlflow.db"
        tuned_file = Path(tmp) / "tuned.json"
        study = cli(
            [
                "training_pipeline", "tune", "--trials", str(args.trials),
                "--timeout", str(args.timeout), "--epochs", str(args.trial_epochs),
                "--study", "benchmark", "--output", str(tuned_file),
            ],
            env,
        )  # fmt: skip
        tuned_config = json.loads(tuned_file.read_text())
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        train = ["training_pipeline", "train", "--promote", "never", *epochs]
        default = training(cli(train, env, ok=(0, 3)), tracking)
        tuned = training(cli([*train, "--config", str(tuned_file)], env, ok=(0, 3)), tracking)
    result = {
        "trials_requested": args.trials,
        "timeout_s": args.timeout,
        "trial_epochs": args.trial_epochs,
        "study": {
            "trials": study["trials"],
            "wall_s": study["wall_s"],
            "seconds": study["seconds"],
            "load_average_1m": study["load_average_1m"],
            "best_trial": study["best"]["trial"],
            "best_val_roc_auc": round(study["best"]["val_roc_auc"], 4),
            "best_params": study["best"]["params"],
        },
        "tuned_config": {k: tuned_config[k] for k in ("model", "optim")},
        "default": default,
        "tuned": tuned,
    }
    trials = ", ".join(f"{k.lower()} {v}" for k, v in sorted(study["trials"].items()))
    print_table(
        f"Hyperparameter search, full 2013 year ({trials}; study {study['wall_s']:.0f} s, "
        f"load 1m {'-'.join(f'{x:.1f}' for x in study['load_average_1m'])})",
        ["config", "best val ROC AUC", "test ROC AUC", "test log loss", "epochs (best)", "s"],
        [
            [
                name,
                f"{r['best_val_roc_auc']:.4f}",
                f"{r['test_roc_auc']:.4f}",
                f"{r['test_log_loss']:.4f}",
                f"{r['epochs']} ({r['best_epoch']})",
                f"{r['wall_s']:.0f}",
            ]
            for name, r in (("default", default), ("tuned", tuned))
        ],
    )
    print(f"best trial {study['best']['trial']}: val ROC AUC {study['best']['val_roc_auc']:.4f}")
    path = write_results(args.name, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
