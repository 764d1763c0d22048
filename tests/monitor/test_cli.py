"""``python -m inference_pipeline.monitor run`` over a real store and registry.

A copy of the session's full-year store; a small model trained on January by the training
pipeline's own entry function and registered in MLflow (champion); the batch job's own
``score_day`` logs its predictions for four January days (inside the training period) and four
July days. A second version (the same files registered again) scores two of the July days, as a
rollout would, so the window holds two versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from inference_pipeline.monitor.__main__ import app
from inference_pipeline.triton_server import free_loopback_port
from shared.feature_view import FLIGHT_DELAY_VIEW
from shared.recent_departures import FEATURES as FRESH_FEATURES
from shared.registry import ModelRegistry, RegistrySettings
from tests.training_fixtures import small_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "flight_delay"
JANUARY = [date(2013, 1, 16) + timedelta(days=i) for i in range(4)]  # inside training
JULY = [date(2013, 7, 8) + timedelta(days=i) for i in range(4)]
ROOT_DIR = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Monitored:
    root: Path
    champion: str
    rollout: str  # scored July 8-9 too
    idle: str  # registered, never scored


def register_again(registry: ModelRegistry, version: str, workdir: Path) -> str:
    """The verified files of ``version`` registered as a new version (a stand-in for a
    retrained model: monitoring only needs its reference and metrics)."""
    loaded = registry.load(version, workdir)
    with registry.run("monitor-test-copy", tags={}) as run_id:
        return registry.register(run_id, loaded.path).version


@pytest.fixture(scope="module")
def monitored(year_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    from inference_pipeline.batch import score_day
    from inference_pipeline.settings import InferenceSettings
    from training_pipeline.config import TrainingSettings
    from training_pipeline.pipeline import run_training

    root = tmp_path_factory.mktemp("monitor_root")
    shutil.copytree(year_root, root, dirs_exist_ok=True)  # predictions are written into it
    settings = TrainingSettings(
        data_root=root,
        model_name=MODEL,
        checkpoint_dir=root / "checkpoints",
        git_commit="monitor-tests",
        device="cpu",
    )
    outcome = run_training(settings, small_config())
    assert outcome is not None
    registry = ModelRegistry(RegistrySettings(data_root=root, model_name=MODEL))
    registry.promote(outcome.version)
    rollout = register_again(registry, outcome.version, root / "copy-a")
    idle = register_again(registry, outcome.version, root / "copy-b")
    inference = InferenceSettings(data_root=root, model_name=MODEL, allow_unauthenticated=True)
    for day in JANUARY + JULY:
        score_day(inference, day, model_ref="champion", in_process=True)
    for day in JULY[:2]:
        score_day(inference, day, model_ref=rollout, in_process=True)
    return Monitored(root=root, champion=outcome.version, rollout=rollout, idle=idle)


def env(root: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("FTI_")}
    return keep | {
        "FTI_DATA_ROOT": str(root),
        "FTI_MODEL_NAME": MODEL,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(ROOT_DIR),
        **extra,
    }


def run_cli(root: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference_pipeline.monitor", "run", *args],
        env=env(root, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT_DIR,
    )


def invoke(root: Path, *args: str, **extra: str):  # type: ignore[no-untyped-def]
    """The same CLI in process (faster, for the failure paths)."""
    names = {k: None for k in os.environ if k.startswith("FTI_")}  # unset the caller's
    return CliRunner().invoke(app, ["run", *args], env=names | env(root, **extra))


def window_args(days: list[date], out: Path) -> list[str]:
    return ["--end", days[-1].isoformat(), "--window-days", str(len(days)), "--output-dir",
            str(out)]  # fmt: skip


def stdout_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def july_run(monitored: Monitored, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("july")
    textfile = out / "prom" / "fti_monitor.prom"
    done = run_cli(monitored.root, *window_args(JULY, out), FTI_PROMETHEUS_TEXTFILE=str(textfile))
    return done, out, textfile


def test_a_july_window_against_a_january_model_is_drift(july_run, monitored: Monitored) -> None:  # type: ignore[no-untyped-def]
    done, _, _ = july_run
    assert done.returncode == 3, done.stderr
    line = stdout_json(done.stdout)
    assert line["status"] == "drift" and line["exit_code"] == 3
    assert "Monitoring 2013-07-08..2013-07-11" in done.stderr and "alert: data drift" in done.stderr
    result = json.loads(Path(line["outputs"]["json"]).read_text())
    assert result["model"]["version"] == monitored.champion
    assert result["window"] == {"start": "2013-07-08", "end": "2013-07-11", "days": 4,
                                "source": "all"}  # fmt: skip
    assert result["drift"]["detected"] and result["retrain"]["fire"]
    drifted = set(result["drift"]["drifted_features"])
    assert {"wx_temp", "wx_dewp"} <= drifted
    assert result["drift"]["baseline"]["used"]
    assert result["ood"]["row_rate"] > 0.5  # July's temperatures never occurred in January
    assert any(r.startswith("data drift") for r in result["retrain"]["reasons"])


def test_the_fresh_window_features_are_monitored_like_the_others(july_run) -> None:  # type: ignore[no-untyped-def]
    """The fresh window features (computed as of T from the departure events) are in the
    version's reference and in the window's drift report, each tested with its missing rate
    against the training split's; the batch job computed them from the events, so July's
    counts are there (not all missing)."""
    done, _, _ = july_run
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    rows = {r["feature"]: r for r in result["drift"]["features"]}
    for name in FRESH_FEATURES:
        row = rows[name]
        assert row["kind"] == "numeric" and row["status"] not in {"ABSENT", "NO_REFERENCE"}, row
        assert row["null_fraction_reference"] is not None and row["missing_p_value"] is not None
        assert row["null_fraction_current"] is not None
    assert rows["origin_departures_60m"]["null_fraction_current"] == 0
    assert rows["origin_departures_60m"]["current_mean"] > 3
    # (an aircraft's first departure of the day has no earlier one: missing, and imputed)
    assert rows["tail_last_dep_delay"]["null_fraction_current"] > 0


def test_the_window_counts_each_flight_once_and_reports_each_version(
    july_run, monitored: Monitored
) -> None:  # type: ignore[no-untyped-def]
    done, _, _ = july_run
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    predictions = read_table(monitored.root, "predictions").filter(
        pl.col("flight_date").is_between(JULY[0], JULY[-1])
    )
    assert result["predictions"]["rows"] == predictions.height
    assert result["predictions"]["flights"] == predictions["flight_id"].n_unique()
    assert result["predictions"]["by_version"] == {
        monitored.champion: predictions.filter(
            pl.col("model_version") == monitored.champion
        ).height,
        monitored.rollout: predictions.filter(pl.col("model_version") == monitored.rollout).height,
    }
    versions = {v["version"]: v for v in result["versions"]}
    assert set(versions) == {monitored.champion, monitored.rollout}
    rollout_days = {d["date"] for d in versions[monitored.rollout]["quality"]["days"]}
    assert rollout_days == {d.isoformat() for d in JULY[:2]}


def test_window_quality_equals_scikit_learn_on_the_joined_outcomes(
    july_run, monitored: Monitored
) -> None:  # type: ignore[no-untyped-def]
    done, _, _ = july_run
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    predictions = read_table(monitored.root, "predictions").filter(
        pl.col("flight_date").is_between(JULY[0], JULY[-1])
        & (pl.col("model_version") == monitored.champion)
    )
    flights = read_table(monitored.root, "flights").select("flight_id", "is_delayed")
    labelled = predictions.join(flights, on="flight_id").drop_nulls("is_delayed")
    window = result["quality"]["window"]
    assert window["status"] == "ok" and window["labelled"] == labelled.height
    assert window["roc_auc"] == pytest.approx(
        roc_auc_score(labelled["is_delayed"], labelled["probability"]), abs=1e-9
    )
    test_auc = result["quality"]["test"]["roc_auc"]
    assert result["quality"]["comparison"]["roc_auc_drop"] == pytest.approx(
        test_auc - window["roc_auc"]
    )
    assert [d["date"] for d in result["quality"]["days"]] == [d.isoformat() for d in JULY]


def test_quality_and_drift_per_segment_against_the_versions_test_metrics(
    july_run, monitored: Monitored, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    done, _, _ = july_run
    line = stdout_json(done.stdout)
    result = json.loads(Path(line["outputs"]["json"]).read_text())
    segments = result["segments"]
    assert segments["version"] == monitored.champion and segments["against"] == "test"
    rows = segments["rows"]
    assert {r["kind"] for r in rows} == {"carrier", "origin", "hour", "month"}
    assert [r["segment"] for r in rows if r["kind"] == "month"] == ["07"]
    judged = [r["fell_by"] for r in rows if r["fell_by"] is not None]
    assert judged and judged == sorted(judged, reverse=True)  # fell furthest first
    assert all(r["fell_by"] is not None for r in rows[: len(judged)])
    # Independently: the champion's predictions of JFK flights, joined with their outcomes.
    predictions = read_table(monitored.root, "predictions").filter(
        pl.col("flight_date").is_between(JULY[0], JULY[-1])
        & (pl.col("model_version") == monitored.champion)
    )
    flights = read_table(monitored.root, "flights").select("flight_id", "is_delayed", "origin")
    jfk = (
        predictions.join(flights, on="flight_id")
        .drop_nulls("is_delayed")
        .filter(pl.col("origin") == "JFK")
    )
    row = next(r for r in rows if r["name"] == "origin=JFK")
    assert row["labelled"] == jfk.height
    assert row["roc_auc"] == pytest.approx(roc_auc_score(jfk["is_delayed"], jfk["probability"]))
    recorded = ModelRegistry(RegistrySettings(data_root=monitored.root, model_name=MODEL)).load(
        monitored.champion, tmp_path / "v"
    )
    test_jfk = next(
        r
        for r in recorded.read_json("segment_metrics.json")["segments"]
        if (r["kind"], r["segment"]) == ("origin", "JFK")
    )
    assert row["reference_roc_auc"] == pytest.approx(test_jfk["roc_auc"])
    assert row["fell_by"] == pytest.approx(test_jfk["roc_auc"] - row["roc_auc"])
    assert row["prediction_status"] in {"ok", "warn", "drift", "usual"}
    html = Path(line["outputs"]["html"]).read_text()
    assert "Quality and drift per segment" in html and "origin=JFK" in html


def test_html_report_is_self_contained(july_run) -> None:  # type: ignore[no-untyped-def]
    import xml.etree.ElementTree as ET

    done, _, _ = july_run
    html = Path(stdout_json(done.stdout)["outputs"]["html"]).read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for outside in ("<script", "<link", "<img", "src=", "@import", "https://"):
        assert outside not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    svgs = html.split("<svg")[1:]
    assert len(svgs) > 40  # a plot per feature, predictions, quality over time, reliability
    for svg in svgs:
        ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")  # well-formed
    for heading in ("Data drift per feature", "Prediction drift", "Quality over time",
                    "Model versions in the window", "Distributions", "wx_temp"):  # fmt: skip
        assert heading in html


def test_the_report_escapes_what_it_shows(july_run) -> None:  # type: ignore[no-untyped-def]
    """The report renders the JSON result alone; text from the data is escaped."""
    from inference_pipeline.monitor.report import render_html

    done, _, _ = july_run
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    row = result["drift"]["features"][0]
    row["feature"], row["note"] = "<script>x</script>", "a & b"
    row["bins"] = ["<img src=x>", *row["bins"][1:]]
    html = render_html(result)
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "a &amp; b" in html


def test_prometheus_textfile_holds_the_gauges(july_run) -> None:  # type: ignore[no-untyped-def]
    done, _, textfile = july_run
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    samples = {
        (s.name, s.labels.get("feature")): s.value
        for family in text_string_to_metric_families(textfile.read_text())
        for s in family.samples
    }
    assert samples[("fti_monitor_drift_share", None)] == pytest.approx(result["drift"]["share"])
    assert samples[("fti_monitor_retrain_recommended", None)] == 1.0
    assert samples[("fti_monitor_window_roc_auc", None)] == pytest.approx(
        result["quality"]["window"]["roc_auc"]
    )
    temp = next(r for r in result["drift"]["features"] if r["feature"] == "wx_temp")
    assert samples[("fti_monitor_feature_psi", "wx_temp")] == pytest.approx(temp["psi"])
    assert samples[("fti_monitor_ood_rate", None)] == pytest.approx(result["ood"]["row_rate"])


def test_a_window_inside_the_training_period_is_healthy(
    monitored: Monitored, tmp_path: Path
) -> None:
    done = run_cli(monitored.root, *window_args(JANUARY, tmp_path), "--source", "batch")
    line = stdout_json(done.stdout)
    assert done.returncode == 0, (line, done.stderr)
    result = json.loads(Path(line["outputs"]["json"]).read_text())
    assert result["status"] == "healthy" and result["alerts"] == []
    assert not result["retrain"]["fire"]
    assert result["quality"]["window"]["status"] == "ok"


def test_thresholds_and_policy_come_from_the_environment(
    monitored: Monitored, tmp_path: Path
) -> None:
    done = invoke(
        monitored.root,
        *window_args(JULY, tmp_path),
        FTI_RETRAIN_DRIFT_SHARE="1.0",
        FTI_RETRAIN_AUC_DROP="1.0",
        FTI_QUALITY_MIN_LABELS="1000000",
        FTI_DRIFT_IGNORE_FEATURES='["wx_temp"]',
        FTI_DRIFT_SHARE_BY="feature",
    )
    assert done.exit_code == 0, done.output
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    assert result["status"] == "healthy"
    assert result["quality"]["window"]["status"] == "not enough labels yet"
    assert result["drift"]["ignored_features"] == ["wx_temp"]
    assert result["thresholds"]["retrain"]["drift_share"] == 1.0
    drift = result["drift"]
    assert drift["share_by"] == "feature"
    assert drift["share"] == pytest.approx(drift["drifted"] / drift["tested"])


def test_the_drifted_share_is_taken_by_feature_family(july_run) -> None:  # type: ignore[no-untyped-def]
    """By default: the mean over the version's feature families of their drifted share; the
    result, the table and the report name the families that drifted."""
    done, _, _ = july_run
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    drift = result["drift"]
    assert drift["share_by"] == "family" and drift["drifted_families"]
    families = FLIGHT_DELAY_VIEW.feature_families()
    tested = {
        r["feature"]: r["status"] == "drift"
        for r in drift["features"]
        if r["status"] in ("ok", "warn", "usual", "drift")
    }
    per_family: dict[str, list[bool]] = {}
    for feature, drifted in tested.items():
        per_family.setdefault(families.get(feature, feature), []).append(drifted)
    expected = sum(sum(d) / len(d) for d in per_family.values()) / len(per_family)
    assert drift["share"] == pytest.approx(expected)
    assert drift["feature_share"] == pytest.approx(drift["drifted"] / drift["tested"])
    html = Path(stdout_json(done.stdout)["outputs"]["html"]).read_text()
    assert "drifted families" in html and "by family" in html


def test_a_schedule_fires_retraining(monitored: Monitored, tmp_path: Path) -> None:
    done = invoke(monitored.root, *window_args(JANUARY, tmp_path), FTI_RETRAIN_MAX_AGE_DAYS="1")
    # the model's data ends 2013-02-11 (test window): a January window is not older than it
    assert done.exit_code == 0, done.output
    done = invoke(monitored.root, *window_args(JULY, tmp_path), FTI_RETRAIN_MAX_AGE_DAYS="30",
                  FTI_RETRAIN_DRIFT_SHARE="1.0", FTI_RETRAIN_AUC_DROP="1.0")  # fmt: skip
    assert done.exit_code == 3
    reasons = stdout_json(done.stdout)["retrain"]["reasons"]
    assert reasons == ["age: the model's data ends 150 days before the window's end (> 30)"]


def test_another_version_and_a_version_without_predictions(
    monitored: Monitored, tmp_path: Path
) -> None:
    done = invoke(monitored.root, *window_args(JULY, tmp_path), "--model", monitored.rollout)
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    assert result["model"]["version"] == monitored.rollout
    assert result["quality"]["window"]["labelled"] < 2_200  # its two days only
    done = invoke(monitored.root, *window_args(JULY, tmp_path), "--model", monitored.idle)
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    assert result["model"]["scored_in_window"] is False and result["quality"] is None
    assert result["drift"]["tested"] > 30  # data drift needs no predictions of its own
    assert any("made no predictions" in n for n in result["notes"])


# -- failures and bad input: one line, the right exit code, nothing written ----------------------


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_an_empty_window_is_a_clear_failure(monitored: Monitored, tmp_path: Path) -> None:
    done = invoke(monitored.root, "--end", "2013-03-01", "--output-dir", str(tmp_path / "out"))
    assert done.exit_code == 1
    line = one_error_line(done.stderr)
    assert "NothingToMonitor" in line and "2013-02-23..2013-03-01" in line
    assert not (tmp_path / "out").exists()


def test_a_source_without_predictions_is_a_clear_failure(
    monitored: Monitored, tmp_path: Path
) -> None:
    done = invoke(monitored.root, *window_args(JULY, tmp_path / "out"), "--source", "online")
    assert done.exit_code == 1
    assert "no online predictions" in one_error_line(done.stderr)
    assert not (tmp_path / "out").exists()


def test_a_store_without_predictions_is_a_clear_failure(
    monitored: Monitored, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(monitored.root, root, ignore=shutil.ignore_patterns("predictions_v*"))
    done = invoke(root, *window_args(JULY, tmp_path / "out"))
    assert done.exit_code == 1
    assert "the predictions group does not exist yet" in one_error_line(done.stderr)


def test_a_registry_without_the_model_is_a_clear_failure(year_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(year_root / "offline", root / "offline")
    done = invoke(root, "--end", "2013-07-01", "--model", "champion")
    assert done.exit_code == 1
    assert "ModelVersionNotFound" in one_error_line(done.stderr)


def test_an_unknown_model_version(monitored: Monitored, tmp_path: Path) -> None:
    done = invoke(monitored.root, *window_args(JULY, tmp_path), "--model", "99")
    assert done.exit_code == 1
    assert "has no version 99" in one_error_line(done.stderr)


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["--end", "2013-13-01"], {}, "not a YYYY-MM-DD date"),
        (["--end", "2013-07-11", "--window-days", "0"], {}, ""),
        (["--end", "2013-07-11", "--source", "kafka"], {}, ""),
        (["--end", "2013-07-11"], {"FTI_DRIFT_PSI_WARN": "0.5"}, "must not exceed FTI_DRIFT_PSI"),
        (["--end", "2013-07-11"], {"FTI_RETRAIN_DRIFT_SHARE": "2"}, "FTI_RETRAIN_DRIFT_SHARE"),
        (["--end", "2013-07-11"], {"FTI_PROMETHEUS_TEXTFILE": "/tmp/x.txt"}, ".prom"),
    ],
)
def test_bad_input_is_a_usage_error(
    monitored: Monitored, args: list[str], extra: dict[str, str], message: str
) -> None:
    done = invoke(monitored.root, *args, **extra)
    assert done.exit_code == 2, done.output
    if message:
        assert message in one_error_line(done.stderr)


# -- Pushgateway -----------------------------------------------------------------------------


def test_an_unreachable_pushgateway_is_reported_not_fatal(
    monitored: Monitored, tmp_path: Path
) -> None:
    url = f"127.0.0.1:{free_loopback_port()}"  # nothing listens there
    done = invoke(monitored.root, *window_args(JULY, tmp_path), FTI_PUSHGATEWAY_URL=url)
    assert done.exit_code == 3
    outputs = stdout_json(done.stdout)["outputs"]
    assert url in outputs["pushgateway_error"]
    assert "warning: Pushgateway" in done.stderr
    assert Path(outputs["json"]).is_file() and Path(outputs["html"]).is_file()


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("no Prometheus Pushgateway binary on PATH (apt: prometheus-pushgateway)")
    port = free_loopback_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_gauges_are_pushed_to_a_pushgateway(
    monitored: Monitored, pushgateway: str, tmp_path: Path
) -> None:
    done = invoke(
        monitored.root, *window_args(JULY, tmp_path), "--source", "batch",
        FTI_PUSHGATEWAY_URL=pushgateway, FTI_PUSHGATEWAY_JOB="fti_monitoring_test",
    )  # fmt: skip
    assert done.exit_code == 3
    assert stdout_json(done.stdout)["outputs"]["pushgateway"] == pushgateway
    text = urllib.request.urlopen(f"http://{pushgateway}/metrics", timeout=5).read().decode()
    shares = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fti_monitor_drift_share"
    ]
    assert len(shares) == 1
    assert shares[0].labels["job"] == "fti_monitoring_test"
    assert shares[0].labels["source"] == "batch"
    result = json.loads(Path(stdout_json(done.stdout)["outputs"]["json"]).read_text())
    assert shares[0].value == pytest.approx(result["drift"]["share"])


def read_table(root: Path, group: str) -> pl.DataFrame:
    """A feature group's Delta table read directly, not through the monitoring code."""
    return pl.read_delta(str(root / "offline" / f"{group}_v1"))
