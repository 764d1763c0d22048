"""A data root is movable: copy `data/` (feature store + embedded MLflow registry) elsewhere,
delete the original, and serve, train, promote and batch-score from the copy.

The embedded registry stores absolute artifact locations; opening it from the new root re-roots
them (shared/registry_relocation.py), so reads and new writes land under the new root and the
old path is never touched again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shared.registry import CHAMPION, ModelRegistry, RegistrySettings
from tests.service.conftest import (
    API_KEY,
    MODEL_NAME,
    SCORED_DAY,
    RegisteredModel,
    service_env,
    start_service,
    train_with_training_pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _registry(root: Path) -> ModelRegistry:
    return ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL_NAME))


def _under(uri: str, root: Path) -> bool:
    return uri.startswith((root.resolve() / "mlartifacts").as_uri() + "/")


@pytest.fixture
def moved_root(registered_model: RegisteredModel, tmp_path: Path) -> tuple[Path, Path]:
    """(old, new): a data root with a registered champion, copied to a new path, the old one
    deleted, as an operator restoring a backup elsewhere would leave it."""
    old, new = tmp_path / "old" / "data", tmp_path / "new" / "data"
    shutil.copytree(registered_model.root, old, ignore=shutil.ignore_patterns("serving"))
    registry = _registry(old)
    assert _under(registry.files_uri(registry.resolve(CHAMPION)), old)  # the old root names itself
    shutil.copytree(old, new)
    shutil.rmtree(tmp_path / "old")
    return tmp_path / "old", new


def test_serve_train_promote_and_batch_score_from_a_moved_root(
    moved_root: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = moved_root
    registry = _registry(new)
    champion = registry.resolve(CHAMPION)
    assert _under(registry.files_uri(champion), new), registry.files_uri(champion)
    loaded = registry.load(CHAMPION, tmp_path / "loaded")  # every sha256 checked
    assert (loaded.path / "model.pt").is_file()

    # serve: the real service process, with its managed Triton, from the copy
    service = start_service(new, tmp_path / "service.log", FTI_API_KEY=API_KEY)
    try:
        flight = {
            "flight_date": str(SCORED_DAY), "sched_dep_time": 830, "carrier": "UA",
            "flight": 1545, "origin": "EWR", "dest": "IAH", "tailnum": "N14228", "distance": 1400,
        }  # fmt: skip
        answer = httpx.post(
            f"{service.url}/v1/predictions",
            json={"flights": [flight]},
            headers={"X-API-Key": API_KEY},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion.version
    finally:
        service.stop()

    # train: the new version's artifacts are written under the new root
    version = train_with_training_pipeline(new)
    assert version is not None and version != champion.version
    trained = registry.get(version)
    files = registry.files_uri(trained)
    assert _under(files, new), files
    assert Path(files.removeprefix("file://"), "model.pt").is_file()

    # promote, then batch-score the day with the new champion, from the copy
    registry.promote(version)
    result = subprocess.run(
        [sys.executable, "-m", "inference_pipeline.batch", "--date", str(SCORED_DAY),
         "--in-process"],
        env=service_env(new), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["model_version"] == version and summary["flights"] > 0, summary
    assert not old.exists(), "something wrote into the deleted data root"
