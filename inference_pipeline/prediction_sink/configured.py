"""The sink and source the settings choose (``FTI_PREDICTION_LOG_SINK``)."""

from __future__ import annotations

from inference_pipeline.prediction_sink.protocol import PredictionSink, PredictionSource
from inference_pipeline.prediction_sink.redis_stream import RedisStreamSink, RedisStreamSource
from inference_pipeline.prediction_sink.spool import SpoolSink, SpoolSource
from inference_pipeline.settings import InferenceSettings, PredictionLogSink


def open_sink(settings: InferenceSettings) -> PredictionSink:
    """The service worker's sink (a spool file of its own, or the stream)."""
    if settings.prediction_log_sink is PredictionLogSink.redis:
        return RedisStreamSink(
            settings.redis_url, settings.prediction_log_stream, timeout_s=settings.online_timeout_s
        )
    return SpoolSink(
        settings.prediction_spool_dir,
        segment_bytes=settings.prediction_log_segment_bytes,
        segment_s=settings.prediction_log_segment_s,
        fsync=settings.prediction_log_fsync,
    )


def open_source(settings: InferenceSettings) -> PredictionSource:
    """The log writer's source."""
    if settings.prediction_log_sink is PredictionLogSink.redis:
        return RedisStreamSource(settings.redis_url, settings.prediction_log_stream)
    return SpoolSource(settings.prediction_spool_dir)
