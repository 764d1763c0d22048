"""Triton as a server of its own, the way the official container runs it.

In production one Triton serves every online-service worker, every replica and the batch job:
it starts on its own, loads nothing (``--model-control-mode=explicit``), and the services
publish verified versions into the model repository they share with it and ask it to load them.
The GPU deployment runs the official container's ``tritonserver`` with these flags; this module
runs the ``nvidia-pytriton`` wheel's binary with the same flags in the foreground, for the
compose CPU profile and for the production topology on one machine (no container engine).

The process *becomes* ``tritonserver`` (``exec``), so signals from the container runtime or a
supervisor reach the server itself, as they do in the official image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from inference_pipeline.triton_server import (
    TritonDistribution,
    TritonServerError,
    find_tritonserver,
    prepare_backends,
    server_environment,
)


@dataclass(frozen=True)
class StandaloneOptions:
    """Addresses and ports of a Triton that other processes reach (the official defaults)."""

    address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: int = 30
    log_verbose: int = 0


def standalone_command(
    dist: TritonDistribution, model_repository: Path, backends: Path, options: StandaloneOptions
) -> list[str]:
    """The command line: the flags of the deployment manifests, plus where the wheel's backends
    are (the official image has them at its default backend directory)."""
    return [
        str(dist.binary),
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backends}",
        "--disable-auto-complete-config",
        # Server readiness only: models are loaded later by the services, and checked one by one.
        "--strict-readiness=false",
        "--exit-on-error=true",
        f"--exit-timeout-secs={options.exit_timeout_s}",
        f"--http-address={options.address}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.address}",
        f"--grpc-port={options.grpc_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        f"--metrics-address={options.address}",
        f"--metrics-port={options.metrics_port}",
        f"--log-verbose={options.log_verbose}",
    ]


def prepare(
    model_repository: Path, runtime_dir: Path, options: StandaloneOptions
) -> tuple[TritonDistribution, list[str]]:
    """Find the wheel's server, copy its Python backend into ``runtime_dir``, create the model
    repository if it is not there yet; returns the distribution and the command line."""
    dist = find_tritonserver()
    if dist is None:
        raise TritonServerError(
            "tritonserver binary not found: install the 'inference' extra (nvidia-pytriton), "
            "or run the official Triton container instead"
        )
    model_repository.mkdir(parents=True, exist_ok=True)
    runtime_dir.mkdir(parents=True, exist_ok=True)
    backends = prepare_backends(dist, runtime_dir)
    return dist, standalone_command(dist, model_repository.resolve(), backends.resolve(), options)


def exec_tritonserver(
    model_repository: Path, runtime_dir: Path, options: StandaloneOptions
) -> NoReturn:
    """Replace this process with ``tritonserver`` (never returns)."""
    dist, command = prepare(model_repository, runtime_dir, options)
    os.execve(command[0], command, server_environment(dist))
