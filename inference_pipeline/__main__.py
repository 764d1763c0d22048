"""``python -m inference_pipeline``: the online service (``serve``), the batch job (``batch``) and
a standalone Triton (``triton``).

Settings come from the environment (``FTI_*``, see :mod:`inference_pipeline.settings`) and these
flags; they are built here, once.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from inference_pipeline import batch as batch_job
from inference_pipeline.settings import InferenceSettings, TritonMode
from shared.errors import FTIError
from shared.setting_errors import invalid_settings_line

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
app.command("batch")(batch_job.batch)
# The settings `serve`'s options set (named in error lines).
SERVE_FLAGS = {
    "host": "--host",
    "port": "--port",
    "workers": "--workers",
    "model_alias": "--model",
    "triton_url": "--triton-url",
    "triton_grpc_url": "--triton-grpc-url",
}


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (FTI_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (FTI_PORT)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="worker processes (FTI_WORKERS); > 1 needs an external Triton"),
    ] = None,
    triton_url: Annotated[
        str | None, typer.Option(help="use a running Triton (host:port) instead of starting one")
    ] = None,
    triton_grpc_url: Annotated[
        str | None,
        typer.Option(help="that Triton's gRPC address (host:port): inference over gRPC"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="registry alias or version to serve")] = None,
    log_level: Annotated[str, typer.Option(help="Python log level")] = "INFO",
) -> None:
    """Start the online service (uvicorn) with a managed or external Triton."""
    import uvicorn

    from inference_pipeline.service import create_app

    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT)
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if workers is not None:
        overrides["workers"] = workers
    if model is not None:
        overrides["model_alias"] = model
    if triton_url is not None:
        overrides |= {"triton_url": triton_url, "triton_mode": TritonMode.external}
    if triton_grpc_url is not None:
        overrides["triton_grpc_url"] = triton_grpc_url
    try:
        settings = InferenceSettings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"error: {invalid_settings_line(exc, flags=SERVE_FLAGS)}", err=True)
        raise typer.Exit(2) from None
    except FTIError as exc:
        typer.echo(f"error: invalid settings: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from None
    if settings.workers > 1:
        _serve_workers(settings, overrides, log_level.upper())
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
        typer.echo(f"error: {type(exc).__name__}: {_one_line(exc)}", err=True)
        raise typer.Exit(1) from None
    if not server.started:
        raise typer.Exit(1)


def _serve_workers(
    settings: InferenceSettings, overrides: dict[str, object], log_level: str
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


@app.command()
def triton(
    address: Annotated[str, typer.Option(help="address Triton listens on")] = "0.0.0.0",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port (FTI_TRITON_URL's)")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port")] = 8002,
    exit_timeout_secs: Annotated[
        int, typer.Option(help="seconds to drain in-flight requests on SIGTERM")
    ] = 30,
) -> None:
    """Run Triton as its own server (the wheel's tritonserver in the foreground, CPU).

    Serves FTI_TRITON_MODEL_REPOSITORY with explicit model control, as the official container
    does in production; online services and batch jobs publish into that repository and load
    their model (FTI_TRITON_MODE=external, FTI_TRITON_URL=<this host>:<http port>).
    """
    from inference_pipeline.triton_standalone import StandaloneOptions, exec_tritonserver

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    try:
        settings = InferenceSettings(allow_unauthenticated=True)
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"error: {invalid_settings_line(exc)}", err=True)
        raise typer.Exit(2) from None
    except FTIError as exc:
        typer.echo(f"error: invalid settings: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from None
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
        typer.echo(f"error: cannot start tritonserver: {_one_line(exc)}", err=True)
        raise typer.Exit(1) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    app()
