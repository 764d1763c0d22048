"""docs/configuration.md is the settings classes and the CLIs, regenerated: never stale, never
missing a class or a description, no variable declared twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from scripts import configuration_reference as reference
from shared.settings import CommonSettings, FeatureStoreSettings
from tests.deploy.deployment import settings_classes

pytestmark = pytest.mark.unit


def test_the_reference_is_current() -> None:
    assert reference.REFERENCE.read_text() == reference.render(), (
        "docs/configuration.md is stale: run python -m scripts.configuration_reference"
    )


def test_every_settings_class_of_the_project_is_in_the_reference() -> None:
    documented = {f"{s.settings.__module__}.{s.settings.__qualname__}" for s in reference.SECTIONS}
    found = {s.qualname for s in settings_classes()} | {
        "scripts.year_replay.settings.ReplaySettings"
    }
    assert found - documented == set(), "add these to SECTIONS in scripts/configuration_reference"


@pytest.mark.parametrize("section", reference.SECTIONS, ids=lambda s: s.title)
def test_every_setting_says_what_it_is(section: reference.Section) -> None:
    silent = [name for name, info in reference.own_fields(section.settings) if not info.description]
    assert not silent, f"{section.settings.__name__}: no description on {silent}"


def test_a_variable_is_declared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class Elsewhere(FeatureStoreSettings):
        data_root: Path = Field(default=Path("elsewhere"), description="declared again")

    class Unrelated(BaseSettings):
        model_config = CommonSettings.model_config
        log_level: str = Field(default="INFO", description="declared again, unrelated")

    for twice in (Elsewhere, Unrelated):
        sections = (*reference.SECTIONS, reference.Section("again", twice, "nobody"))
        monkeypatch.setattr(reference, "SECTIONS", sections)
        with pytest.raises(ValueError, match="is declared by CommonSettings and"):
            reference.render()


def test_every_option_backed_by_a_setting_is_in_the_reference() -> None:
    text = reference.REFERENCE.read_text()
    for variable, options in reference.options_by_variable().items():
        row = next(
            (line for line in text.splitlines() if line.startswith(f"| `{variable}` ")), None
        )
        assert row is not None, f"{variable} (of {options}) is not a setting of any class"
        assert all(f"`{option}`" in row for option in options), row
