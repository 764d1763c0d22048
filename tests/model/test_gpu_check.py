"""The GPU check runs where the feature store's packages are absent (on CPU here, tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from training_pipeline.config import TrainingConfig

REPO = Path(__file__).resolve().parents[2]
ABSENT = ("polars", "deltalake", "pandera", "pydantic", "pydantic_settings", "mlflow")

# Runs a script as ``__main__`` with every module of ABSENT unimportable, as on a bare GPU box.
WITHOUT_STORE_PACKAGES = textwrap.dedent(
    f"""
    import runpy, sys

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {ABSENT!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (not on GPU boxes)")
            return None

    sys.meta_path.insert(0, Absent())
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


@pytest.mark.unit
def test_gpu_check_runs_the_real_loop_without_the_store_packages(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_STORE_PACKAGES,
            "benchmarks/gpu_check.py",
            "--device",
            "cpu",
            "--scale",
            "0.01",
            "--rounds",
            "1",
            "--min-window-s",
            "0.05",
            "--epochs",
            "2",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a loaded 2-core machine: minutes
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(ABSENT) - {"pydantic_settings"} <= set(result["environment"]["packages_absent"])
    assert [r["batch_size"] for r in result["throughput"]] == [2048, 8192]
    for row in result["throughput"]:
        assert row["previous"]["rows_per_s_median"] > 0 and row["device"]["rows_per_s_median"] > 0
    for fit in result["fits"]:
        assert fit["epochs"] == 2 and not fit["cuda_graph"]
        # Two steps on 1% of the rows learn little; what must hold is that the exported model
        # scores as the network did (on CPU both run in float32).
        assert 0 < fit["test_roc_auc_served"] <= 1
        assert fit["test_roc_auc_served"] == pytest.approx(fit["test_roc_auc_network"], abs=1e-3)
        assert fit["max_abs_diff_network_vs_served"] < 1e-5  # float32 on CPU both ways
    assert "default fit" in proc.stdout and "goal >= 20 M" in proc.stdout


@pytest.mark.unit
def test_the_gpu_checks_default_config_is_the_training_default() -> None:
    """Boxes without pydantic read the defaults from a file; it must not drift from the code."""
    committed = json.loads((REPO / "benchmarks" / "default_training_config.json").read_text())
    assert committed == TrainingConfig().model_dump(mode="json"), (
        "benchmarks/default_training_config.json is stale; rewrite it with: python -c 'import "
        "json; from training_pipeline.config import TrainingConfig; print(json.dumps("
        'TrainingConfig().model_dump(mode="json"), indent=1, sort_keys=True))\' '
        "> benchmarks/default_training_config.json"
    )


@pytest.mark.slow
@pytest.mark.integration
def test_exported_matrices_load_back_exactly(
    year_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gpu_check.py --export`` writes the store's full-year matrices compactly; loaded on the
    GPU box they are the training matrices, value for value. It reads them at the lead ``train``
    would use (``FTI_LEAD_MINUTES`` when set), and the file says which."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import train_throughput
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    monkeypatch.delenv("FTI_LEAD_MINUTES", raising=False)
    store = train_throughput.store_matrices(year_root)
    path = train_throughput.export_matrices(store, tmp_path / "year.npz")
    loaded = train_throughput.load_npz(path)
    assert path.stat().st_size < 40 * 2**20
    assert loaded.cardinalities == store.cardinalities and loaded.config == store.config
    assert loaded.config["lead_minutes"] == TrainingConfig().lead_minutes  # as `train` reads
    for name, split in store.splits.items():
        again = loaded.splits[name]
        for field in ("values", "missing", "categorical", "labels"):
            expected, actual = getattr(split, field), getattr(again, field)
            assert actual.dtype == expected.dtype
            np.testing.assert_array_equal(actual, expected)
    monkeypatch.setenv("FTI_LEAD_MINUTES", "0")
    at_departure = train_throughput.store_matrices(year_root)
    assert at_departure.config["lead_minutes"] == 0
    before, now = store.splits["test"], at_departure.splits["test"]
    np.testing.assert_array_equal(now.labels, before.labels)  # the same flights ...
    assert not np.array_equal(now.values, before.values)  # ... their features read earlier
