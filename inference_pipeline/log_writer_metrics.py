"""The log writer's Prometheus metrics: what it read and committed, what its commits cost, and
how far the ``predictions`` table is behind the service.

Served on ``FTI_PREDICTION_LOG_METRICS_PORT`` (``/metrics``, every interface) by the
``log-writer`` process, in a registry of its own. The writer's loop updates the counters and
histograms (once per record read at most: nothing here is on a request path); the gauges of
what waits are computed when Prometheus scrapes, from the writer's state and the sink (one
``XLEN`` of the Redis stream, or a listing of the spool folder), so a stuck writer still shows a
growing backlog.

What to alert on (docs/operations.md): ``fti_prediction_log_backlog_*`` growing for minutes
(the writer falls behind or is down), ``time() - fti_log_writer_last_commit_timestamp_seconds``
well past ``FTI_PREDICTION_LOG_COMMIT_S`` while records wait, any
``fti_log_writer_malformed_records_total``, and ``fti_log_writer_failures_total`` rising.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from inference_pipeline.prediction_sink.protocol import PredictionSource, SinkUnavailable

log = logging.getLogger(__name__)

# A commit builds its rows and writes one Delta commit: tens of milliseconds for a few thousand
# rows, seconds for 50,000 on a slow volume; a compaction rewrites the table's small files.
_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COMPACTION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# What a commit was: a plain append, or an upsert of records that may have been committed
# before (read again after a writer died, or after a commit that raised).
APPEND, UPSERT = "append", "upsert"


class WriterMetrics:
    def __init__(self, source: PredictionSource) -> None:
        self.registry = r = CollectorRegistry()
        self.records = Counter(
            "fti_log_writer_records",
            "Prediction log records read from the sink, by whether they are read again "
            "(replayed: maybe committed by a writer that died)",
            ["replayed"],
            registry=r,
        )
        # Looked up once: `labels()` per record would cost the writer's loop more than the
        # increment itself.
        self.read = {False: self.records.labels("false"), True: self.records.labels("true")}
        self.malformed = Counter(
            "fti_log_writer_malformed_records",
            "Records that could not be decoded (logged with their position and dropped)",
            registry=r,
        )
        self.rows = Counter(
            "fti_log_writer_rows",
            "Prediction rows committed to the predictions table, by commit kind",
            ["kind"],
            registry=r,
        )
        self.commits = Counter(
            "fti_log_writer_commits",
            "Commits to the predictions table, by kind (append; upsert of records maybe "
            "committed before)",
            ["kind"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "fti_log_writer_commit_seconds",
            "Time to build one commit's rows and commit them",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.compaction_seconds = Histogram(
            "fti_log_writer_compaction_seconds",
            "Time to compact (OPTIMIZE, then VACUUM) the predictions table",
            buckets=_COMPACTION_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "fti_log_writer_failures",
            "Failed reads, commits or acknowledgements, by error type (each retried with backoff)",
            ["error"],
            registry=r,
        )
        self.last_commit = Gauge(
            "fti_log_writer_last_commit_timestamp_seconds",
            "When the last commit (or acknowledgement of records with no rows) finished, "
            "Unix time; 0 before the first",
            registry=r,
        )
        self.waiting_records = Gauge(
            "fti_log_writer_waiting_records",
            "Records read and not yet committed and acknowledged",
            registry=r,
        )
        self.waiting_rows = Gauge(
            "fti_log_writer_waiting_rows",
            "Prediction rows of the records read and not yet committed",
            registry=r,
        )
        self.oldest_waiting_seconds = Gauge(
            "fti_log_writer_oldest_waiting_seconds",
            "How long the oldest record read and not yet committed has waited (0: none)",
            registry=r,
        )
        backlog = Gauge(
            f"fti_prediction_log_backlog_{source.backlog_unit}",
            f"The sink's unacknowledged {source.backlog_unit} (read by the writer and not "
            "yet committed, or not read yet); NaN while the sink cannot be reached",
            registry=r,
        )
        backlog.set_function(_quietly(source.backlog))

    def watch(self, waiting: Callable[[], tuple[int, int, float | None]]) -> None:
        """Gauges of what waits, from ``waiting()``: (records, rows, monotonic time the
        oldest was read or None), read at each scrape."""
        self.waiting_records.set_function(lambda: waiting()[0])
        self.waiting_rows.set_function(lambda: waiting()[1])

        def oldest_age() -> float:
            since = waiting()[2]
            return 0.0 if since is None else max(0.0, time.monotonic() - since)

        self.oldest_waiting_seconds.set_function(oldest_age)

    def serve(self, port: int) -> WSGIServer:
        """``/metrics`` on ``port`` of every interface, from a daemon thread; raises OSError
        when the port cannot be bound."""
        server, _ = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        return server


def _quietly(read: Callable[[], int]) -> Callable[[], float]:
    """``read`` for a scrape: NaN, and a warning, while the sink cannot answer."""

    def value() -> float:
        try:
            return float(read())
        except SinkUnavailable as exc:
            log.warning("prediction log backlog unknown: %s", exc)
            return math.nan

    return value
