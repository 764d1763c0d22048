"""Monitoring of the served model: data drift, prediction drift, delayed-label quality and the
retraining policy (``python -m inference_pipeline.monitor run``). See ``docs/monitoring.md``.

The statistics are plain functions (:mod:`.drift`, :mod:`.quality`, :mod:`.policy`); the edges
(store, registry, files, Prometheus) are in :mod:`.window`, :mod:`.report`, :mod:`.gauges`, and
:func:`run_monitor` arranges them. Importing this package reads nothing and starts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_pipeline.monitor.pipeline import MonitorResult, run_monitor
    from inference_pipeline.monitor.settings import MonitorSettings

__all__ = ["MonitorResult", "MonitorSettings", "run_monitor"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m inference_pipeline.monitor --help` does not import scipy and MLflow.
    if name in ("MonitorResult", "run_monitor"):
        from inference_pipeline.monitor import pipeline

        return getattr(pipeline, name)
    if name == "MonitorSettings":
        from inference_pipeline.monitor.settings import MonitorSettings

        return MonitorSettings
    raise AttributeError(name)
