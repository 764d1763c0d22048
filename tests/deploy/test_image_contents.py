"""Each image runs with only what its Dockerfile installs.

No image can be built here, so this simulates each one in a subprocess of this environment: the
distributions its ``pip install`` line brings (the project's extras and the pinned packages,
with every transitive requirement, resolved from the installed metadata) stay importable, every
other installed distribution is hidden from the import system, as if not installed. Then the
image's entry point must render ``--help`` and the modules its process loads must import. This
is what keeps PyTorch out of the online service image and the Triton wheel out of the jobs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy import deployment as d

pytestmark = pytest.mark.unit

PROJECT = "fti-flights"
MONITOR = "inference_pipeline.monitor"

# Per image: CLIs whose --help must render, modules its process imports, modules it must find.
IMAGES: dict[str, dict[str, list[str]]] = {
    "feature.Dockerfile": {
        "help": ["feature_pipeline"],
        "imports": [
            "feature_pipeline.pipeline",
            "feature_pipeline.stream.metrics",
            "shared.feature_store",
        ],
        "absent": ["torch", "mlflow", "fastapi", "tritonclient", "pytriton"],
    },
    "training.Dockerfile": {
        "help": ["training_pipeline"],
        "imports": [
            "training_pipeline.pipeline",
            "training_pipeline.loop",
            "torch.distributed.run",
        ],
        "absent": ["tritonclient", "pytriton", "inference_pipeline"],
    },
    "service.Dockerfile": {
        "help": ["inference_pipeline"],
        "imports": [
            "inference_pipeline.service.app",
            "inference_pipeline.service.runtime",
            "mlflow.tracking",
        ],
        "absent": ["torch", "pytriton", "training_pipeline"],
    },
    "batch.Dockerfile": {
        "help": ["inference_pipeline", "inference_pipeline.batch", MONITOR],
        "imports": ["inference_pipeline.batch", f"{MONITOR}.pipeline"],
        "absent": ["torch", "pytriton"],
    },
    "triton-cpu.Dockerfile": {
        "help": ["inference_pipeline"],
        "imports": ["inference_pipeline.triton_standalone", "torch"],
        "absent": [],
        "found": ["pytriton"],
    },
    # The DAG's orchestrator: Dagster and the code location, no pipeline code or dependency.
    "orchestration.Dockerfile": {
        "help": ["orchestration"],
        "imports": ["orchestration.definitions", "dagster_webserver", "dagster_postgres"],
        "absent": ["torch", "mlflow", "fastapi", "shared", "feature_pipeline"],
    },
    "mlflow.Dockerfile": {
        "help": [],
        "imports": ["mlflow.server", "psycopg2", "boto3"],
        "absent": ["torch", "feature_pipeline"],
    },
}

_SIMULATION = r"""
import importlib, importlib.util, json, runpy, sys

hidden = set(json.loads(sys.argv[1]))
plan = json.loads(sys.argv[2])


class Hiding:
    # Wraps each finder (the path finder, the editable install's): what the image does not
    # install is not found, exactly as if absent.
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.inner, attribute)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
for name in plan["absent"]:
    assert importlib.util.find_spec(name) is None, f"{name} should not be in the image"
for name in plan.get("found", []):
    assert importlib.util.find_spec(name) is not None, f"{name} missing from the image"
for name in plan["imports"]:
    importlib.import_module(name)
for name in plan["help"]:
    sys.argv = [name, "--help"]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        assert exc.code in (0, None), f"{name} --help exited {exc.code}"
print("image ok")
"""


def _closure(requirements: list[str]) -> set[str]:
    """Installed distributions the requirements pull in (canonical names), extras included."""
    queue: deque[tuple[str, frozenset[str]]] = deque()
    for text in requirements:
        if text.startswith(".["):
            queue.append((PROJECT, frozenset(text[2:-1].split(","))))
        else:
            requirement = Requirement(text)
            queue.append((requirement.name, frozenset(requirement.extras)))
    seen: dict[str, set[str]] = {}
    while queue:
        name, extras = queue.popleft()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here, so the image cannot be simulated")
        for line in requires:
            requirement = Requirement(line)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(e) for e in wanted):
                queue.append((requirement.name, frozenset(requirement.extras)))
    return set(seen)


def _hidden(keep: set[str]) -> list[str]:
    """Top-level import names of every installed distribution the image would not have."""
    hidden = []
    for module, dists in importlib.metadata.packages_distributions().items():
        if module in d.PROJECT_PACKAGES or module.startswith("_"):
            continue
        if not any(canonicalize_name(dist) in keep for dist in dists):
            hidden.append(module)
    return sorted(hidden)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_runs_with_only_what_it_installs(name: str) -> None:
    dockerfile = d.parse_dockerfile(d.DEPLOY / "docker" / name)
    plan = dict(IMAGES[name])
    if MONITOR in plan["help"] and importlib.util.find_spec(MONITOR) is None:
        plan["help"] = [m for m in plan["help"] if m != MONITOR]
        plan["imports"] = [m for m in plan["imports"] if not m.startswith(MONITOR)]
    keep = _closure(d.install_requirements(dockerfile))
    copied = {c[0] for c in dockerfile.stages[0].copies if not c[0].startswith("--")}
    # Project packages the image does not COPY are absent too.
    missing_code = [p for p in d.PROJECT_PACKAGES if p not in copied]
    if PROJECT not in keep:
        missing_code = list(d.PROJECT_PACKAGES)
    plan["absent"] = [*plan["absent"], *(p for p in missing_code if p not in plan["absent"])]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SIMULATION,
            json.dumps(_hidden(keep) + missing_code),
            json.dumps(plan),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path("/"),  # not the checkout: its folders would shadow the hidden project packages
    )
    assert done.returncode == 0 and "image ok" in done.stdout, done.stderr[-3000:]
