"""Prometheus metrics of the service, in a registry of its own (one per app, so several apps in
one process, as in tests, never collide)."""

from __future__ import annotations

from collections import Counter as Counts
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily

# Latency buckets from 0.5 ms to 5 s: one-flight requests take a few ms, a 503 takes the timeout.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ImputedFeatures:
    """``fti_imputed_features_total{feature}``: plain counts, exposed through the registry's
    custom-collector interface when scraped (no ``_created`` series). A one-flight request of
    the benchmark's day misses 11 to 23 features: one locked ``Counter.inc`` each took 8-15 us
    of the request, one ``collections.Counter.update`` per flight (C) takes 1-1.5 us, about 2%
    of a request's CPU at 16 connections."""

    name = "fti_imputed_features"
    documentation = "Features missing at serving time, by feature"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: Counts[str] = Counts()
        registry.register(self)

    def add(self, features: Iterable[str]) -> None:
        self._counts.update(features)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for feature, count in sorted(self._counts.items()):  # a copy taken in one C call
            family.add_metric([feature], count)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=["feature"])


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
        self.batch_requests = Histogram(
            "fti_scored_batch_requests",
            "Requests scored together: concurrent requests for one model version share a "
            "batch (one store read, MDT and Triton call); observed once per batch",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
            registry=r,
        )
        self.flights = Counter("fti_predicted_flights", "Flights scored", registry=r)
        self.errors = Counter(
            "fti_prediction_errors", "Failed predictions by cause", ["cause"], registry=r
        )
        self.imputed = ImputedFeatures(r)
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

    def set_model(self, version: str, alias: str, triton_name: str) -> None:
        self.model_version.set(float(version))
        self.model_info.info({"version": version, "alias": alias, "triton_model": triton_name})
