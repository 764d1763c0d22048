"""`tune` as operators run it: worker processes sharing one Optuna study in PostgreSQL (or an
SQLite file), a worker SIGKILLed mid-trial, and the tuned config through `train --config`."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from shared.registry import ModelRegistry, RegistrySettings
from tests.training_fixtures import PYTHON, SMALL, training_env
from training_pipeline.config import TrainingConfig

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 900  # generous: two cores shared by many test processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


needs_postgres = pytest.mark.skipif(
    not postgres_reachable(), reason="PostgreSQL is not reachable on 127.0.0.1:5432"
)


def base_config(tmp_path: Path, epochs: int = 2) -> Path:
    path = tmp_path / "base.json"
    config = json.loads(json.dumps(SMALL))
    config["optim"]["epochs"] = epochs
    path.write_text(json.dumps(config))
    return path


def worker(
    year_root: Path,
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "training_pipeline", "tune", *args],
        env=training_env(year_root, root) | (env or {}),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=WORKER_TIMEOUT_S)
    return process.returncode, out, err


def prepare_registry(root: Path) -> None:
    """The embedded MLflow database made before the workers start (two processes creating
    MLflow's schema at once is MLflow's race, not the one under test)."""
    ModelRegistry(RegistrySettings(data_root=root)).experiment_id()


def unique_study() -> str:
    return f"fti-test-{uuid.uuid4().hex[:12]}"


def drop_study(name: str) -> None:
    with contextlib.suppress(Exception):  # already gone, or never made
        optuna.delete_study(study_name=name, storage=PG_URL)


@needs_postgres
def test_two_workers_share_one_study_in_postgresql(year_root: Path, tmp_path: Path) -> None:
    root, study = tmp_path / "root", unique_study()
    prepare_registry(root)
    config = base_config(tmp_path)
    common = ["--trials", "4", "--storage", PG_URL, "--study", study, "--config", str(config)]
    try:
        workers = [
            worker(year_root, root, *common, "--output", str(tmp_path / f"tuned-{i}.json"))
            for i in range(2)
        ]
        results = [finish(w) for w in workers]
        for code, _, err in results:
            assert code == 0, err[-3000:]
        summaries = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
        assert sorted(s["created_study"] for s in summaries) == [False, True]
        assert len({s["mlflow_run_id"] for s in summaries}) == 1  # one study run for both

        loaded = optuna.load_study(study_name=study, storage=PG_URL)
        finished = [t for t in loaded.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) >= 4
        assert len({t.user_attrs["worker"] for t in loaded.trials}) == 2  # both ran trials
        # Each worker wrote the study's best when it finished; the last one, the final best.
        for i, summary in enumerate(summaries):
            tuned = TrainingConfig.from_file(tmp_path / f"tuned-{i}.json")
            assert tuned.optim.lr == pytest.approx(summary["best"]["params"]["lr"])
        assert max(s["best"]["val_roc_auc"] for s in summaries) == loaded.best_value

        client = MlflowClient(f"sqlite:///{root.resolve()}/mlflow.db")
        parent = summaries[0]["mlflow_run_id"]
        nested = client.search_runs(
            [client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
        )
        assert {r.info.run_id for r in nested} == {t.user_attrs["mlflow_run_id"] for t in finished}
    finally:
        drop_study(study)


@needs_postgres
def test_a_killed_workers_trial_is_failed_and_the_study_goes_on(
    year_root: Path, tmp_path: Path
) -> None:
    root, study = tmp_path / "root", unique_study()
    prepare_registry(root)
    config = base_config(tmp_path, epochs=4)
    fast = {"FTI_TUNING_HEARTBEAT_S": "1", "FTI_TUNING_GRACE_S": "3"}
    common = ["--storage", PG_URL, "--study", study, "--config", str(config)]
    try:
        doomed = worker(year_root, root, "--trials", "3", *common, env=fast)
        running = wait_for_running_trial(study, doomed)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=60)
        time.sleep(5)  # past the grace period: the trial's heartbeat is stale

        code, out, err = finish(worker(year_root, root, "--trials", "2", *common, env=fast))
        assert code == 0, err[-3000:]
        loaded = optuna.load_study(study_name=study, storage=PG_URL)
        killed = loaded.trials[running.number]
        assert killed.state is TrialState.FAIL
        retried = [t for t in loaded.trials if t.system_attrs.get("failed_trial") == killed.number]
        assert len(retried) == 1 and retried[0].params == killed.params
        assert retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert json.loads(out.strip().splitlines()[-1])["trials"]["FAIL"] == 1

        client = MlflowClient(f"sqlite:///{root.resolve()}/mlflow.db")
        dead_run = client.get_run(killed.user_attrs["mlflow_run_id"])
        assert dead_run.info.status == "FAILED"
        assert dead_run.data.tags["optuna.state"] == "FAIL"
    finally:
        drop_study(study)


def wait_for_running_trial(study: str, process: subprocess.Popen[str]) -> optuna.trial.FrozenTrial:
    """The worker's first trial once it is training (its MLflow run opened)."""
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            trials = optuna.load_study(study_name=study, storage=PG_URL).trials
        except KeyError:  # not created yet
            trials = []
        for trial in trials:
            if trial.state is TrialState.RUNNING and "mlflow_run_id" in trial.user_attrs:
                return trial
        time.sleep(0.3)
    raise AssertionError("no trial started")


def test_a_tuned_config_trains_through_the_gates_and_registry(
    year_root: Path, tmp_path: Path
) -> None:
    """SQLite storage (the local default), then `train --config <the tuned file>`."""
    root = tmp_path / "root"
    config = base_config(tmp_path)
    code, out, err = finish(
        worker(year_root, root, "--trials", "2", "--config", str(config), "--study", "local")
    )
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    tuned = Path(summary["config_file"])
    assert tuned == root / "tuning" / "local.json" and (root / "optuna.db").is_file()

    trained = subprocess.run(
        [PYTHON, "-m", "training_pipeline", "train", "--config", str(tuned)],
        env=training_env(year_root, root),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert trained.returncode in (0, 3), trained.stderr[-3000:]  # 3: refused by the gates
    outcome = json.loads(trained.stdout.strip().splitlines()[-1])
    registry = ModelRegistry(RegistrySettings(data_root=root))
    version = registry.load(outcome["version"], tmp_path / "model")
    assert version.read_json("config.json") == TrainingConfig.from_file(tuned).model_dump(
        mode="json"
    )
    assert "gates" in version.read_json("metrics.json")


def open_fresh(url: str, root: str) -> str:
    """One worker's first use of a storage (run in its own process)."""
    from training_pipeline.config import TuningSettings
    from training_pipeline.study_storage import open_storage

    settings = TuningSettings(data_root=Path(root), tuning_storage=url)
    storage = open_storage(settings, lambda trial: None)
    return str(storage.get_current_version())


@needs_postgres
def test_workers_creating_the_schema_of_a_fresh_database_together_all_start(
    tmp_path: Path,
) -> None:
    import multiprocessing

    import psycopg2

    database = f"fti_tune_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_URL)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {database}")
    url = PG_URL.rsplit("/", 1)[0] + f"/{database}"
    try:
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            versions = pool.starmap(open_fresh, [(url, str(tmp_path))] * 4)
        assert len(set(versions)) == 1  # every worker found the same, complete schema
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.close()
