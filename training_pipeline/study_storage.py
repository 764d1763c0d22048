"""The Optuna study that the workers of one search share, and how they survive each other.

- **Storage**: an SQLAlchemy URL (``FTI_TUNING_STORAGE``): an SQLite file for workers on one
  machine, PostgreSQL for workers on several. Every worker opens it the same way; the first use
  of a fresh database creates Optuna's tables, and two workers starting together race to do it
  (a duplicate-table or duplicate-type error in one of them): the loser retries after a jittered
  pause and then finds the tables made.
- **A dead worker**: every running trial writes a heartbeat (``FTI_TUNING_HEARTBEAT_S``); a
  trial whose heartbeat is older than ``FTI_TUNING_GRACE_S`` belonged to a worker that was
  killed. Optuna marks it FAIL when another worker next starts a trial; the callback here then
  ends its MLflow run FAILED and enqueues its parameters again (``FTI_TUNING_TRIAL_RETRIES``), so
  the study goes on without it.
- **Creating the study**: exactly one worker creates it (the others get "duplicated" and load
  it); that one also opens the study's MLflow run and records its id on the study, where the
  others read it.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from shared.errors import ConfigurationError, FTIError

if TYPE_CHECKING:
    from training_pipeline.config import TuningSettings

log = logging.getLogger(__name__)

SCHEMA_ATTEMPTS = 6  # first use of a fresh database by several workers at once
MLFLOW_RUN_ATTR = "mlflow_run_id"  # on the study: its run; on a trial: the trial's nested run
PARENT_RUN_WAIT_S = 120.0  # how long a joining worker waits for the creator to record the run

FailedTrialHook = Callable[[FrozenTrial], None]


class StudyStorageUnavailable(FTIError):
    """The study's storage cannot be reached or opened (after the retries): exit 1."""


def masked(url: str) -> str:
    """The storage URL without its password, for logs, MLflow and the summary."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: say nothing of it but its scheme
        return url.split(":", 1)[0] + "://..."


def open_storage(settings: TuningSettings, on_failed_trial: FailedTrialHook) -> RDBStorage:
    """The shared storage with heartbeats; retries the concurrent schema creation."""
    url = settings.storage_url
    with _experimental_is_fine():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.tuning_trial_retries or None)

    def failed_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        on_failed_trial(trial)
        if settings.tuning_trial_retries:
            retry(study, trial)

    # SQLite: wait for the writer lock instead of failing at once (workers commit concurrently).
    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    engine["pool_pre_ping"] = True
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with _experimental_is_fine():
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=settings.tuning_heartbeat_s,
                    grace_period=settings.tuning_grace_s,
                    heartbeat_stale_trial_callback=failed_trial,
                )
        except (ArgumentError, NoSuchModuleError) as exc:  # a URL SQLAlchemy cannot use
            raise ConfigurationError(
                f"tuning storage {masked(url)} (FTI_TUNING_STORAGE / --storage): "
                f"{str(exc).splitlines()[0]}; give an SQLAlchemy URL such as "
                "sqlite:///optuna.db or postgresql://user@host/db"
            ) from exc
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            first_line = str(exc).splitlines()[0]
            if attempt == SCHEMA_ATTEMPTS:  # unreachable, or broken: not a bad setting (exit 1)
                raise StudyStorageUnavailable(
                    f"cannot open the tuning storage {masked(url)} (FTI_TUNING_STORAGE / "
                    f"--storage) after {attempt} attempts: {first_line}"
                ) from exc
            pause = random.uniform(0.2, 0.5) * 2**attempt  # another worker is creating it
            log.warning(
                "tuning storage not ready (%s); retry %d in %.1f s", first_line, attempt, pause
            )
            time.sleep(pause)
        except (ValueError, ImportError) as exc:  # a URL SQLAlchemy cannot use
            raise ConfigurationError(
                f"tuning storage {masked(url)} (FTI_TUNING_STORAGE / --storage): {exc}; give an "
                "SQLAlchemy URL such as sqlite:///optuna.db or postgresql://user@host/db"
            ) from exc
    raise AssertionError("unreachable")


@contextmanager
def _experimental_is_fine() -> Iterator[None]:
    """Heartbeats and their retry callback are marked experimental (since Optuna 2.9); we rely
    on them on purpose, and their warning on every worker start says nothing to an operator."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


@dataclass(frozen=True)
class JoinedStudy:
    study: optuna.Study
    created: bool  # this worker created it (and so opens its MLflow run)


def create_or_join(
    storage: RDBStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    identity: dict[str, str],
) -> JoinedStudy:
    """Create study ``name`` or join it; a worker that searches something else (another target
    or base config: ``identity``) is refused rather than mixed into it."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        theirs = _wait_for(study, set(identity))
        different = {k: (theirs[k], v) for k, v in identity.items() if theirs[k] != v}
        if different:
            raise ConfigurationError(
                f"study {name!r} searches something else ({different}: study's, this worker's); "
                "give another --study or the same --model/--config"
            ) from None
        return JoinedStudy(study, created=False)
    for key, value in identity.items():
        study.set_user_attr(key, value)
    return JoinedStudy(study, created=True)


def _wait_for(study: optuna.Study, keys: set[str]) -> dict[str, Any]:
    """The creator records the study's identity right after creating it."""
    deadline = time.monotonic() + PARENT_RUN_WAIT_S
    while True:
        attrs = study.user_attrs
        if keys <= attrs.keys():
            return attrs
        if time.monotonic() > deadline:
            raise ConfigurationError(
                f"study {study.study_name!r} has no {sorted(keys - attrs.keys())} after "
                f"{PARENT_RUN_WAIT_S:.0f} s: its creator died before recording them; start a "
                "new --study"
            )
        time.sleep(0.5)


def parent_run_id(study: optuna.Study) -> str:
    """The study's MLflow run, as its creator recorded it."""
    return str(_wait_for(study, {MLFLOW_RUN_ATTR})[MLFLOW_RUN_ATTR])
