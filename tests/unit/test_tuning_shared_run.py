"""Workers that end the study's shared MLflow run together: a write that clashes on MLflow's
unique key is written again; any other failure is not hidden."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from training_pipeline import tuning
from training_pipeline.tuning import on_shared_run

pytestmark = pytest.mark.unit

CLASH = (
    "(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid "
    '[SQL: INSERT INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)]'
)


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning.time, "sleep", lambda s: None)


def test_a_write_that_clashed_with_another_workers_is_written_again() -> None:
    write = Flaky(
        [MlflowException(CLASH), MlflowException("duplicate key value violates unique constraint")]
    )
    on_shared_run(write)
    assert write.calls == 3


def test_another_failure_is_raised_at_once() -> None:
    write = Flaky([MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")])
    with pytest.raises(MlflowException, match="not found"):
        on_shared_run(write)
    assert write.calls == 1


def test_a_clash_that_does_not_clear_is_raised_in_the_end() -> None:
    write = Flaky([MlflowException(CLASH) for _ in range(10)])
    with pytest.raises(MlflowException, match="UNIQUE constraint"):
        on_shared_run(write)
    assert write.calls == tuning._SHARED_RUN_ATTEMPTS
