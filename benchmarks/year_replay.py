"""Wall time of the year replay, and what its batch-scoring step costs per scorer.

    python benchmarks/year_replay.py                                # the whole year, in-process
    python benchmarks/year_replay.py --weeks 3 --scorers in-process,triton

Each run is ``scripts/replay_2013.py`` in a fresh process on a fresh data root (imports, the
history backfill and the initial training included), exactly as an operator runs it. The
replay's journal gives the seconds of each step of each week, so the table separates the
scorer's share (batch scoring: 7 days x one or two versions a week) from features, monitoring
and training. Prints a table and writes ``benchmarks/results/year_replay.json``.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results" / "year_replay.json"


def run_replay(scorer: str, weeks: int | None, epochs: int, root: Path) -> dict[str, Any]:
    args = [sys.executable, str(REPO_ROOT / "scripts" / "replay_2013.py"), "--data-root"]
    args += [str(root), "--scorer", scorer, "--epochs", str(epochs), "--fresh"]
    if weeks is not None:
        args += ["--weeks", str(weeks)]
    env = os.environ | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    began = time.perf_counter()
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"replay with {scorer} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    journal = json.loads((root / "replay" / "journal.json").read_text())
    return {"scorer": scorer, "wall_s": round(wall, 1)} | step_seconds(journal)


def step_seconds(journal: dict[str, Any]) -> dict[str, Any]:
    weeks = journal["weeks"]
    trainings = [
        v["training"]["seconds"] for v in journal["versions"].values() if v.get("training")
    ]
    scored = sum(v["flights"] for w in weeks for v in w["scoring"]["versions"].values())
    scoring_s = sum(w["scoring"]["seconds"] for w in weeks)
    return {
        "weeks": len(weeks),
        "predictions": scored,
        "history_backfill_s": journal["initial"]["features"]["seconds"],
        "features_s": round(sum(w["features"]["seconds"] for w in weeks), 1),
        "scoring_s": round(scoring_s, 1),
        "scoring_rows_per_s": round(scored / scoring_s) if scoring_s else None,
        "monitoring_s": round(sum(w["monitor"]["seconds"] or 0 for w in weeks), 1),
        "trainings": len(trainings),
        "training_s": round(sum(trainings), 1),
        "promotions": sum(1 for v in journal["versions"].values() if v.get("promoted_week")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weeks", type=int, default=None, help="default: to the year's end")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scorers", default="in-process", help="comma-separated")
    args = parser.parse_args()
    rows = []
    for scorer in args.scorers.split(","):
        with tempfile.TemporaryDirectory(prefix="fti-replay-bench-") as tmp:
            rows.append(run_replay(scorer, args.weeks, args.epochs, Path(tmp) / "data"))
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    key = f"weeks={args.weeks or 'all'},epochs={args.epochs}"
    previous[key] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work)",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "runs": rows,
    }
    RESULTS.write_text(json.dumps(previous, indent=1, sort_keys=True))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
