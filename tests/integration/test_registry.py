"""Registry round trip against the embedded default (sqlite) and a real `mlflow server`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import ArtifactIntegrityError, ConfigurationError, ModelVersionNotFound
from shared.registry import (
    CHALLENGER,
    CHAMPION,
    MANIFEST_FILE,
    ModelRegistry,
    RegistrySettings,
)

pytestmark = pytest.mark.integration


def _model_dir(root: Path, marker: str) -> Path:
    """A stand-in model version: binary and text files, one nested (like the Triton repo)."""
    model = root / f"model-{marker}"
    (model / "triton" / "cpu" / "flight_delay" / "1").mkdir(parents=True)
    (model / "model.pt").write_bytes(bytes(range(256)) * 10 + marker.encode())
    (model / "mdt_state.json").write_text('{"format": "fti-mdt/1"}')
    (model / "triton" / "cpu" / "flight_delay" / "1" / "model.py").write_text(f"# {marker}\n")
    return model


def _round_trip(registry: ModelRegistry, tmp_path: Path) -> None:
    with registry.run("round-trip", {"data_sha256": "abc"}) as run_id:
        registry.log_params(run_id, {"optim.lr": 0.001})
        registry.log_metrics(run_id, {"test_roc_auc": 0.7})
        assert registry.next_version() == 1
        first = registry.register(run_id, _model_dir(tmp_path, "a"), {"k": "v"}, expected_version=1)
    assert first.version == "1" and CHALLENGER in first.aliases
    assert first.tags["k"] == "v" and len(first.tags["manifest_sha256"]) == 64
    # An MLflow 3 logged model of the run, which the version points to.
    assert first.model_id is not None and first.source == f"models:/{first.model_id}"
    logged = registry.client.get_logged_model(first.model_id)
    assert logged.source_run_id == first.run_id and logged.status == "READY"

    loaded = registry.load(CHALLENGER, tmp_path / "loaded")
    original = _model_dir(tmp_path / "again", "a")
    for name in loaded.manifest:  # the exact bytes come back, and every file is in the manifest
        assert (loaded.path / name).read_bytes() == (original / name).read_bytes()
    assert set(loaded.manifest) == {
        "model.pt",
        "mdt_state.json",
        "triton/cpu/flight_delay/1/model.py",
    }
    assert (loaded.path / MANIFEST_FILE).is_file()

    with registry.run("second", {}) as run_id:
        second = registry.register(run_id, _model_dir(tmp_path, "b"))
    assert registry.version_for(CHALLENGER) == second.version == "2"
    assert registry.version_for(CHAMPION) is None

    registry.promote("1")
    registry.promote("2")
    assert registry.version_for(CHAMPION) == "2"
    assert registry.rollback().version == "1"
    assert registry.version_for(CHAMPION) == "1"
    listed = [(v.version, v.aliases, v.run_id) for v in registry.versions()]
    assert listed == [("2", (CHALLENGER,), second.run_id), ("1", (CHAMPION,), first.run_id)]
    with pytest.raises(ModelVersionNotFound):
        registry.rollback()  # nothing before version 1
    with pytest.raises(ModelVersionNotFound):
        registry.resolve("99")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded (sqlite) registry for the module: creating its schema takes seconds."""
    return tmp_path_factory.mktemp("registry") / "data"


def _embedded(data_root: Path, model_name: str) -> ModelRegistry:
    return ModelRegistry(RegistrySettings(data_root=data_root, model_name=model_name))


def _stored(registry: ModelRegistry, name: str) -> Path:
    """The file as kept in the local artifact store (what an attacker or a bad disk changes)."""
    location = registry.files_uri(registry.get("1")).removeprefix("file://")
    return Path(location) / name


def test_round_trip_sqlite_default(data_root: Path, tmp_path: Path) -> None:
    registry = _embedded(data_root, "round_trip")
    assert registry.settings.tracking_uri.startswith("sqlite:///")
    _round_trip(registry, tmp_path)
    assert (data_root / "mlflow.db").is_file()
    assert any((data_root / "mlartifacts").rglob("model.pt"))


def test_load_detects_a_changed_artifact(data_root: Path, tmp_path: Path) -> None:
    registry = _embedded(data_root, "changed_artifact")
    with registry.run("tamper", {}) as run_id:
        registry.register(run_id, _model_dir(tmp_path, "a"))
    stored = _stored(registry, "model.pt")
    stored.write_bytes(stored.read_bytes() + b"!")
    with pytest.raises(ArtifactIntegrityError, match=r"model\.pt"):
        registry.load("1", tmp_path / "loaded")


def test_load_detects_a_rewritten_manifest(data_root: Path, tmp_path: Path) -> None:
    registry = _embedded(data_root, "rewritten_manifest")
    with registry.run("tamper", {}) as run_id:
        registry.register(run_id, _model_dir(tmp_path, "a"))
    stored = _stored(registry, "model.pt")
    stored.write_bytes(b"evil")
    manifest = stored.parent / MANIFEST_FILE  # an attacker "fixing" the manifest too
    manifest.write_text(manifest.read_text().replace('"model.pt": "', '"model.pt": "0'))
    with pytest.raises(ArtifactIntegrityError, match="registered with the version"):
        registry.load("1", tmp_path / "loaded")


def test_old_file_store_uri_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="mlruns"):
        RegistrySettings(mlflow_tracking_uri="./mlruns")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port; skipped if it does not come up."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server and its workers stop together
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        _stop(proc)
        log.close()
        pytest.skip(f"mlflow server did not come up: {(root / 'server.log').read_text()[-500:]}")
    yield url
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.mark.slow
def test_round_trip_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    settings = RegistrySettings(data_root=tmp_path / "data", mlflow_tracking_uri=mlflow_server)
    registry = ModelRegistry(settings)
    assert registry.settings.artifact_location is None  # the server chooses
    _round_trip(registry, tmp_path)


def _without_manifest_tag(data_root: Path, tmp_path: Path, name: str) -> ModelRegistry:
    registry = _embedded(data_root, name)
    with registry.run("untagged", {}) as run_id:
        registry.register(run_id, _model_dir(tmp_path, "a"))
    registry.client.delete_model_version_tag(name, "1", "manifest_sha256")
    return registry


def test_a_version_without_its_manifest_hash_is_refused(data_root: Path, tmp_path: Path) -> None:
    registry = _without_manifest_tag(data_root, tmp_path, "untagged")
    with pytest.raises(ArtifactIntegrityError, match="FTI_ALLOW_UNVERIFIED_MODELS=true") as error:
        registry.load("1", tmp_path / "loaded")
    assert "untagged version 1 has no manifest_sha256 tag" in str(error.value)
    assert not (tmp_path / "loaded").exists()  # refused before anything was downloaded


def test_the_override_loads_it_unverified_and_says_so(
    data_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_manifest_tag(data_root, tmp_path, "override")
    monkeypatch.setenv("FTI_ALLOW_UNVERIFIED_MODELS", "true")
    registry = ModelRegistry(RegistrySettings(data_root=data_root, model_name="override"))
    with caplog.at_level("WARNING", logger="shared.registry"):
        loaded = registry.load("1", tmp_path / "loaded")
    assert (loaded.path / "model.pt").is_file()
    assert any("UNVERIFIED" in r.getMessage() for r in caplog.records)
    # The files are still checked against the manifest they carry.
    stored = _stored(registry, "model.pt")
    stored.write_bytes(b"changed")
    with pytest.raises(ArtifactIntegrityError, match=r"model\.pt"):
        registry.load("1", tmp_path / "again")


def test_a_copied_registry_reads_and_writes_under_its_new_root(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = tmp_path / "old" / "data", tmp_path / "new" / "data"
    registry = _embedded(old, "moved")
    with registry.run("first", {}) as run_id:
        registry.register(run_id, _model_dir(tmp_path, "a"))
    registry.promote("1")
    shutil.copytree(old, new)
    shutil.rmtree(tmp_path / "old")

    with caplog.at_level("WARNING", logger="shared.registry_relocation"):
        moved = _embedded(new, "moved")
    assert any("re-rooted" in r.getMessage() for r in caplog.records)
    artifacts = (new.resolve() / "mlartifacts").as_uri()
    assert moved.files_uri(moved.resolve(CHAMPION)).startswith(artifacts + "/")
    assert moved.load(CHAMPION, tmp_path / "loaded").file("model.pt").is_file()
    with moved.run("second", {}) as run_id:
        second = moved.register(run_id, _model_dir(tmp_path, "b"))
    assert moved.files_uri(second).startswith(artifacts + "/")
    moved.promote(second.version)
    assert moved.load(CHAMPION, tmp_path / "loaded-2").file("model.pt").is_file()
    assert not (tmp_path / "old").exists()  # nothing was written into the old root
    caplog.clear()
    with caplog.at_level("WARNING", logger="shared.registry_relocation"):
        _embedded(new, "moved")  # opening it again finds nothing to move
    assert not caplog.records
