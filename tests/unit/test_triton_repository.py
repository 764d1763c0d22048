"""The Triton repository writer and the artifact manifest, without a server."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ArtifactIntegrityError, ConfigurationError
from shared.triton_repository import (
    PYTHON_BACKEND_MODEL,
    DynamicBatching,
    Flavour,
    ModelSignature,
    file_manifest,
    render_config,
    verify_manifest,
    write_model_repository,
)

pytestmark = pytest.mark.unit

SIGNATURE = ModelSignature(n_numeric=7, n_categorical=3)


@pytest.fixture
def torchscript(tmp_path: Path) -> Path:
    """Stand-in bytes: the writer copies the artifact, it never opens it."""
    path = tmp_path / "artifact" / "model.pt"
    path.parent.mkdir()
    path.write_bytes(b"torchscript archive v1")
    return path


def _parse(config_text: str) -> Any:
    """Parse with Triton's own ModelConfig schema, so a typo in a field name fails here."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text_format = pytest.importorskip("google.protobuf.text_format")
    return text_format.Parse(config_text, model_config_pb2.ModelConfig())


def _kind(config: Any) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind))


def _dtype(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(value))


def test_cpu_config_uses_python_backend_on_cpu_instances() -> None:
    config = _parse(
        render_config("delay", SIGNATURE, "cpu", max_batch_size=4096, batching=DynamicBatching())
    )

    assert config.name == "delay"
    assert config.backend == "python"
    assert config.platform == ""
    assert _kind(config) == "KIND_CPU"
    assert config.max_batch_size == 4096


def test_gpu_config_uses_libtorch_on_gpu_instances() -> None:
    config = _parse(
        render_config("delay", SIGNATURE, "gpu", max_batch_size=4096, batching=DynamicBatching())
    )

    assert config.platform == "pytorch_libtorch"
    assert config.backend == ""
    assert _kind(config) == "KIND_GPU"
    assert config.parameters["INFERENCE_MODE"].string_value == "true"


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_both_flavours_expose_the_same_tensors_in_forward_order(flavour: Flavour) -> None:
    config = _parse(
        render_config("delay", SIGNATURE, flavour, max_batch_size=4096, batching=DynamicBatching())
    )

    inputs = [(i.name, _dtype(i.data_type), list(i.dims)) for i in config.input]
    outputs = [(o.name, _dtype(o.data_type), list(o.dims)) for o in config.output]
    assert inputs == [("NUMERIC", "TYPE_FP32", [7]), ("CATEGORICAL", "TYPE_INT64", [3])]
    assert outputs == [("PROBABILITY", "TYPE_FP32", [1])]


def test_dynamic_batching_and_warmup_are_configured() -> None:
    batching = DynamicBatching(preferred_batch_sizes=(8, 32), max_queue_delay_microseconds=250)
    config = _parse(render_config("delay", SIGNATURE, "cpu", max_batch_size=32, batching=batching))

    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    warmup = config.model_warmup[0]
    assert warmup.batch_size == 32
    assert set(warmup.inputs) == {"NUMERIC", "CATEGORICAL"}
    assert all(i.zero_data for i in warmup.inputs.values())
    assert config.version_policy.latest.num_versions == 1


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_intra_op_threads_reach_both_backends(flavour: Flavour) -> None:
    config = _parse(
        render_config(
            "delay",
            SIGNATURE,
            flavour,
            max_batch_size=64,
            batching=DynamicBatching(preferred_batch_sizes=(64,)),
            intra_op_threads=2,
        )
    )

    assert config.parameters["INTRA_OP_THREAD_COUNT"].string_value == "2"


def test_preferred_batch_size_above_the_maximum_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="exceed max_batch_size"):
        render_config(
            "delay",
            SIGNATURE,
            "cpu",
            max_batch_size=16,
            batching=DynamicBatching(preferred_batch_sizes=(8, 64)),
        )


def test_signature_needs_both_inputs() -> None:
    with pytest.raises(ValueError):
        ModelSignature(n_numeric=4, n_categorical=0)


def test_cpu_repository_layout(tmp_path: Path, torchscript: Path) -> None:
    model_dir = write_model_repository(tmp_path / "repo", "delay", 1, torchscript, SIGNATURE, "cpu")

    assert model_dir == tmp_path / "repo" / "delay"
    assert sorted(file_manifest(model_dir)) == ["1/model.pt", "1/model.py", "config.pbtxt"]
    assert (model_dir / "1" / "model.pt").read_bytes() == torchscript.read_bytes()


def test_gpu_repository_holds_only_the_torchscript_file(tmp_path: Path, torchscript: Path) -> None:
    model_dir = write_model_repository(tmp_path, "delay", 3, torchscript, SIGNATURE, "gpu")

    assert sorted(file_manifest(model_dir)) == ["3/model.pt", "config.pbtxt"]
    assert 'platform: "pytorch_libtorch"' in (model_dir / "config.pbtxt").read_text()


def test_python_backend_model_is_valid_python() -> None:
    tree = ast.parse(PYTHON_BACKEND_MODEL)

    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["TritonPythonModel"]
    assert '"PROBABILITY"' in PYTHON_BACKEND_MODEL
    assert "torch.inference_mode()" in PYTHON_BACKEND_MODEL


def test_new_version_keeps_the_old_one(tmp_path: Path, torchscript: Path) -> None:
    write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")
    v2 = torchscript.with_name("v2.pt")
    v2.write_bytes(b"torchscript archive v2")

    model_dir = write_model_repository(tmp_path, "delay", 2, v2, SIGNATURE, "cpu")

    assert (model_dir / "1" / "model.pt").read_bytes() == b"torchscript archive v1"
    assert (model_dir / "2" / "model.pt").read_bytes() == b"torchscript archive v2"
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]  # no staging left


def test_rewriting_a_version_is_idempotent(tmp_path: Path, torchscript: Path) -> None:
    model_dir = write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")
    before = file_manifest(model_dir)

    write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")

    assert file_manifest(model_dir) == before


def test_a_registered_version_is_never_overwritten(tmp_path: Path, torchscript: Path) -> None:
    write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")
    other = torchscript.with_name("other.pt")
    other.write_bytes(b"different weights")

    with pytest.raises(ArtifactIntegrityError, match="already exists"):
        write_model_repository(tmp_path, "delay", 1, other, SIGNATURE, "cpu")


@pytest.mark.parametrize(
    ("name", "version"), [("../escape", 1), ("delay/1", 1), ("", 1), ("delay", 0)]
)
def test_bad_names_and_versions_are_refused(
    tmp_path: Path, torchscript: Path, name: str, version: int
) -> None:
    with pytest.raises(ConfigurationError):
        write_model_repository(tmp_path, name, version, torchscript, SIGNATURE, "cpu")


def test_missing_torchscript_is_an_integrity_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactIntegrityError, match="not found"):
        write_model_repository(tmp_path, "delay", 1, tmp_path / "nope.pt", SIGNATURE, "cpu")


def test_manifest_is_relative_sorted_and_sha256(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.bin").write_bytes(b"")
    (tmp_path / "a.txt").write_bytes(b"abc")

    manifest = file_manifest(tmp_path)

    assert list(manifest) == ["a.txt", "b/x.bin"]
    assert manifest["a.txt"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_verify_accepts_an_untouched_artifact(tmp_path: Path, torchscript: Path) -> None:
    model_dir = write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")
    manifest = file_manifest(model_dir)
    (model_dir / "1" / "__pycache__").mkdir()
    (model_dir / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"bytecode")

    verify_manifest(model_dir, manifest)


def test_verify_names_a_changed_file(tmp_path: Path, torchscript: Path) -> None:
    model_dir = write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")
    manifest = file_manifest(model_dir)
    (model_dir / "1" / "model.pt").write_bytes(b"tampered")

    with pytest.raises(ArtifactIntegrityError, match=re.escape("changed: 1/model.pt")) as caught:
        verify_manifest(model_dir, manifest)

    assert caught.value.changed == ["1/model.pt"]
    assert caught.value.path == str(model_dir / "1" / "model.pt")


def test_verify_names_missing_and_unexpected_files(tmp_path: Path, torchscript: Path) -> None:
    model_dir = write_model_repository(tmp_path, "delay", 1, torchscript, SIGNATURE, "cpu")
    manifest = file_manifest(model_dir)
    (model_dir / "1" / "model.py").unlink()
    (model_dir / "1" / "extra.so").write_bytes(b"surprise")

    with pytest.raises(ArtifactIntegrityError) as caught:
        verify_manifest(model_dir, manifest)

    assert caught.value.missing == ["1/model.py"]
    assert caught.value.unexpected == ["1/extra.so"]


def test_manifest_of_a_missing_directory_is_an_integrity_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactIntegrityError, match="not a directory"):
        file_manifest(tmp_path / "absent")


def test_module_does_not_import_torch() -> None:
    """The online service image has no PyTorch; this module is imported there."""
    code = "import sys, shared.triton_repository; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
