"""``python -m inference_pipeline``: the online service (``serve``), the prediction log's writer
(``log-writer``), the batch job (``batch``), monitoring (``monitor``) and a standalone Triton
(``triton``).

Settings come from the environment (``FTI_*``, see :mod:`inference_pipeline.settings`) and these
flags; they are built here, once.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Mapping
from typing import Annotated

import typer

from inference_pipeline import batch as batch_job
from inference_pipeline.monitor.__main__ import app as monitor_app
from inference_pipeline.settings import InferenceSettings, TritonMode
from shared.command_line import (
    CommandLine,
    DataRootOption,
    LogLevel,
    LogLevelOption,
    build_settings,
    configure_logging,
    fail,
    setting_option,
)
from shared.errors import FTIError

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

app = CommandLine(
    no_args_is_help=True,
    help="Inference: the online service, its prediction log writer, the nightly batch job, "
    "monitoring, a standalone Triton.",
)
app.command("batch")(batch_job.batch)
app.add_typer(monitor_app, name="monitor")
# The settings `serve`'s options set (named in error lines).
SERVE_FLAGS = {
    "host": "--host",
    "port": "--port",
    "workers": "--workers",
    "model_alias": "--model",
    "triton_url": "--triton-url",
    "triton_grpc_url": "--triton-grpc-url",
}


def _setting(field: str, *names: str, **kwargs: object) -> object:
    return setting_option(InferenceSettings, field, *names, **kwargs)


@app.command()
def serve(
    host: Annotated[str | None, _setting("host")] = None,
    port: Annotated[int | None, _setting("port")] = None,
    workers: Annotated[int | None, _setting("workers")] = None,
    triton_url: Annotated[
        str | None,
        typer.Option(
            help="use a running Triton at host:port instead of starting one (the same as "
            "FTI_TRITON_MODE=external with FTI_TRITON_URL)"
        ),
    ] = None,
    triton_grpc_url: Annotated[str | None, _setting("triton_grpc_url")] = None,
    model: Annotated[str | None, _setting("model_alias", "--model")] = None,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Start the online service (uvicorn) with a managed or external Triton."""
    import uvicorn

    from inference_pipeline.service import create_app

    configure_logging(log_level, _LOG_FORMAT)
    external = {"triton_url": triton_url, "triton_mode": TritonMode.external} if triton_url else {}
    given = {
        "host": host,
        "port": port,
        "workers": workers,
        "model_alias": model,
        "triton_grpc_url": triton_grpc_url,
        "data_root": data_root,
    }
    overrides = {name: value for name, value in given.items() if value is not None} | external
    settings = build_settings(InferenceSettings, SERVE_FLAGS, **given, **external)
    if settings.workers > 1:
        _serve_workers(settings, overrides, log_level.value)
        return
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    )
    try:
        server.run()
    except FTIError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    if not server.started:
        raise typer.Exit(1)


def _serve_workers(
    settings: InferenceSettings, overrides: Mapping[str, object], log_level: str
) -> None:
    """Several uvicorn worker processes on one socket, sharing the external Triton.

    Each worker is a fresh (spawned) process that builds its app with
    :func:`inference_pipeline.service.app.app_from_environment`: the ``FTI_*`` environment plus
    this command line's overrides, which are handed over as arguments, not written into the
    environment. A worker that cannot start (no model, registry down) stops the whole service
    with exit code 1 instead of being restarted in a loop.
    """
    from functools import partial

    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from inference_pipeline.service.app import app_from_environment

    config = uvicorn.Config(
        partial(app_from_environment, overrides),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # The supervisor kills a worker that does not answer its ping within this time; a
        # worker importing MLflow, Polars and tritonclient on a busy host takes longer than
        # uvicorn's default 5 s, and was killed and restarted in the middle of its start-up.
        timeout_worker_healthcheck=60,
        log_config=_worker_logging(log_level),
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        typer.echo("error: a worker could not start the service (see its log above)", err=True)
        raise typer.Exit(1)


def _worker_logging(level: str) -> dict[str, object]:
    """``logging.config.dictConfig`` for every worker (spawned processes start unconfigured)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": _LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "root": {"level": level, "handlers": ["stderr"]},
    }


@app.command("log-writer")
def log_writer(
    drain: Annotated[
        bool,
        typer.Option("--drain", help="commit what the sink holds now (bounded commits), then exit"),
    ] = False,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Write the prediction log's sink (FTI_PREDICTION_LOG_SINK) into the predictions table:
    bounded commits, acknowledged after they land, compaction. Runs until SIGTERM/SIGINT,
    then commits what waits; Prometheus metrics on FTI_PREDICTION_LOG_METRICS_PORT."""
    from inference_pipeline.log_writer import LogWriter
    from inference_pipeline.log_writer_metrics import WriterMetrics
    from inference_pipeline.prediction_sink.configured import open_source
    from shared.feature_store import open_feature_store

    configure_logging(log_level, _LOG_FORMAT)
    settings = build_settings(InferenceSettings, data_root=data_root, allow_unauthenticated=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        store = open_feature_store(settings.store_settings())
        source = open_source(settings)
    except FTIError as exc:
        fail(f"log writer cannot start: {exc}")
    metrics, server = WriterMetrics(source), None
    port = settings.prediction_log_metrics_port
    try:
        if port is not None and not drain:
            try:
                server = metrics.serve(port)
            except OSError as exc:
                fail(
                    f"log writer cannot serve its metrics on port {port} "
                    f"(FTI_PREDICTION_LOG_METRICS_PORT): {exc}"
                )
        # Its own process: garbage collection once per commit (see LogWriter.run).
        writer = LogWriter(store, source, settings, metrics)
        summary = writer.run(stop, drain=drain, collect_per_commit=True)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        source.close()
        store.close()
    typer.echo(json.dumps(summary.as_dict()))
    if summary.error:
        fail(f"prediction log writer: {summary.error}")


@app.command()
def triton(
    address: Annotated[str, typer.Option(help="address Triton listens on")] = "0.0.0.0",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (FTI_TRITON_URL's)")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port")] = 8002,
    exit_timeout_secs: Annotated[
        int, typer.Option(help="seconds to drain in-flight requests on SIGTERM")
    ] = 30,
    data_root: DataRootOption = None,
    log_level: LogLevelOption = LogLevel.info,
) -> None:
    """Run Triton as its own server (the wheel's tritonserver in the foreground, CPU).

    Serves FTI_TRITON_MODEL_REPOSITORY with explicit model control, as the official container
    does in production; online services and batch jobs publish into that repository and load
    their model (FTI_TRITON_MODE=external, FTI_TRITON_URL=<this host>:<http port>).
    """
    from inference_pipeline.triton_standalone import StandaloneOptions, exec_tritonserver

    configure_logging(log_level, _LOG_FORMAT)
    settings = build_settings(InferenceSettings, data_root=data_root, allow_unauthenticated=True)
    try:
        exec_tritonserver(
            settings.model_repository,
            settings.serving_dir / "triton-standalone",
            StandaloneOptions(
                address=address,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                exit_timeout_s=exit_timeout_secs,
            ),
        )
    except (FTIError, OSError) as exc:
        fail(f"cannot start tritonserver: {exc}")


if __name__ == "__main__":
    app()
