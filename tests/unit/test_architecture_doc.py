"""docs/architecture.md names the tests that hold each invariant: every one it names exists, so
a renamed or deleted test cannot leave the document pointing at nothing. And the project's own
documents never point outside the repository for its design."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# `tests/x/test_y.py::test_z` names a file and a test; a following `::test_w` the same file's.
CITATION = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def _citations() -> list[tuple[str, str | None]]:
    cited: list[tuple[str, str | None]] = []
    current: str | None = None
    for path, name, continued in CITATION.findall(ARCHITECTURE.read_text()):
        if path:
            current = path
            cited.append((path, name or None))
        else:
            assert current is not None, f"`::{continued}` before any test file"
            cited.append((current, continued))
    return cited


def test_the_document_cites_tests() -> None:
    assert len({name for _, name in _citations() if name}) >= 30


@pytest.mark.parametrize("path,name", _citations())
def test_every_cited_test_exists(path: str, name: str | None) -> None:
    source = ROOT / path
    assert source.is_file(), f"docs/architecture.md cites {path}, which does not exist"
    if name is not None:
        assert re.search(rf"^(async )?def {name}\(", source.read_text(), re.MULTILINE), (
            f"docs/architecture.md cites {path}::{name}, which does not exist"
        )


def test_the_documents_never_point_at_the_teams_folder() -> None:
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = document.read_text()
        assert "../shared" not in text and "/work/shared" not in text, document
