"""pydantic validation errors as one line naming the option, variable or config key."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from shared.setting_errors import invalid_settings_line, setting_problems

pytestmark = pytest.mark.unit


class Demo(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTI_", env_file=None)

    share: float = Field(default=0.1, ge=0, le=1)
    days: int = 7
    options: dict[str, str] = Field(default_factory=dict)


class Inner(BaseModel):
    epochs: int = Field(default=1, ge=1)


class Nested(BaseModel):
    optim: Inner = Inner()

    @model_validator(mode="after")
    def _whole(self) -> Nested:
        if self.optim.epochs == 13:
            raise ValueError("thirteen epochs are unlucky")
        return self


def _error(build: object) -> ValidationError | SettingsError:
    with pytest.raises((ValidationError, SettingsError)) as caught:
        build()  # type: ignore[operator]
    return caught.value


def test_an_option_is_named_with_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = _error(lambda: Demo(share=2))
    line = invalid_settings_line(exc, flags={"share": "--share"})
    assert line == (
        "invalid setting --share (env FTI_SHARE): got 2, must be less than or equal to 1. "
        "Fix the option or the environment variable (--help lists each with its default)."
    )


def test_several_errors_share_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTI_DAYS", "abc")
    line = invalid_settings_line(_error(lambda: Demo(share=-1)), advice="")
    assert line.startswith("2 invalid settings: FTI_SHARE: got -1, must be greater than or equal")
    assert "; FTI_DAYS: got 'abc', must be a valid integer" in line
    assert "\n" not in line


def test_a_variable_that_is_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTI_OPTIONS", "{nope")
    assert setting_problems(_error(Demo)) == ["FTI_OPTIONS: is not valid JSON for it"]


def test_config_keys_and_whole_model_checks() -> None:
    nested = _error(lambda: Nested.model_validate({"optim": {"epochs": 0, "x": 1}}))
    assert setting_problems(nested, env_prefix=None, where="config c.toml") == [
        "optim.epochs in config c.toml: got 0, must be greater than or equal to 1"
    ]
    whole = _error(lambda: Nested.model_validate({"optim": {"epochs": 13}}))
    assert setting_problems(whole, env_prefix=None) == ["thirteen epochs are unlucky"]
    assert setting_problems(whole, env_prefix=None, flags={}, where="the config") == [
        "the config: thirteen epochs are unlucky"
    ]
