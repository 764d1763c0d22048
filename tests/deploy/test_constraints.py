"""constraints.txt, the exact versions every install uses, agrees with pyproject.toml.

``scripts/setup.sh`` and the images install with ``--constraint constraints.txt``, so that a
release upstream cannot turn a clean set-up red (pyarrow 26 did: it imports only with numpy 2,
which its metadata does not say). These tests keep the file and ``pyproject.toml`` from drifting
apart: every requirement of the project (any extra) that the file pins is pinned to a version
the project's range allows, torch is left to the explicit ``torch==`` pin (GPU boxes install its
CUDA build), and every image that installs the project does it with the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy import deployment as d

pytestmark = pytest.mark.unit

CONSTRAINTS = d.ROOT / "constraints.txt"


def pinned() -> dict[str, Version]:
    versions: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        versions[canonicalize_name(name)] = Version(version)
    return versions


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((d.ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(r) for r in extra]
    return [r for r in found if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def test_every_pin_is_within_the_projects_ranges() -> None:
    versions = pinned()
    outside = [
        f"{r.name}=={versions[canonicalize_name(r.name)]} (pyproject: {r})"
        for r in project_requirements()
        if canonicalize_name(r.name) in versions
        and not r.specifier.contains(versions[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not outside, f"constraints.txt pins versions pyproject.toml refuses: {outside}"


def test_the_projects_direct_dependencies_are_pinned_except_torch() -> None:
    versions = pinned()
    names = {canonicalize_name(r.name) for r in project_requirements()}
    assert "torch" not in versions, "torch is pinned by setup.sh and the images, build by build"
    missing = sorted(names - set(versions) - {"torch"})
    assert not missing, f"constraints.txt lacks {missing}: run scripts/update_constraints.sh"
    assert versions["numpy"] < Version("2"), "nvidia-pytriton needs numpy 1.x"


def _project_installs(path: Path) -> list[str]:
    """The lines of a Dockerfile that install this project (``".[extras]"``)."""
    return [line for line in path.read_text().splitlines() if re.search(r'"\.\[[^"]*\]"', line)]


PROJECT_IMAGES = [p for p in sorted(d.dockerfiles()) if _project_installs(p)]


def test_the_project_images_are_found() -> None:
    names = {p.name for p in PROJECT_IMAGES}
    assert {"feature.Dockerfile", "service.Dockerfile", "training.Dockerfile"} <= names


@pytest.mark.parametrize("path", PROJECT_IMAGES, ids=lambda p: p.name)
def test_images_install_the_project_with_the_constraints(path: Path) -> None:
    for line in _project_installs(path):
        assert "--constraint constraints.txt" in line, f"{path.name}: {line.strip()}"
    copied = [s for stage in d.parse_dockerfile(path).stages for c in stage.copies for s in c]
    assert "constraints.txt" in copied, f"{path.name} installs with a file it does not COPY"


def test_setup_installs_with_the_constraints() -> None:
    setup = (d.ROOT / "scripts" / "setup.sh").read_text()
    assert "CONSTRAINTS=${FTI_CONSTRAINTS-constraints.txt}" in setup
    assert setup.count('${pin[@]+"${pin[@]}"}') == 2  # the torch line and the project's
