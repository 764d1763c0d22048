"""Test ROC AUC (Nov-Dec 2013) of the network and the boosted-trees baseline by prediction lead,
with and without the fresh window features (issue 12).

    python benchmarks/lead_quality.py                   # leads 15,60,120, with and without fresh
    python benchmarks/lead_quality.py --leads 0,60 --epochs 4 --data-root /tmp/year
    python benchmarks/lead_quality.py --variants fresh  # only the view with the fresh features

Each lead is one ``python -m training_pipeline train --lead-minutes L --promote never`` in its
own process, as an operator runs it, on one full-year data root (built here with the feature
pipeline's backfill unless ``--data-root`` holds one): every training, validation and test row
is read as of departure - lead. ``--promote never`` keeps the runs independent (no champion, so
no no-regression comparison between them). Prints a table with the load average beside each run
and writes ``benchmarks/results/lead_quality.json``.

Each lead trains twice from the same data root: the default view (``fresh``: the fresh window
features of ``shared.recent_departures`` computed as of T from the departure events) and the
same view without them (``without``: a config file with ``fresh_features = false``), so the
two differ only by those features. Issue 12's goal: the network's ROC AUC >= 0.75 at lead 60.
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

NAME = "lead_quality"


def backfill(root: Path, env: dict[str, str]) -> None:
    args = ["feature_pipeline", "backfill", "--start", "2013-01-01", "--end", "2013-12-31"]
    code = subprocess.call([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env)
    if code not in (0, 3):  # 3: written, the one real bad weather row quarantined
        raise SystemExit(f"backfill failed with exit code {code}")


VARIANTS = {"fresh": True, "without": False}


def train(
    lead: int, variant: str, epochs: int | None, env: dict[str, str], workdir: Path
) -> dict[str, Any]:
    config = workdir / f"{variant}.json"
    config.write_text(json.dumps({"fresh_features": VARIANTS[variant]}))
    args = ["training_pipeline", "train", "--lead-minutes", str(lead), "--promote", "never"]
    args += ["--config", str(config)]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode not in (0, 3):
        raise SystemExit(f"training at lead {lead} failed ({done.returncode}):\n{done.stderr}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "lead_minutes": lead,
        "fresh_features": VARIANTS[variant],
        "version": summary["version"],
        "network_roc_auc": round(summary["network"]["roc_auc"], 4),
        "baseline_roc_auc": (
            round(summary["baseline"]["roc_auc"], 4) if summary.get("baseline") else None
        ),
        "network_log_loss": round(summary["network"]["log_loss"], 4),
        "test_rows": int(summary["network"]["rows"]),
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "data_sha256": summary["data_sha256"],
        "seconds": round(time.perf_counter() - began, 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", default="15,60,120", help="comma-separated minutes")
    parser.add_argument(
        "--variants", default="fresh,without", help="fresh (default view), without, or both"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's (12)")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="a full-year backfill (built when empty)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fti-lead-quality-") as tmp:
        root = args.data_root or Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
        env |= {
            "FTI_DATA_ROOT": str(root),
            "FTI_CHECKPOINT_DIR": str(Path(tmp) / "checkpoints"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),  # contended CPUs: see training.md
        }
        if not (root / "offline").is_dir():
            backfill(root, env)
        variants = args.variants.split(",")
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
        runs = []
        for lead in args.leads.split(","):
            for variant in variants:
                runs.append(train(int(lead), variant, args.epochs, env, Path(tmp)))
                print(json.dumps(runs[-1]), flush=True)  # a long run shows its progress
    print_table(
        "Test ROC AUC (Nov-Dec 2013) by prediction lead, with and without the fresh features",
        ["lead (min)", "fresh", "network", "boosted trees", "epochs (best)", "seconds", "load 1m"],
        [
            [
                str(r["lead_minutes"]),
                "yes" if r["fresh_features"] else "no",
                f"{r['network_roc_auc']:.4f}",
                "-" if r["baseline_roc_auc"] is None else f"{r['baseline_roc_auc']:.4f}",
                f"{r['epochs']} ({r['best_epoch']})",
                f"{r['seconds']:.0f}",
                "-".join(f"{x:.1f}" for x in r["load_average_1m"]),
            ]
            for r in runs
        ],
    )
    path = write_results(NAME, {"epochs": args.epochs or "config", "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
