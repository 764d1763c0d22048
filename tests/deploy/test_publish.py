"""Publishing a model version into the Triton model repository that several processes share
(the workers of one service, its replicas, the batch job): concurrent publishers of the same
version all succeed and leave one complete copy; different bytes under a published version
number are refused; a newer version retires the older one."""

from __future__ import annotations

import hashlib
import multiprocessing
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from inference_pipeline.model_artifact import ServingModel, publish_for_triton
from shared.errors import ArtifactIntegrityError
from shared.feature_view import FLIGHT_DELAY_VIEW
from shared.transforms import CategoricalState, MDTState, NumericState
from shared.triton_repository import file_manifest

pytestmark = pytest.mark.unit

PUBLISHERS = 6
NAME = "flight_delay"


def serving_model(root: Path, version: str, payload: bytes) -> ServingModel:
    """A version whose TorchScript file is stand-in bytes: publishing copies it, never runs it."""
    artifact = root / f"artifact-{version}-{hashlib.sha256(payload).hexdigest()[:12]}"
    artifact.mkdir(parents=True)
    (artifact / "model.pt").write_bytes(payload)
    mdt = MDTState(
        numeric=(NumericState("distance", fill=700.0, mean=1000.0, std=700.0),),
        categorical=(CategoricalState("carrier", ("AA", "B6", "UA")),),
    )
    return ServingModel(
        version=version,
        alias="champion",
        path=artifact,
        torchscript=artifact / "model.pt",
        mdt=mdt,
        view=FLIGHT_DELAY_VIEW,
        triton_name=NAME,
        triton_config=None,
    )


def _publish_after(
    barrier: Barrier, model: ServingModel, repository: Path, errors: Queue[str]
) -> None:
    barrier.wait()
    try:
        publish_for_triton(model, repository, "cpu")
    except Exception as exc:  # reported to the parent, which fails the test with it
        errors.put(f"{type(exc).__name__}: {exc}")


def publish_at_once(models: list[ServingModel], repository: Path) -> list[str]:
    """Start one process per model, release them together; returns their errors."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(models))
    errors = context.Queue()
    processes = [
        context.Process(target=_publish_after, args=(barrier, model, repository, errors))
        for model in models
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, f"publisher exited with {process.exitcode}"
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_publishers_of_one_version_leave_one_complete_copy(
    tmp_path: Path, round_: int
) -> None:
    repository = tmp_path / "models"
    model = serving_model(tmp_path, "3", b"torchscript v3 " + bytes([round_]))
    assert publish_at_once([model] * PUBLISHERS, repository) == []
    model_dir = repository / NAME
    assert sorted(p.name for p in model_dir.iterdir()) == ["3", "config.pbtxt"]  # no stages left
    assert (model_dir / "3" / "model.pt").read_bytes() == model.torchscript.read_bytes()
    assert set(file_manifest(model_dir / "3")) == {"model.pt", "model.py"}
    assert f'name: "{NAME}"' in (model_dir / "config.pbtxt").read_text()


def test_republishing_the_same_version_is_a_no_op(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    model = serving_model(tmp_path, "3", b"torchscript v3")
    publish_for_triton(model, repository, "cpu")
    before = file_manifest(repository)
    mtime = (repository / NAME / "3" / "model.pt").stat().st_mtime_ns
    publish_for_triton(model, repository, "cpu")
    assert file_manifest(repository) == before
    assert (repository / NAME / "3" / "model.pt").stat().st_mtime_ns == mtime


def test_different_bytes_under_a_published_version_are_refused(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    publish_for_triton(serving_model(tmp_path, "3", b"torchscript v3"), repository, "cpu")
    impostor = serving_model(tmp_path, "3", b"something else entirely")
    with pytest.raises(ArtifactIntegrityError, match="registered versions are immutable"):
        publish_for_triton(impostor, repository, "cpu")
    assert (repository / NAME / "3" / "model.pt").read_bytes() == b"torchscript v3"
    assert sorted(p.name for p in (repository / NAME).iterdir()) == ["3", "config.pbtxt"]


def test_concurrent_publishers_with_different_bytes_keep_the_first(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    models = [serving_model(tmp_path, "4", f"variant {i}".encode()) for i in range(PUBLISHERS)]
    errors = publish_at_once(models, repository)
    assert len(errors) == PUBLISHERS - 1, errors
    assert all("registered versions are immutable" in e for e in errors)
    kept = (repository / NAME / "4" / "model.pt").read_bytes()
    assert kept in {m.torchscript.read_bytes() for m in models}


def test_a_newer_version_retires_the_older_one(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    publish_for_triton(serving_model(tmp_path, "1", b"v1"), repository, "cpu")
    publish_for_triton(serving_model(tmp_path, "2", b"v2"), repository, "gpu")
    assert sorted(p.name for p in (repository / NAME).iterdir()) == ["2", "config.pbtxt"]
    assert set(file_manifest(repository / NAME / "2")) == {"model.pt"}
    assert 'platform: "pytorch_libtorch"' in (repository / NAME / "config.pbtxt").read_text()
