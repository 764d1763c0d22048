"""Prometheus metrics of the service, in a registry of its own (one per app, so several apps in
one process, as in tests, never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 0.5 ms to 5 s: one-flight requests take a few ms, a 503 takes the timeout.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Stages:
    """The stage histogram's children, looked up once (``labels()`` per request costs)."""

    def __init__(self, histogram: Histogram) -> None:
        self.features = histogram.labels("features")
        self.transform = histogram.labels("transform")
        self.triton = histogram.labels("triton")
        self.total = histogram.labels("total")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fti_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "fti_http_request_seconds",
            "HTTP latency by route",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "fti_prediction_stage_seconds",
            "Prediction latency by stage (features, transform, triton, total)",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.stages = _Stages(self.stage_seconds)
        self.flights = Counter("fti_predicted_flights", "Flights scored", registry=r)
        self.errors = Counter(
            "fti_prediction_errors", "Failed predictions by cause", ["cause"], registry=r
        )
        self.imputed = Counter(
            "fti_imputed_features",
            "Features missing at serving time, by feature",
            ["feature"],
            registry=r,
        )
        self._imputed: dict[str, Counter] = {}
        self.prediction_log_rows = Counter(
            "fti_prediction_log_rows", "Prediction log rows by outcome", ["outcome"], registry=r
        )
        self.model_version = Gauge(
            "fti_model_version", "Registered model version being served", registry=r
        )
        self.model_info = Info("fti_model", "Model being served", registry=r)
        self.reloads = Counter(
            "fti_model_reloads", "Model reloads by outcome", ["outcome"], registry=r
        )
        self.role_version = Gauge(
            "fti_model_role_version",
            "Registered version serving each role (champion, challenger)",
            ["role"],
            registry=r,
        )
        self.role_flights = Counter(
            "fti_role_flights",
            "Flights answered (canary) or scored off the response path (shadow) by role",
            ["role", "mode"],
            registry=r,
        )
        self.triton_restarts = Counter(
            "fti_triton_restarts",
            "Restarts of the managed Triton after it died, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )
        self.triton_up = Gauge(
            "fti_triton_up", "1 while the managed Triton runs, 0 while it is down", registry=r
        )
        self.shadow_failures = Counter(
            "fti_shadow_failures", "Shadow scorings that failed (never seen by clients)", registry=r
        )

    def imputed_feature(self, feature: str) -> Counter:
        """The imputed-features counter of ``feature``, its child looked up once (a request
        with a dozen features missing paid a dozen ``labels()`` calls)."""
        child = self._imputed.get(feature)
        if child is None:
            child = self._imputed[feature] = self.imputed.labels(feature)
        return child

    def set_model(self, version: str, alias: str, triton_name: str) -> None:
        self.model_version.set(float(version))
        self.model_info.info({"version": version, "alias": alias, "triton_model": triton_name})
