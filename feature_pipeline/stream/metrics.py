"""The stream consumer's Prometheus metrics: what it read, wrote online, committed offline and
acknowledged, what waits for its offline commit, and how far its consumer group is behind.

Served on ``FTI_STREAM_METRICS_PORT`` (``/metrics``, every interface) by the ``stream`` process,
in a registry of its own. The consume loop and the offline committer update the counters and
histograms once per micro-batch or commit, never per message (the loop is the stream's hot
path). The gauges of what waits are computed when Prometheus scrapes, from the committer's
state; the group's lag and pending are read from the broker at each scrape (a probe with a
client of its own and short timeouts, so a scrape never holds up the consumer), so a stuck or
stopped consumer still shows its group falling behind. The embedded broker (a replay in
process) has no group: those two gauges are absent.

What to alert on (docs/operations.md): ``fti_stream_group_lag`` growing for minutes (the
members fall behind or are down), ``time() - fti_stream_last_commit_timestamp_seconds`` well
past ``FTI_STREAM_COMMIT_INTERVAL_S`` while ``fti_stream_waiting_events`` > 0 (offline commits
fail or stall), ``fti_stream_failures_total`` rising, and ``fti_stream_messages_total
{kind="quarantined"}`` rising (an upstream sends what the checks refuse).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import NamedTuple, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.errors import BrokerUnavailable

log = logging.getLogger(__name__)

# A micro-batch's online upsert: a few ms for a handful of events, tens of ms for 5,000 rows
# into SQLite or a Redis pipeline. An offline commit is one MERGE per group, then the
# acknowledgement: tens of ms for a few events, seconds for 50,000 on a slow volume.
_ONLINE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# What a message read was: a valid event, a heartbeat, or quarantined (unreadable, a broken
# event, a heartbeat without a readable instant). The three add up to the messages read.
EVENT, HEARTBEAT, QUARANTINED = "event", "heartbeat", "quarantined"


class GroupBacklog(NamedTuple):
    """The consumer group's entries not yet delivered to any member (``lag``; NaN when the
    broker cannot tell) and delivered but not acknowledged (``pending``)."""

    lag: float
    pending: float


class GroupProbe(Protocol):
    def backlog(self) -> GroupBacklog:
        """The group's backlog now; raises BrokerUnavailable when the broker cannot answer."""
        ...

    def close(self) -> None: ...


class StreamMetrics:
    def __init__(self, group: GroupProbe | None = None) -> None:
        self.registry = r = CollectorRegistry()
        messages = Counter(
            "fti_stream_messages",
            "Messages read, by kind: event (valid), heartbeat, quarantined (unreadable, a "
            "broken event, or a heartbeat without an instant)",
            ["kind"],
            registry=r,
        )
        # Looked up once: `labels()` per micro-batch would cost more than the increments.
        self.messages = {kind: messages.labels(kind) for kind in (EVENT, HEARTBEAT, QUARANTINED)}
        self.micro_batches = Counter(
            "fti_stream_micro_batches", "Micro-batches processed (one fetch each)", registry=r
        )
        self.online_seconds = Histogram(
            "fti_stream_online_upsert_seconds",
            "Time to upsert one micro-batch's events (and the watermark) into the online store",
            buckets=_ONLINE_BUCKETS,
            registry=r,
        )
        self.commits = Counter(
            "fti_stream_offline_commits",
            "Offline commits (one MERGE per group, the progress row, then the acknowledgement)",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "fti_stream_offline_commit_seconds",
            "Time to commit the waiting micro-batches offline and acknowledge their messages",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.acked = Counter(
            "fti_stream_acknowledged_messages",
            "Messages acknowledged to the broker, once both stores hold what they carried",
            registry=r,
        )
        self.failures = Counter(
            "fti_stream_failures",
            "Failures by error type: each failed broker call (retried with backoff), and the "
            "error that stops the consumer",
            ["error"],
            registry=r,
        )
        self.last_commit = Gauge(
            "fti_stream_last_commit_timestamp_seconds",
            "When the last offline commit and acknowledgement finished, Unix time; 0 before "
            "the first",
            registry=r,
        )
        self.watermark = Gauge(
            "fti_stream_watermark_timestamp_seconds",
            "Event time of the latest event or heartbeat this consumer has read, Unix time; 0 "
            "before the first",
            registry=r,
        )
        self.waiting_events = Gauge(
            "fti_stream_waiting_events",
            "Events written online and not yet committed offline and acknowledged",
            registry=r,
        )
        self.oldest_waiting_seconds = Gauge(
            "fti_stream_oldest_waiting_seconds",
            "How long the oldest micro-batch not yet committed offline has waited (0: none)",
            registry=r,
        )
        self._group = group
        if group is not None:
            r.register(_GroupCollector(group))

    def micro_batch(self, events: int, heartbeats: int, quarantined: int) -> None:
        """One micro-batch read: its messages by kind."""
        self.micro_batches.inc()
        for kind, count in ((EVENT, events), (HEARTBEAT, heartbeats), (QUARANTINED, quarantined)):
            if count:
                self.messages[kind].inc(count)

    def advanced(self, watermark: datetime) -> None:
        """The stream's watermark moved to ``watermark`` (a timezone-aware instant)."""
        self.watermark.set(watermark.timestamp())

    def committed(self, seconds: float, acked: int) -> None:
        """One offline commit, and the acknowledgement of ``acked`` messages, took ``seconds``."""
        self.commits.inc()
        self.commit_seconds.observe(seconds)
        self.acked.inc(acked)
        self.last_commit.set_to_current_time()

    def failed(self, error: BaseException) -> None:
        self.failures.labels(type(error).__name__).inc()

    def watch(self, waiting: Callable[[], tuple[int, float]]) -> None:
        """Gauges of what waits for its offline commit, from ``waiting()``: (events, seconds
        the oldest has waited), read at each scrape."""
        self.waiting_events.set_function(lambda: waiting()[0])
        self.oldest_waiting_seconds.set_function(lambda: waiting()[1])

    def serve(self, port: int) -> WSGIServer:
        """``/metrics`` on ``port`` of every interface, from a daemon thread; raises OSError
        when the port cannot be bound."""
        server, _ = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        return server

    def close(self) -> None:
        """Close the group probe's connection (scrapes then read NaN)."""
        if self._group is not None:
            self._group.close()


class _GroupCollector(Collector):
    """The group's lag and pending, read from the broker at each scrape: NaN, and a warning,
    while it cannot answer (one read serves both gauges)."""

    def __init__(self, probe: GroupProbe) -> None:
        self._probe = probe

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return _group_families(None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            backlog = self._probe.backlog()
        except BrokerUnavailable as exc:
            log.warning("consumer group lag unknown: %s", exc)
            backlog = GroupBacklog(math.nan, math.nan)
        return _group_families(backlog)


def _group_families(backlog: GroupBacklog | None) -> list[GaugeMetricFamily]:
    """The two gauges, with their values (None: names and help only, for ``describe``)."""
    return [
        GaugeMetricFamily(
            "fti_stream_group_lag",
            "Stream entries not yet delivered to any member of the consumer group (Redis "
            "XINFO GROUPS lag); NaN while the broker cannot be reached or cannot tell",
            value=None if backlog is None else backlog.lag,
        ),
        GaugeMetricFamily(
            "fti_stream_group_pending",
            "Entries delivered to a member of the group and not yet acknowledged (waiting for "
            "their offline commit, or held by a dead member until claimed); NaN while the "
            "broker cannot be reached",
            value=None if backlog is None else backlog.pending,
        ),
    ]
