"""The Triton model repository for one registered model version, and its integrity manifest.

Training writes the repository when it registers a version; inference verifies it and hands it to
Triton. Both flavours serve the *same* TorchScript file (invariant 6, "same artifact
everywhere"); only ``config.pbtxt`` differs:

- ``cpu``: Triton's Python backend runs a small ``model.py`` that loads ``model.pt`` with
  ``torch.jit.load``. This is what the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel
  can run (it ships no PyTorch backend).
- ``gpu``: the standard PyTorch (LibTorch) backend of the official Triton container,
  ``platform: "pytorch_libtorch"``, on ``KIND_GPU`` instances.

The model interface is fixed so that training and inference can rely on it::

    forward(numeric: float32[B, n_numeric], categorical: int64[B, n_categorical])
        -> float32[B, 1]   # probabilities, not logits

Clients see the same tensor names in both flavours: inputs ``NUMERIC`` and ``CATEGORICAL``,
output ``PROBABILITY``. The LibTorch backend maps them onto ``forward``'s arguments by position
("strict config ordering": names that are neither forward-argument names nor ``<name>__<i>``),
which is why the inputs are always written in ``forward``'s order.

This module must not import torch: the online service image has none.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import ArtifactIntegrityError, ConfigurationError

logger = logging.getLogger(__name__)

Flavour = Literal["cpu", "gpu"]

NUMERIC_INPUT: Final = "NUMERIC"
CATEGORICAL_INPUT: Final = "CATEGORICAL"
PROBABILITY_OUTPUT: Final = "PROBABILITY"
# Rows per inference request the published configs accept; clients batching requests stay under.
MAX_BATCH_SIZE: Final = 4096
TORCHSCRIPT_FILENAME: Final = "model.pt"
PYTHON_MODEL_FILENAME: Final = "model.py"
CONFIG_FILENAME: Final = "config.pbtxt"

# Written by Python itself when Triton's Python backend imports model.py; never part of an
# artifact, so manifests neither record nor check them.
_BYTECODE_DIR: Final = "__pycache__"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HASH_CHUNK: Final = 1 << 20
# Understood by the LibTorch backend, and by our model.py for the cpu flavour.
INTRA_OP_THREADS_PARAMETER: Final = "INTRA_OP_THREAD_COUNT"
_WARMUP_BATCH: Final = 64
_WARMUP_RUNS: Final = 3  # TorchScript's profiling executor optimises after the first runs


class ModelSignature(BaseModel):
    """Widths of the two model inputs; the batch dimension is left to Triton."""

    model_config = ConfigDict(frozen=True)

    n_numeric: int = Field(ge=1)
    n_categorical: int = Field(ge=1)


class DynamicBatching(BaseModel):
    """Server-side batching of concurrent requests from several clients (service workers and
    replicas, the batch job): Triton merges what is queued. No queue delay by default: the
    online service already coalesces its own concurrent requests, and a delay would be paid
    by every lone request (batch sizes are rarely a preferred one)."""

    model_config = ConfigDict(frozen=True)

    preferred_batch_sizes: tuple[int, ...] = (64, 256, 1024)
    max_queue_delay_microseconds: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _positive_sizes(self) -> DynamicBatching:
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ValueError("preferred batch sizes must be positive")
        return self


# The Python-backend model of the cpu flavour. It is written next to model.pt and runs inside
# Triton's stub process, which is why it is text here and not a module of this package.
PYTHON_BACKEND_MODEL: Final = f'''\
"""Triton Python-backend model: runs the TorchScript file beside it (written by
shared.triton_repository; do not edit by hand)."""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

NUMERIC_INPUT = "{NUMERIC_INPUT}"
CATEGORICAL_INPUT = "{CATEGORICAL_INPUT}"
PROBABILITY_OUTPUT = "{PROBABILITY_OUTPUT}"


class TritonPythonModel:
    """Runs all requests Triton hands over in one forward pass."""

    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {{}})
        threads = parameters.get("{INTRA_OP_THREADS_PARAMETER}", {{}}).get("string_value")
        if threads:
            torch.set_num_threads(int(threads))
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.module = torch.jit.load(version_dir / "{TORCHSCRIPT_FILENAME}", map_location="cpu")
        self.module.eval()

    def execute(self, requests):
        inputs = [(_input(r, NUMERIC_INPUT), _input(r, CATEGORICAL_INPUT)) for r in requests]
        try:
            probability = self._forward(
                np.concatenate([n for n, _ in inputs]), np.concatenate([c for _, c in inputs])
            )
        except RuntimeError:
            # One bad request (say, an index outside a vocabulary) must not fail the requests
            # it was batched with: run them one by one, and only the bad one gets the error.
            return [self._alone(numeric, categorical) for numeric, categorical in inputs]
        bounds = np.cumsum([len(n) for n, _ in inputs])[:-1]
        return [_response(part) for part in np.split(probability, bounds)]

    def _forward(self, numeric, categorical):
        with torch.inference_mode():
            out = self.module(torch.from_numpy(numeric), torch.from_numpy(categorical))
        return out.numpy().astype(np.float32, copy=False)

    def _alone(self, numeric, categorical):
        try:
            return _response(self._forward(numeric, categorical))
        except RuntimeError as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))

    def finalize(self):
        self.module = None


def _response(probability):
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(PROBABILITY_OUTPUT, probability)]
    )


def _input(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()
'''


def render_config(
    model_name: str,
    signature: ModelSignature,
    flavour: Flavour,
    *,
    max_batch_size: int,
    batching: DynamicBatching,
    instance_count: int = 1,
    intra_op_threads: int = 1,
) -> str:
    """``config.pbtxt`` text; everything Triton needs is spelled out, nothing auto-completed."""
    _check_batching(max_batch_size, batching)
    if instance_count < 1 or intra_op_threads < 1:
        raise ConfigurationError("instance_count and intra_op_threads must be positive")
    backend = 'backend: "python"' if flavour == "cpu" else 'platform: "pytorch_libtorch"'
    kind = "KIND_CPU" if flavour == "cpu" else "KIND_GPU"
    preferred = ", ".join(str(size) for size in batching.preferred_batch_sizes)
    lines = [
        f'name: "{model_name}"',
        backend,
        f"max_batch_size: {max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        _tensor("input", NUMERIC_INPUT, "TYPE_FP32", signature.n_numeric),
        _tensor("input", CATEGORICAL_INPUT, "TYPE_INT64", signature.n_categorical),
        _tensor("output", PROBABILITY_OUTPUT, "TYPE_FP32", 1),
        f"instance_group [{{ count: {instance_count} kind: {kind} }}]",
        "dynamic_batching {",
        f"  preferred_batch_size: [{preferred}]",
        f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}",
        "}",
        _warmup(signature, batch_size=min(max_batch_size, _WARMUP_BATCH)),
        _parameter(INTRA_OP_THREADS_PARAMETER, str(intra_op_threads)),
    ]
    if flavour == "gpu":
        lines.append(_parameter("INFERENCE_MODE", "true"))
    return "\n".join(lines) + "\n"


def _parameter(key: str, value: str) -> str:
    return f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def _warmup(signature: ModelSignature, *, batch_size: int) -> str:
    """Warm-up requests run at load time, before the model is reported ready: a model that
    cannot run fails its load instead of its first request, and TorchScript's profiling executor
    has optimised the graph before real traffic. All-zero inputs, because zero is a valid index
    of every category vocabulary and random int64 values are not."""
    inputs = " ".join(
        f'inputs {{ key: "{name}" '
        f"value: {{ data_type: {dtype} dims: [{width}] zero_data: true }} }}"
        for name, dtype, width in (
            (NUMERIC_INPUT, "TYPE_FP32", signature.n_numeric),
            (CATEGORICAL_INPUT, "TYPE_INT64", signature.n_categorical),
        )
    )
    return (
        f'model_warmup [{{ name: "zeros" batch_size: {batch_size} count: {_WARMUP_RUNS} '
        f"{inputs} }}]"
    )


def _tensor(kind: str, name: str, data_type: str, width: int) -> str:
    return f'{kind} [{{ name: "{name}" data_type: {data_type} dims: [{width}] }}]'


def _check_batching(max_batch_size: int, batching: DynamicBatching) -> None:
    """Triton refuses a preferred batch size above ``max_batch_size`` only at load time, on the
    serving side; refuse it here, where the repository is written."""
    if max_batch_size < 1:
        raise ConfigurationError(f"max_batch_size must be positive, got {max_batch_size}")
    too_big = [s for s in batching.preferred_batch_sizes if s > max_batch_size]
    if too_big:
        raise ConfigurationError(
            f"preferred batch sizes {too_big} exceed max_batch_size {max_batch_size}"
        )


def write_model_repository(
    root: Path,
    model_name: str,
    version: int,
    torchscript: Path,
    signature: ModelSignature,
    flavour: Flavour,
    max_batch_size: int = MAX_BATCH_SIZE,
    batching: DynamicBatching | None = None,
    instance_count: int = 1,
    intra_op_threads: int = 1,
) -> Path:
    """Write ``root/<model_name>/{config.pbtxt, <version>/model.pt[, model.py]}``.

    Returns the model directory ``root/<model_name>``. A version directory is never changed
    once written (a registered version is immutable): writing the same content again is a no-op,
    different content raises `ArtifactIntegrityError`. The version directory appears atomically
    (staged, then renamed), so a server never loads a half-copied file. ``config.pbtxt`` belongs
    to the model, not the version, and is replaced: only the latest version is served.

    ``intra_op_threads`` is per model instance: one thread each is the predictable choice on a
    shared CPU (a multi-threaded op waits for its slowest thread), and ``instance_count`` adds
    parallel instances.
    """
    _check_target(model_name, version, torchscript)
    config = render_config(
        model_name,
        signature,
        flavour,
        max_batch_size=max_batch_size,
        batching=batching or DynamicBatching(),
        instance_count=instance_count,
        intra_op_threads=intra_op_threads,
    )
    model_dir = root / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    _publish_version(model_dir, version, torchscript, flavour)
    _replace_file(model_dir / CONFIG_FILENAME, config)
    logger.info("wrote %s repository for %s version %d in %s", flavour, model_name, version, root)
    return model_dir


def _check_target(model_name: str, version: int, torchscript: Path) -> None:
    if not _MODEL_NAME.match(model_name):
        raise ConfigurationError(f"model name {model_name!r} is not a valid directory name")
    if version < 1:
        raise ConfigurationError(f"Triton model versions start at 1, got {version}")
    if not torchscript.is_file():
        raise ArtifactIntegrityError(
            f"TorchScript file not found: {torchscript}", path=str(torchscript)
        )


def _publish_version(model_dir: Path, version: int, torchscript: Path, flavour: Flavour) -> None:
    """Stage the version directory beside its final place (same file system), then rename it.

    Triton ignores version directories whose names are not numbers, so a leftover stage after a
    crash is harmless.
    """
    target = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        shutil.copyfile(torchscript, staging / TORCHSCRIPT_FILENAME)
        if flavour == "cpu":
            (staging / PYTHON_MODEL_FILENAME).write_text(PYTHON_BACKEND_MODEL)
        if target.exists():
            _keep_identical_version(target, staging)
            return
        staging.chmod(0o755)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _keep_identical_version(target: Path, staging: Path) -> None:
    try:
        verify_manifest(target, file_manifest(staging))
    except ArtifactIntegrityError as err:
        raise ArtifactIntegrityError(
            f"version directory {target} already exists with different content; "
            f"registered versions are immutable ({err})",
            path=str(target),
        ) from err
    logger.info("version directory %s already holds this artifact; left as is", target)


def _replace_file(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    os.replace(staged, path)


def file_manifest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path``, keyed by POSIX path relative to it, sorted.

    Recorded with the model version at registration, checked before serving: the bytes Triton
    loads are the bytes training produced. Python bytecode caches are left out.
    """
    if not path.is_dir():
        raise ArtifactIntegrityError(f"not a directory: {path}", path=str(path))
    files = (p for p in path.rglob("*") if p.is_file() and _BYTECODE_DIR not in p.parts)
    return {p.relative_to(path).as_posix(): _sha256(p) for p in sorted(files)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_manifest(path: Path, manifest: dict[str, str]) -> None:
    """Raise `ArtifactIntegrityError` naming every missing, changed or unexpected file."""
    actual = file_manifest(path)
    missing = sorted(set(manifest) - set(actual))
    unexpected = sorted(set(actual) - set(manifest))
    changed = sorted(name for name in set(manifest) & set(actual) if manifest[name] != actual[name])
    if not (missing or unexpected or changed):
        return
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (("changed", changed), ("missing", missing), ("unexpected", unexpected))
        if names
    ]
    first = (changed or missing or unexpected)[0]
    raise ArtifactIntegrityError(
        f"{path} does not match its manifest ({'; '.join(problems)})",
        path=str(path / first),
        changed=changed,
        missing=missing,
        unexpected=unexpected,
    )
