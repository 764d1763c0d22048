"""The two streaming commands' work: publish a replay to the broker, consume the stream."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from feature_pipeline.extract import Source
from feature_pipeline.stream.metrics import StreamMetrics
from feature_pipeline.stream.processor import StreamProcessor, StreamSummary
from feature_pipeline.stream.redis_streams import (
    RedisGroupProbe,
    RedisStreamPublisher,
    RedisStreamSource,
)
from feature_pipeline.stream.replay import Pacer, replay_events, timeline
from feature_pipeline.stream.settings import Broker, StreamSettings
from feature_pipeline.stream.source import EventSource, ReplaySource
from shared.errors import ConfigurationError
from shared.feature_store import open_feature_store

log = logging.getLogger(__name__)


def parse_speed(text: str) -> float | None:
    """``max`` (None: as fast as possible) or a positive factor."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if speed <= 0:
        raise ConfigurationError(f"--speed {text!r}: give a positive number or 'max'")
    return speed


@dataclass(frozen=True)
class Replay:
    """What to replay: local days [start, end], paced, a heartbeat after each ``heartbeat``
    of event time without an event, the first ``max_events`` messages only (None: all)."""

    start: date
    end: date
    speed: float | None
    heartbeat: timedelta | None = timedelta(minutes=5)
    max_events: int | None = None

    def pacer(self, settings: StreamSettings) -> Pacer:
        events = replay_events(
            Source(settings.source, settings.source_storage_options), self.start, self.end
        )
        messages = timeline(events, self.heartbeat)
        if self.max_events is not None:
            messages = messages[: self.max_events]
        if not messages:
            raise ConfigurationError(f"no departures to replay for {self.start}..{self.end}")
        return Pacer(messages, self.speed)


@dataclass
class PublishSummary:
    stream: str
    published: int = 0
    first_event: str | None = None
    last_event: str | None = None
    seconds: float = 0.0


def publish_replay(
    settings: StreamSettings,
    replay: Replay,
    *,
    stop: threading.Event | None = None,
    on_batch: Callable[[PublishSummary], None] | None = None,
) -> PublishSummary:
    """Append the replay's messages to the stream as they fall due."""
    stop = stop or threading.Event()
    pacer = replay.pacer(settings)
    publisher = RedisStreamPublisher(
        settings.stream_url.get_secret_value(), settings.stream_key, maxlen=settings.stream_maxlen
    )
    summary = PublishSummary(stream=f"{settings.stream_key} at {publisher.url}")
    began = time.perf_counter()
    try:
        for batch in pacer:
            publisher.publish([m.payload for m in batch])
            summary.published += len(batch)
            summary.first_event = summary.first_event or batch[0].at.isoformat()
            summary.last_event = batch[-1].at.isoformat()
            if on_batch is not None:
                on_batch(summary)
            if stop.is_set():
                break
    finally:
        publisher.close()
        summary.seconds = time.perf_counter() - began
    return summary


def stream_metrics(settings: StreamSettings) -> StreamMetrics:
    """The consumer's metrics; with Redis, its group's lag and pending read at each scrape
    (the embedded broker has no group)."""
    if settings.stream_broker is Broker.embedded:
        return StreamMetrics()
    url = settings.stream_url.get_secret_value()
    return StreamMetrics(RedisGroupProbe(url, settings.stream_key, settings.stream_group))


def open_source(
    settings: StreamSettings,
    replay: Replay | None,
    stop: threading.Event,
    metrics: StreamMetrics | None = None,
) -> EventSource:
    if settings.stream_broker is Broker.embedded:
        if replay is None:
            raise ConfigurationError(
                "the embedded broker replays events in this process: give --start and --end"
            )
        return ReplaySource(replay.pacer(settings), name=f"replay {replay.start}..{replay.end}")
    if replay is not None:
        raise ConfigurationError(
            "--start/--end replay in this process (--broker embedded); with Redis, publish "
            "with `replay-events` and consume with `stream`"
        )
    return RedisStreamSource(
        settings.stream_url.get_secret_value(),
        settings.stream_key,
        settings.stream_group,
        settings.consumer_name,
        claim_idle_s=settings.stream_claim_idle_s,
        stop=stop,
        on_failure=None if metrics is None else metrics.failed,
    )


def run_stream(
    settings: StreamSettings,
    *,
    replay: Replay | None = None,
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    on_batch: Callable[[StreamSummary], None] | None = None,
    metrics: StreamMetrics | None = None,
) -> StreamSummary:
    """Consume until stopped (or, for a replay, until it is exhausted), counting in
    ``metrics`` (None: metrics of its own, served nowhere)."""
    stop = stop or threading.Event()
    metrics = StreamMetrics() if metrics is None else metrics
    source = open_source(settings, replay, stop, metrics)
    store = open_feature_store(settings)
    try:
        processor = StreamProcessor(
            store,
            source,
            consumer=settings.consumer_name,
            batch=settings.stream_batch,
            wait_s=settings.stream_wait_s,
            commit_interval_s=settings.stream_commit_interval_s,
            commit_events=settings.stream_commit_events,
            alive_file=settings.stream_alive_file,
            metrics=metrics,
        )
        return processor.run(stop, max_messages=max_messages, on_batch=on_batch)
    finally:
        source.close()
        store.close()
