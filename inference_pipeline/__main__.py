"""``python -m inference_pipeline``: the online service (``serve``) and the batch job (``batch``).

Settings come from the environment (``FTI_*``, see :mod:`inference_pipeline.settings`) and these
flags; they are built here, once.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from pydantic import ValidationError

from inference_pipeline import batch as batch_job
from inference_pipeline.settings import InferenceSettings, TritonMode
from shared.errors import FTIError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
app.command("batch")(batch_job.batch)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (FTI_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (FTI_PORT)")] = None,
    triton_url: Annotated[
        str | None, typer.Option(help="use a running Triton (host:port) instead of starting one")
    ] = None,
    model: Annotated[str | None, typer.Option(help="registry alias or version to serve")] = None,
    log_level: Annotated[str, typer.Option(help="Python log level")] = "INFO",
) -> None:
    """Start the online service (uvicorn) with a managed or external Triton."""
    import uvicorn

    from inference_pipeline.service import create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if model is not None:
        overrides["model_alias"] = model
    if triton_url is not None:
        overrides |= {"triton_url": triton_url, "triton_mode": TritonMode.external}
    try:
        settings = InferenceSettings(**overrides)  # type: ignore[arg-type]
    except (FTIError, ValidationError) as exc:
        typer.echo(f"error: invalid settings: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from None
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


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


if __name__ == "__main__":
    app()
