"""Prometheus gauges of a monitoring run: written for the node exporter's textfile collector
and/or pushed to a Pushgateway (a batch job lives too briefly to be scraped).

Every series carries the model version and the prediction source. A push replaces the whole
group (``job`` + ``source``), so series of a version no longer monitored disappear; alert on
``fti_monitor_last_run_timestamp_seconds`` to notice a job that stopped running.
"""

from __future__ import annotations

import logging
import time
import urllib.error
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from inference_pipeline.monitor.settings import MonitorSettings
from inference_pipeline.monitor.status import DRIFT

log = logging.getLogger(__name__)

LABELS = ("model_version", "source")


def build_gauges(result: Mapping[str, Any]) -> CollectorRegistry:
    """A fresh registry holding the run's gauges (``result`` is ``MonitorResult.to_dict()``)."""
    registry = CollectorRegistry()
    labels = {"model_version": result["model"]["version"], "source": result["window"]["source"]}

    def gauge(name: str, doc: str, value: float | None, extra: tuple[str, ...] = ()) -> Gauge:
        metric = Gauge(name, doc, [*LABELS, *extra], registry=registry)
        if value is not None and not extra:
            metric.labels(**labels).set(value)
        return metric

    drift = result["drift"]
    gauge(
        "fti_monitor_drift_share",
        "Drifted share of the tested features (by family unless FTI_DRIFT_SHARE_BY=feature)",
        drift["share"],
    )
    gauge("fti_monitor_features_drifted", "Features that drifted", drift["drifted"])
    gauge("fti_monitor_features_tested", "Features tested for drift", drift["tested"])
    psi = gauge("fti_monitor_feature_psi", "PSI per feature", None, ("feature",))
    drifted = gauge("fti_monitor_feature_drifted", "1 if the feature drifted", None, ("feature",))
    for row in drift["features"]:
        if row["psi"] is not None:
            psi.labels(**labels, feature=row["feature"]).set(row["psi"])
            drifted.labels(**labels, feature=row["feature"]).set(1.0 if row["drifted"] else 0.0)
    gauge(
        "fti_monitor_ood_rate",
        "Share of flights with an out-of-range value or unseen category",
        result["ood"]["row_rate"],
    )
    predicted = result.get("prediction_drift") or {}
    gauge("fti_monitor_prediction_psi", "PSI of the predicted probabilities", predicted.get("psi"))
    quality = result.get("quality") or {}
    window = quality.get("window") or {}
    test = quality.get("test") or {}
    gauge(
        "fti_monitor_window_roc_auc",
        "ROC AUC on the window's labelled flights",
        window.get("roc_auc"),
    )
    gauge(
        "fti_monitor_window_log_loss",
        "Log loss on the window's labelled flights",
        window.get("log_loss"),
    )
    gauge(
        "fti_monitor_test_roc_auc", "ROC AUC of the model on its test window", test.get("roc_auc")
    )
    gauge(
        "fti_monitor_labelled_flights",
        "Flights of the window whose outcome arrived",
        window.get("labelled", 0),
    )
    gauge(
        "fti_monitor_retrain_recommended",
        "1 if the retraining policy fired",
        1.0 if result["retrain"]["fire"] else 0.0,
    )
    gauge(
        "fti_monitor_drift_detected",
        "1 if the run's status is drift",
        1.0 if result["status"] == DRIFT else 0.0,
    )
    gauge("fti_monitor_last_run_timestamp_seconds", "When the monitoring run finished", time.time())
    return registry


def publish_gauges(result: Mapping[str, Any], settings: MonitorSettings) -> dict[str, Any]:
    """Write the textfile and push to the Pushgateway, as configured; says what happened.

    A Pushgateway that cannot be reached is reported (``pushgateway_error``), not fatal: the
    JSON and HTML results still count, and the stale timestamp gauge shows up on dashboards."""
    outputs: dict[str, Any] = {}
    if settings.prometheus_textfile is None and settings.pushgateway_url is None:
        return outputs
    registry = build_gauges(result)
    if settings.prometheus_textfile is not None:
        settings.prometheus_textfile.parent.mkdir(parents=True, exist_ok=True)
        # write_to_textfile writes a temporary file and renames it: never half-written
        write_to_textfile(str(settings.prometheus_textfile), registry)
        outputs["prometheus_textfile"] = str(settings.prometheus_textfile)
    if settings.pushgateway_url is not None:
        try:
            push_to_gateway(
                settings.pushgateway_url,
                job=settings.pushgateway_job,
                registry=registry,
                grouping_key={"source": result["window"]["source"]},
                timeout=10,
            )
            outputs["pushgateway"] = settings.pushgateway_url
        except (urllib.error.URLError, OSError) as exc:
            message = f"Pushgateway {settings.pushgateway_url} unreachable: {exc}"
            log.warning(message)
            outputs["pushgateway_error"] = message
    return outputs
