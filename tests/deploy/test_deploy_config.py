"""Every command, environment variable, port and path the deployment files use is real.

No container engine or cluster runs here, so this is how we know docker-compose.yml, the
Dockerfiles, deploy/k8s/ and the crontabs are right: each is read as data
(:mod:`tests.deploy.deployment`) and checked against the code itself.

- Commands: every ``python -m <pipeline>`` a container, Job or cron line starts is a Typer CLI of
  this project whose sub-command exists, whose ``--help`` renders, and which accepts the exact
  arguments given (options exist, types parse, required options present); shell scripts are run
  with the programs stubbed, so ``$(date ...)`` and variables are expanded as the shell would.
  ``torchrun``, ``mlflow server`` and ``tritonserver`` options are checked against those tools.
- Environment: every variable set anywhere is a field of a settings class of the code (found by
  importing the packages, env prefix ``FTI_``) or a third-party variable allow-listed below;
  an ``FTI_`` variable set on a container must be read by the pipeline that container runs.
- Ports and paths: service ports, health checks and probes agree; URLs name real services on
  real ports; data and model-repository paths are mounted volumes, the same volume for Triton
  and its clients.
- Images: multi-stage, non-root, with a health check (or HEALTHCHECK NONE for jobs).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import pytest
import typer
from typer.testing import CliRunner

from tests.deploy import deployment as d

try:  # Typer vendors its own Click (typer._click); older releases used the click package
    from typer._click import ClickException as TyperClickException
except ImportError:  # pragma: no cover
    from click import ClickException as TyperClickException  # type: ignore[assignment]

pytestmark = pytest.mark.unit

# Third-party variables the deployment files may set, by exact name or by tool.
ALLOWED_EXACT = {
    # postgres image: the database, its owner and password
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    # minio image: root account
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    # boto3 / delta-rs / object_store: object storage credentials and endpoint
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    # NVIDIA container runtime
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    # Python, pip and uv inside the images (runtime behaviour, build tooling)
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "UV_PYTHON_INSTALL_DIR",
    "UV_LINK_MODE",
    "UV_NO_CACHE",
    # cron: the shell that runs the lines
    "SHELL",
    # set by Kubernetes in the pods of an Indexed Job
    "JOB_COMPLETION_INDEX",
    # Dagster: the instance folder (dagster.yaml) of the orchestrator image
    "DAGSTER_HOME",
    # compose interpolation: the host's docker group id, for the orchestrator's socket access
    "DOCKER_GID",
}
ALLOWED_PREFIXES = ("NCCL_",)  # NCCL's own tuning variables (multi-node training)

SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|BACKEND_STORE_URI")
DATE_OPTIONS = {"--date", "--start", "--end"}
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-scripts")


@functools.cache
def _invocations() -> list[d.Invocation]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deploy-scripts-") as scratch:
        return d.all_invocations(Path(scratch))


def _of(program: str) -> list[d.Invocation]:
    return [i for i in _invocations() if i.program == program]


def _id(invocation: d.Invocation) -> str:
    return f"{invocation.where} :: {invocation.target or invocation.program} {invocation.args[:1]}"


@functools.cache
def _settings() -> list[d.SettingsClass]:
    return d.settings_classes()


@functools.cache
def _mlflow_variables() -> frozenset[str]:
    """MLflow's own variables: its environment_variables module and `mlflow server`'s options."""
    import mlflow.environment_variables as variables
    from mlflow.cli import cli

    names = {v.name for v in vars(variables).values() if isinstance(getattr(v, "name", None), str)}
    for param in cli.commands["server"].params:
        if isinstance(getattr(param, "envvar", None), str):
            names.add(param.envvar)
    return frozenset(names)


def _known_to(packages: set[str]) -> set[str]:
    return {name for s in _settings() if s.package in packages | {"shared"} for name in s.env_names}


def _problem_with_name(name: str) -> str | None:
    if name.startswith("FTI_"):
        return None if name in _known_to(set(d.DEPLOYED_PACKAGES)) else "no settings field"
    if name.startswith("MLFLOW_"):
        return None if name in _mlflow_variables() else "not an MLflow variable"
    if name in ALLOWED_EXACT or name.startswith(ALLOWED_PREFIXES):
        return None
    return "neither a setting of the code nor an allow-listed third-party variable"


# -- commands -------------------------------------------------------------------------------


def test_the_deployment_files_start_the_expected_programs() -> None:
    """The parsers below see every workload: a regression here means checks silently ran on
    nothing."""
    targets = {(i.program, i.target, (i.args or [""])[0]) for i in _invocations()}
    for expected in [
        ("python -m", "feature_pipeline", "run"),
        ("python -m", "feature_pipeline", "backfill"),
        ("python -m", "feature_pipeline", "stream"),
        ("python -m", "training_pipeline", "train"),
        ("python -m", "inference_pipeline", "serve"),
        ("python -m", "inference_pipeline", "log-writer"),
        ("python -m", "inference_pipeline", "triton"),
        ("python -m", "inference_pipeline.batch", "--date"),
        ("python -m", "inference_pipeline", "monitor"),
        ("torchrun", None, "--nnodes=2"),
        ("mlflow", None, "server"),
        ("tritonserver", None, "--model-repository=/models"),
        ("dagster", "orchestration", "run"),  # the DAG's daemon
        ("docker compose run", "training", "retrain"),  # the DAG's retraining task
    ]:
        assert expected in targets, f"no deployment file starts {expected}"
    shadow = [i for i in _invocations() if i.args[:2] == ["monitor", "shadow"]]
    assert len({i.where for i in shadow}) >= 4, "the shadow decision: crontabs, CronJob, DAG"


def _typer_app(module: str) -> typer.Typer:
    spec = importlib.util.find_spec(module)
    assert spec is not None
    main = f"{module}.__main__" if spec.submodule_search_locations else module
    app = getattr(importlib.import_module(main), "app", None)
    assert isinstance(app, typer.Typer), f"`python -m {module}` has no Typer app"
    return app


def _resolve(app: typer.Typer, args: list[str]) -> tuple[Any, list[str], list[str]]:
    """The Click command ``args`` select, the sub-command path, and the remaining arguments."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "list_commands") and rest and not rest[0].startswith("-"):
        context = typer.Context(command)
        sub = command.get_command(context, rest[0])
        assert sub is not None, (
            f"no sub-command {rest[0]!r}; it has {command.list_commands(context)}"
        )
        command = sub
        path.append(rest.pop(0))
    return command, path, rest


@pytest.mark.parametrize("invocation", _of("python -m"), ids=_id)
def test_every_pipeline_command_is_a_working_cli_of_the_project(
    invocation: d.Invocation,
) -> None:
    module = invocation.target
    assert module is not None
    where = f"{invocation.where}: python -m {module} {' '.join(invocation.args)}"
    assert module.split(".")[0] in d.PIPELINE_PACKAGES, f"{where}: not a pipeline of ours"
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{where}: module {module} does not exist")
    app = _typer_app(module)
    command, path, rest = _resolve(app, invocation.args)
    helped = CliRunner().invoke(app, [*path, "--help"])
    assert helped.exit_code == 0, f"{where}: --help failed: {helped.output}"
    if "--help" in rest:
        return
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    used = [arg.split("=", 1)[0] for arg in rest if arg.startswith("-")]
    assert not set(used) - known, f"{where}: unknown options {sorted(set(used) - known)}"
    for option, value in itertools.pairwise(rest):
        if option in DATE_OPTIONS:
            assert ISO_DATE.match(value), f"{where}: {option} {value!r} is not YYYY-MM-DD"
    try:
        command.make_context(path[-1] if path else module, list(rest))
    except TyperClickException as exc:
        pytest.fail(f"{where}: the CLI refuses these arguments: {exc.format_message()}")


def test_shell_scripts_run_and_start_a_program(workdir: Path) -> None:
    """Every ``sh -c`` script of our containers and every cron line runs to the end with the
    programs stubbed (no syntax error, no unset variable used as a date) and starts something."""
    for run in d.script_runs(workdir):
        assert run.status == 0, f"{run.where}: exits {run.status}: {run.script}"
        assert run.argvs, f"{run.where}: starts no program: {run.script}"


def test_torchrun_arguments_parse() -> None:
    from torch.distributed.run import get_args_parser

    invocations = _of("torchrun")
    assert invocations
    for invocation in invocations:
        parsed = get_args_parser().parse_args(invocation.args)
        assert parsed.module, f"{invocation.where}: torchrun must start a module (-m)"
        assert parsed.training_script == "training_pipeline", invocation.where
        assert int(parsed.nnodes) >= 2 and parsed.node_rank == 0, invocation.where


def test_mlflow_server_options_exist() -> None:
    from mlflow.cli import cli

    invocations = _of("mlflow")
    assert invocations
    for invocation in invocations:
        assert invocation.args[0] == "server", invocation.where
        server = cli.commands["server"]
        try:
            server.make_context("server", list(invocation.args[1:]))
        except click.ClickException as exc:
            pytest.fail(f"{invocation.where}: mlflow server refuses: {exc.format_message()}")


def _tritonserver_flags() -> set[str]:
    from inference_pipeline.triton_server import find_tritonserver, server_environment

    dist = find_tritonserver()
    if dist is None:
        pytest.skip("the nvidia-pytriton wheel (tritonserver binary) is not installed")
    shown = subprocess.run(
        [str(dist.binary), "--help"],
        env=server_environment(dist),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", shown.stdout + shown.stderr, re.MULTILINE))


def test_tritonserver_flags_exist() -> None:
    """Checked against the wheel's binary (Triton 2.51, the official container's version)."""
    flags = _tritonserver_flags()
    assert "--model-repository" in flags
    invocations = _of("tritonserver")
    assert invocations
    for invocation in invocations:
        used = {a.split("=", 1)[0] for a in invocation.args if a.startswith("--")}
        assert used <= flags, f"{invocation.where}: unknown flags {sorted(used - flags)}"
    from inference_pipeline.triton_server import find_tritonserver
    from inference_pipeline.triton_standalone import StandaloneOptions, standalone_command

    dist = find_tritonserver()
    assert dist is not None
    ours = standalone_command(dist, Path("/models"), Path("/backends"), StandaloneOptions())
    used = {a.split("=", 1)[0] for a in ours[1:]}
    assert used <= flags, f"`inference_pipeline triton`: unknown flags {sorted(used - flags)}"


def test_crontab_schedules_are_five_fields() -> None:
    field = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?))*$")
    for path in d.crontabs():
        _, entries = d.cron_entries(path)
        assert entries, f"{path}: no entries"
        for entry in entries:
            parts = entry.schedule.split()
            assert len(parts) == 5 and all(field.match(p) for p in parts), entry.where


def test_the_dag_orchestrator_loads_the_daily_job_and_its_instance() -> None:
    """The Dagster containers load the code location their workspace names, with the job and
    its schedule; the image puts dagster.yaml where DAGSTER_HOME points and the workspace where
    the containers read it; Dagster itself accepts dagster.yaml."""
    from dagster._core.instance.config import dagster_instance_config

    from orchestration.daily import JOB_NAME
    from orchestration.definitions import build_definitions
    from orchestration.settings import DagSettings

    orchestrators = d.dag_orchestrators()
    assert {c.name for c in orchestrators} == {"dagster-webserver", "dagster-daemon"}
    dockerfile = d.parse_dockerfile(d.DEPLOY / "docker" / "orchestration.Dockerfile")
    copied = {copy[-1]: copy[-2] for copy in dockerfile.final.copies}
    home = dockerfile.final.env["DAGSTER_HOME"]
    assert copied[f"{home}/dagster.yaml"].endswith("/dagster.yaml")
    for container in orchestrators:
        workspace = container.argv[container.argv.index("--workspace") + 1]
        assert copied[workspace].endswith("/workspace.yaml"), container.where
        env = _dotenv(_env_example(container.env_files[0]))
        assert {"POSTGRES_USER", "POSTGRES_PASSWORD"} <= set(env), container.where
    config, _ = dagster_instance_config(str(d.DAGSTER_DIR))
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == "postgres"
    limits = config["run_queue"]["tag_concurrency_limits"]
    assert {"key": "fti/flow", "value": "daily", "limit": 1} in limits
    definitions = build_definitions(DagSettings())
    job = definitions.resolve_job_def(JOB_NAME)
    assert job.tags.get("fti/flow") == "daily"  # the tag the run queue limits to one at a time
    assert definitions.resolve_schedule_def(f"{JOB_NAME}_schedule").cron_schedule == "30 2 * * *"


def test_the_dag_starts_its_tasks_through_the_compose_stack() -> None:
    """The daemon runs `docker compose run` on the stack's own file, mounted from the checkout,
    through the host's Docker socket; each task's service runs its pipeline's CLI (the
    arguments themselves are checked with every other command above)."""
    from orchestration.commands import BATCH, FEATURES, MONITOR, TRAINING
    from orchestration.daily import TASKS

    daemon = next(c for c in d.dag_orchestrators() if c.name == "dagster-daemon")
    compose_file = daemon.env["FTI_DAG_COMPOSE_FILE"]
    assert daemon.env["FTI_DAG_LAUNCH"] == "compose"
    assert _mount_for(daemon, compose_file) == "bind:./", daemon.where
    assert Path(compose_file).name == d.COMPOSE_FILE.name
    assert daemon.mounts.get("/var/run/docker.sock") == "bind:/var/run/docker.sock"
    services = {c.name: c for c in d.compose_containers()}
    commands = d.dag_task_commands()
    assert len(commands) == 2 * len(TASKS)  # two orchestrator containers, each task
    for cli in (FEATURES, BATCH, MONITOR, TRAINING):
        service = services[cli.service]
        entrypoint = _as_entrypoint(service)
        expected = ["python", "-m", cli.module, *cli.command]
        assert entrypoint == expected, f"{service.where}: {entrypoint}"


def _as_entrypoint(container: d.Container) -> list[str] | None:
    spec = container.spec.get("entrypoint")
    if spec is not None:
        return [str(w) for w in spec]
    return container.dockerfile.final.entrypoint if container.dockerfile else None


def test_compose_cron_jobs_name_compose_services() -> None:
    services = set(d.load_compose()["services"])
    for invocation in _of("docker compose run"):
        assert invocation.target in services, f"{invocation.where}: no service {invocation.target}"


# -- environment ----------------------------------------------------------------------------


def test_settings_are_discovered_from_the_code() -> None:
    names = {s.qualname.rsplit(".", 1)[-1] for s in _settings()}
    assert {"FeatureStoreSettings", "RegistrySettings", "InferenceSettings"} <= names
    assert {"FeaturePipelineSettings", "TrainingSettings"} <= names
    assert "FTI_WORKERS" in _known_to({"inference_pipeline"})
    assert "FTI_WORKERS" not in _known_to({"feature_pipeline"})


def _env_example(path: Path) -> Path:
    example = path.with_name(path.name + ".example")
    return path if path.exists() else example


def _dotenv(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def _inline_assignments(script: str) -> set[str]:
    return set(re.findall(r"(?:^|[\s;&|(])([A-Z][A-Z0-9_]*)=", script))


def _all_variables() -> Iterator[tuple[str, str]]:
    """(where, name) of every variable any deployment file sets or interpolates."""
    for container in d.compose_containers():
        for name in container.env:
            yield container.where, name
        for path in container.env_files:
            for name in _dotenv(_env_example(path)):
                yield str(path.relative_to(d.ROOT)), name
    for value in d.compose_raw_strings():
        for name in d.interpolated_names(value):
            yield "docker-compose.yml (interpolation)", name
    for path, dockerfile in d.dockerfiles().items():
        for name in dockerfile.all_env():
            yield str(path.relative_to(d.ROOT)), name
    for container in d.k8s_containers():
        for name in container.env:
            yield container.where, name
        script = d.shell_script(container.argv)
        for name in _inline_assignments(script or ""):
            yield container.where, name
    for config_map, data in d.config_maps().items():
        for name in data:
            yield f"ConfigMap {config_map}", name
    for secret, data in d.secrets().items():
        for name in data:
            yield f"Secret {secret}", name
    for path in d.crontabs():
        env, entries = d.cron_entries(path)
        for name in env:
            yield str(path.relative_to(d.ROOT)), name
        for entry in entries:
            for name in _inline_assignments(entry.command):
                yield entry.where, name


def test_every_environment_variable_is_a_known_setting() -> None:
    seen = list(_all_variables())
    assert len(seen) > 40  # the walk reached compose, Dockerfiles, k8s and crontabs
    problems = [
        f"{where}: {name}: {why}" for where, name in seen if (why := _problem_with_name(name))
    ]
    assert not problems, "\n".join(problems)


def _packages_run_by(container: d.Container) -> set[str]:
    found = d.invocations_in(container.argv, container.where)
    script = d.shell_script(container.argv)
    if script is not None:
        for command in d.simple_commands(script):
            found += d.invocations_in(command, container.where)
    return {
        i.target.split(".")[0] for i in found if i.program in {"python -m", "dagster"} and i.target
    }


def test_fti_variables_on_a_container_are_read_by_what_it_runs() -> None:
    """An ``FTI_`` variable set on a container that runs, say, the feature pipeline must be a
    setting of the feature pipeline (or of ``shared``), not of another pipeline."""
    problems = []
    for container in [*d.compose_containers(), *d.k8s_containers()]:
        fti = {n for n in container.env if n.startswith("FTI_")}
        env_files = [_dotenv(_env_example(p)) for p in container.env_files]
        fti |= {n for pairs in env_files for n in pairs if n.startswith("FTI_")}
        if not fti:
            continue
        packages = _packages_run_by(container)
        known = _known_to(packages) if packages else set()
        for name in sorted(fti - known):
            problems.append(f"{container.where}: {name} is not read by {sorted(packages) or 'it'}")
    assert not problems, "\n".join(problems)


def test_env_from_references_exist() -> None:
    config_maps, secrets = d.config_maps(), d.secrets()
    for container in d.k8s_containers():
        for kind, name, optional in container.config_refs:
            known = config_maps if kind == "configMapRef" else secrets
            assert name in known or optional, f"{container.where}: {kind} {name} is not defined"
            if kind == "secretRef":
                assert name in secrets, f"{container.where}: Secret {name} undocumented"


def test_no_secret_values_are_committed() -> None:
    for path in sorted((d.DEPLOY / "compose").glob("*.env.example")):
        for name, value in _dotenv(path).items():
            if SECRET_NAME.search(name):
                assert value == "" or "<" in value, f"{path}: {name} has a value"
    assert not [p for p in (d.DEPLOY / "compose").glob("*.env") if _tracked(p)]
    for container in d.compose_containers():
        for name, value in container.env.items():
            assert not (SECRET_NAME.search(name) and value), f"{container.where}: {name} inline"
    for secret, data in d.secrets().items():
        for name, value in data.items():
            assert value.startswith("<") or "<" in value, f"Secret {secret}: {name} has a value"
    for config_map, data in d.config_maps().items():
        assert not [n for n in data if SECRET_NAME.search(n)], f"ConfigMap {config_map}"


def _tracked(path: Path) -> bool:
    listed = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(path)],
        cwd=d.ROOT,
        capture_output=True,
        check=False,
    )
    return listed.returncode == 0


def test_compose_env_files_exist_as_examples() -> None:
    for container in d.compose_containers():
        for path in container.env_files:
            assert _env_example(path).is_file(), f"{container.where}: no {path} or .example"


# -- ports ------------------------------------------------------------------------------------


def _port(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    assert parsed.hostname and parsed.port, url
    return parsed.hostname, parsed.port


def _service_port(container: d.Container) -> int:
    env = container.effective_env
    assert "FTI_PORT" in env, f"{container.where}: FTI_PORT not set"
    return int(env["FTI_PORT"])


def _serving(containers: list[d.Container]) -> list[d.Container]:
    return [c for c in containers if c.argv[-1:] == ["serve"] or "serve" in c.argv]


def test_online_service_port_health_check_and_probes_agree() -> None:
    compose = _serving(d.compose_containers())
    k8s = _serving(d.k8s_containers())
    assert compose and k8s
    for container in compose:
        port = _service_port(container)
        assert port in container.ports, f"{container.where}: port {port} not published"
        assert container.health_url_ports == [port], f"{container.where}: health check port"
        assert container.effective_env.get("FTI_HOST") == "0.0.0.0", container.where
    for container in k8s:
        port = _service_port(container)
        assert container.ports == [port], container.where
        probes = {kind: (path, p) for kind, path, p in container.probes}
        assert probes["readinessProbe"] == ("/readyz", port), container.where
        assert probes["livenessProbe"] == ("/healthz", port), container.where
    for dockerfile in d.dockerfiles().values():
        stage = dockerfile.final
        if stage.cmd == ["serve"]:
            port = int(stage.env["FTI_PORT"])
            assert stage.expose == [port]
            assert d._url_ports([stage.healthcheck or ""]) == [port]


def _triton_http_port(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg.startswith("--http-port"):
            return int(arg.split("=", 1)[1] if "=" in arg else argv[i + 1])
    raise AssertionError(f"no --http-port in {argv}")


def _triton_servers(containers: list[d.Container]) -> list[d.Container]:
    return [c for c in containers if "tritonserver" in c.argv or "triton" in c.argv[3:4]]


def test_triton_clients_reach_triton_on_its_http_port() -> None:
    compose = d.compose_containers()
    servers = {c.name: c for c in _triton_servers(compose)}
    assert set(servers) == {"triton-gpu", "triton-cpu"}
    names = {
        alias: c
        for c in servers.values()
        for alias in [c.name, *c.spec["networks"]["default"]["aliases"]]
    }
    clients = [c for c in compose if "FTI_TRITON_URL" in c.env]
    assert {c.name for c in clients} == {"online", "batch-scoring"}
    for client in clients:
        host, port = _port(client.env["FTI_TRITON_URL"])
        assert host in names, f"{client.where}: no Triton named {host}"
        for server in servers.values():
            assert _triton_http_port(server.argv) == port, f"{server.where} vs {client.where}"
            assert server.health_url_ports in ([port], []), server.where
    k8s_servers = _triton_servers(d.k8s_containers())
    assert len(k8s_servers) == 1
    server = k8s_servers[0]
    port = _triton_http_port(server.argv)
    assert {p for _, _, p in server.probes} == {port}
    host, client_port = _port(d.config_maps()["fti-triton-client"]["FTI_TRITON_URL"])
    assert (host, client_port) in _k8s_service_endpoints(port_of=server)


def _k8s_service_endpoints(port_of: d.Container) -> set[tuple[str, int]]:
    """(Service name, Service port) pairs that reach ``port_of``'s container ports."""
    out = set()
    for _, doc in d.k8s_documents():
        if doc.get("kind") != "Service":
            continue
        for port in doc["spec"].get("ports", []):
            if int(port.get("targetPort", port["port"])) in port_of.ports:
                selector = doc["spec"].get("selector", {})
                if _selects(selector, port_of):
                    out.add((doc["metadata"]["name"], int(port["port"])))
    return out


def _selects(selector: dict[str, str], container: d.Container) -> bool:
    for _, doc in d.k8s_documents():
        spec = d.pod_spec(doc)
        if spec is None or not any(
            c is not None and c["name"] == container.name for c in spec["containers"]
        ):
            continue
        template = doc["spec"].get("template") or doc["spec"]["jobTemplate"]["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        if selector.items() <= labels.items():
            return True
    return False


def test_registry_and_online_store_urls_name_real_services() -> None:
    compose = d.compose_containers()
    services = {c.name: c for c in compose}
    for container in compose:
        env = container.env
        if "FTI_MLFLOW_TRACKING_URI" in env:
            host, port = _port(env["FTI_MLFLOW_TRACKING_URI"])
            mlflow = services[host]
            assert f"--port={port}" in mlflow.argv, f"{container.where}: MLflow port {port}"
            assert any(host in a for a in mlflow.argv if a.startswith("--allowed-hosts")), (
                f"mlflow must accept the Host header {host}:{port} its clients send"
            )
        if "FTI_REDIS_URL" in env:
            host, port = _port(env["FTI_REDIS_URL"])
            assert host in services and port == 6379, container.where
    registry = d.config_maps()["fti-registry"]["FTI_MLFLOW_TRACKING_URI"]
    host, port = _port(registry)
    mlflow = next(c for c in d.k8s_containers() if c.name == "mlflow")
    assert (host, port) in _k8s_service_endpoints(port_of=mlflow)
    assert f"--port={port}" in mlflow.argv
    assert {p for _, _, p in mlflow.probes} == {port}


def _env_with_config_maps(container: d.Container) -> dict[str, str]:
    maps = d.config_maps() if container.kind == "k8s" else {}
    env: dict[str, str] = {}
    for kind, name, _ in container.config_refs:
        if kind == "configMapRef":
            env |= maps.get(name, {})
    return env | container.effective_env


def _runs(container: d.Container, command: str, package: str = "inference_pipeline") -> bool:
    return package in container.argv and command in container.argv


@pytest.mark.parametrize("platform", ["compose", "k8s"])
def test_the_prediction_log_writer_reads_what_the_services_append(platform: str) -> None:
    """One writer per platform, on the same sink as every service container: the same stream
    on the same Redis, or (the spool) the same volume at the spool folder."""
    from inference_pipeline.settings import InferenceSettings, PredictionLogSink

    containers = d.compose_containers() if platform == "compose" else d.k8s_containers()
    services = [c for c in containers if _runs(c, "serve")]
    writers = [c for c in containers if _runs(c, "log-writer")]
    assert services and len(writers) == 1, [c.where for c in writers]
    (writer,) = writers
    defaults = InferenceSettings.model_fields

    def sink(container: d.Container) -> tuple[str, ...]:
        env = _env_with_config_maps(container)
        kind = env.get("FTI_PREDICTION_LOG_SINK", defaults["prediction_log_sink"].default)
        if kind == PredictionLogSink.redis:
            stream = env.get("FTI_PREDICTION_LOG_STREAM", defaults["prediction_log_stream"].default)
            return (kind, env["FTI_REDIS_URL"], stream)
        root = env.get("FTI_DATA_ROOT", "")
        folder = env.get("FTI_PREDICTION_LOG_SPOOL_DIR", f"{root}/prediction_spool")
        volume = [v for path, v in container.mounts.items() if folder.startswith(path)]
        return (str(kind), folder, *volume)

    for service in services:
        assert sink(service) == sink(writer), f"{service.where} and {writer.where}"
    if platform == "k8s":
        deployment = next(
            doc
            for _, doc in d.k8s_documents()
            if doc.get("kind") == "Deployment" and _name_of(doc) == "prediction-log-writer"
        )
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two at once


# The long-running workers that serve Prometheus metrics: command -> (its package, its
# Kubernetes Deployment, the settings class and field of its port).
METRICS_SERVERS = {
    "log-writer": (
        "inference_pipeline",
        "prediction-log-writer",
        "inference_pipeline.settings:InferenceSettings",
        "prediction_log_metrics_port",
    ),
    "stream": (
        "feature_pipeline",
        "feature-stream",
        "feature_pipeline.stream.settings:StreamSettings",
        "stream_metrics_port",
    ),
}


@pytest.mark.parametrize("platform", ["compose", "k8s"])
@pytest.mark.parametrize("command", sorted(METRICS_SERVERS))
def test_workers_serve_metrics_where_they_are_scraped(platform: str, command: str) -> None:
    """A worker's metrics port (FTI_PREDICTION_LOG_METRICS_PORT, FTI_STREAM_METRICS_PORT: a
    valid setting) is a port its container declares, and in Kubernetes the one its pod's
    scrape annotation names."""
    package, name, settings_class, field = METRICS_SERVERS[command]
    module, _, class_name = settings_class.partition(":")
    settings = getattr(importlib.import_module(module), class_name)
    variable = f"FTI_{field.upper()}"
    containers = d.compose_containers() if platform == "compose" else d.k8s_containers()
    (worker,) = [c for c in containers if _runs(c, command, package)]
    port = _env_with_config_maps(worker).get(variable)
    assert port is not None, f"{worker.where}: no {variable}"
    settings.model_validate({field: port})
    assert int(port) in worker.ports, f"{worker.where}: port {port} not declared"
    if platform == "k8s":
        deployment = next(
            doc
            for _, doc in d.k8s_documents()
            if doc.get("kind") == "Deployment" and _name_of(doc) == name
        )
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        assert annotations["prometheus.io/path"] == "/metrics"


def _name_of(doc: dict[str, Any]) -> str:
    return str(doc.get("metadata", {}).get("name", ""))


def test_every_k8s_service_targets_a_declared_container_port() -> None:
    containers = d.k8s_containers()
    for path, doc in d.k8s_documents():
        if doc.get("kind") != "Service":
            continue
        targets = [c for c in containers if _selects(doc["spec"]["selector"], c)]
        assert targets, f"{path}: Service {doc['metadata']['name']} selects no pod"
        for port in doc["spec"]["ports"]:
            target = int(port.get("targetPort", port["port"]))
            assert any(target in c.ports for c in targets), f"{path}: {port}"


# -- paths and volumes ------------------------------------------------------------------------

PATH_SETTINGS = ("FTI_DATA_ROOT", "FTI_TRITON_MODEL_REPOSITORY", "FTI_CHECKPOINT_DIR")
# Host paths a compose service may mount: the Docker socket, for the DAG's `docker compose run`.
HOST_MOUNTS = {"/var/run/docker.sock"}


def _mount_for(container: d.Container, path: str) -> str | None:
    for mount, volume in container.mounts.items():
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return volume
    return None


def _resolved_env(container: d.Container) -> dict[str, str]:
    env = dict(container.effective_env)
    if container.kind == "k8s":
        maps = d.config_maps()
        for kind, name, _ in container.config_refs:
            if kind == "configMapRef":
                env = {**maps.get(name, {}), **env}
    return env


def test_data_paths_are_mounted_volumes() -> None:
    """A path setting that is not a volume would keep the store or the model repository in the
    container's throw-away file system."""
    checked = 0
    for container in [*d.compose_containers(), *d.k8s_containers()]:
        if not _packages_run_by(container):
            continue
        env = _resolved_env(container)
        for name in PATH_SETTINGS:
            if name in env:
                checked += 1
                assert _mount_for(container, env[name]), f"{container.where}: {name} not mounted"
    assert checked >= 10


def test_triton_serves_the_volume_its_clients_publish_into() -> None:
    for containers in (d.compose_containers(), d.k8s_containers()):
        servers = _triton_servers(containers)
        clients = [c for c in containers if "FTI_TRITON_MODEL_REPOSITORY" in _resolved_env(c)]
        clients = [c for c in clients if c not in servers]
        assert servers and clients
        for server in servers:
            repository = next(
                (a.split("=", 1)[1] for a in server.argv if a.startswith("--model-repository")),
                _resolved_env(server).get("FTI_TRITON_MODEL_REPOSITORY"),
            )
            assert repository is not None, server.where
            served = _mount_for(server, repository)
            assert served, f"{server.where}: {repository} is not a volume"
            for client in clients:
                path = _resolved_env(client)["FTI_TRITON_MODEL_REPOSITORY"]
                assert _mount_for(client, path) == served, f"{client.where} vs {server.where}"


def test_compose_volumes_services_and_files_exist() -> None:
    compose = d.load_compose()
    declared = set(compose.get("volumes", {}))
    services = set(compose["services"])
    for container in d.compose_containers():
        for volume in container.mounts.values():
            kind, name = volume.split(":", 1)
            if kind == "volume":
                assert name in declared, f"{container.where}: volume {name} not declared"
            elif name.startswith("/"):  # a host resource, not a file of the checkout
                assert name in HOST_MOUNTS, f"{container.where}: host path {name} mounted"
            else:
                assert (d.ROOT / name).exists(), f"{container.where}: {name} missing"
        for dependency in container.spec.get("depends_on", {}):
            assert dependency in services, f"{container.where}: depends on {dependency}"
        build = container.spec.get("build")
        if build:
            assert (d.ROOT / build["dockerfile"]).is_file(), container.where


def test_k8s_claims_exist() -> None:
    claims = {
        doc["metadata"]["name"]
        for _, doc in d.k8s_documents()
        if doc["kind"] == "PersistentVolumeClaim"
    }
    for container in d.k8s_containers():
        for volume in container.mounts.values():
            if volume.startswith("pvc:"):
                assert volume[4:] in claims, f"{container.where}: no PVC {volume[4:]}"


# -- images and workloads ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(d.dockerfiles()), ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_with_a_health_check(path: Path) -> None:
    dockerfile = d.parse_dockerfile(path)
    assert len(dockerfile.stages) >= 2, f"{path.name}: build tools would ship in the image"
    final = dockerfile.final
    assert final.user not in (None, "root", "0"), f"{path.name}: runs as root"
    assert final.healthcheck, f"{path.name}: no HEALTHCHECK (NONE for a job, with why)"
    for copy in final.copies:
        assert any(a.startswith("--from=") for a in copy), f"{path.name}: {copy} in final stage"
    for stage in dockerfile.stages:
        for copy in stage.copies:
            if any(a.startswith("--from=") for a in copy):
                continue
            for source in copy[:-1]:
                assert (d.ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
    secrets = [n for n in dockerfile.all_env() if SECRET_NAME.search(n)]
    assert not secrets, f"{path.name}: secrets baked in: {secrets}"


def test_compose_images_map_to_their_dockerfiles_and_k8s_uses_them() -> None:
    by_image = d.image_dockerfiles()
    for container in d.k8s_containers():
        if container.image and container.image.startswith("ghcr.io/fti-flights/"):
            assert container.dockerfile is not None, f"{container.where}: {container.image}"
    assert set(by_image) >= {"feature-pipeline", "training", "online-service", "inference"}


def test_k8s_workloads_set_requests_limits_and_probes() -> None:
    for container in d.k8s_containers():
        resources = container.spec.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(part, {})), (
                f"{container.where}: resources.{part}"
            )
    for path, doc in d.k8s_documents():
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, path


def test_gpu_workloads_request_gpus() -> None:
    compose = d.load_compose()["services"]
    for name in ("training", "triton-gpu"):
        devices = compose[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in device["capabilities"] for device in devices), name
    gpu = [c for c in d.k8s_containers() if "nvidia.com/gpu" in c.spec["resources"]["limits"]]
    names = {c.where.split(": ", 1)[1] for c in gpu}
    assert any("Deployment/triton" in n for n in names)
    assert any(n.startswith("Job/training-/") for n in names)
    assert any(n.startswith("Job/training-ddp/") for n in names)


def test_stream_replicas_are_consumer_group_members_that_stop_gracefully() -> None:
    """Each replica of the stream is a member of one group, named after its pod (so a restarted
    pod's name is new and its old entries are claimed), with time to commit on SIGTERM, and a
    claim delay longer than its commit interval (the settings refuse anything else)."""
    from feature_pipeline.stream.settings import StreamSettings

    [deployment] = [
        doc
        for _, doc in d.k8s_documents()
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "feature-stream"
    ]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["stream"] and deployment["spec"]["replicas"] >= 2
    env = {e["name"]: e for e in container["env"]}
    assert env["FTI_STREAM_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["terminationGracePeriodSeconds"] >= 30
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    settings = StreamSettings(**{k.removeprefix("FTI_").lower(): v for k, v in values.items()})
    assert settings.stream_claim_idle_s > settings.stream_commit_interval_s
    assert str(settings.stream_alive_file) in str(container["livenessProbe"])
    stream = d.load_compose()["services"]["stream"]
    assert stream["command"] == ["stream"] and stream["deploy"]["replicas"] >= 2
    assert stream["environment"]["FTI_STREAM_ALIVE_FILE"] in str(stream["healthcheck"]["test"])
    assert "stop_grace_period" in stream


def test_online_service_autoscales_and_uses_an_external_triton() -> None:
    hpas = [doc for _, doc in d.k8s_documents() if doc["kind"] == "HorizontalPodAutoscaler"]
    deployments = {
        doc["metadata"]["name"] for _, doc in d.k8s_documents() if doc["kind"] == "Deployment"
    }
    assert hpas
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2
    for container in _serving([*d.compose_containers(), *d.k8s_containers()]):
        env = _resolved_env(container)
        assert env.get("FTI_TRITON_MODE") == "external", container.where
        if int(env.get("FTI_WORKERS", "1")) > 1 or container.kind == "compose":
            assert (
                container.spec.get("deploy", {}).get("replicas", 1) >= 2 or container.kind == "k8s"
            )


def test_workers_setting_refuses_a_managed_triton() -> None:
    from inference_pipeline.settings import InferenceSettings, TritonMode
    from shared.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="FTI_WORKERS=2 needs one Triton shared"):
        InferenceSettings(workers=2)
    settings = InferenceSettings(
        workers=2, triton_mode=TritonMode.external, triton_url="triton:8000"
    )
    assert settings.workers == 2


def test_serve_refuses_several_workers_with_a_managed_triton() -> None:
    from inference_pipeline.__main__ import app

    result = CliRunner().invoke(
        app, ["serve", "--workers", "2"], env={"FTI_TRITON_MODE": "managed", "FTI_WORKERS": "1"}
    )
    assert result.exit_code == 2
    assert "FTI_WORKERS=2 needs one Triton shared by all workers" in result.output


# -- exit codes in automation -------------------------------------------------------------------

# Per job, the exit codes that are fine; every other code needs a person (docs/operations.md,
# "Exit codes in automation"). 3 is "partial" for the feature pipeline (rows quarantined: the
# bundled year exits 3 on its one real bad weather row) but "drift detected" for monitoring.
# The shadow decision exits 0 whatever it decided (promoted, kept, keep shadowing).
FINE_EXIT_CODES = {"feature": {0, 3}, "batch": {0}, "monitor": {0}, "shadow": {0}}
JOBS = {  # what a scheduled command runs -> its job
    "feature": re.compile(r"feature[-_]pipeline"),
    "batch": re.compile(r"inference_pipeline\.batch|batch-scoring"),
    "monitor": re.compile(r"(inference_pipeline[. ]monitor|\bmonitoring) run\b"),
    "shadow": re.compile(r"(inference_pipeline[. ]monitor|\bmonitoring) shadow\b"),
}


def _job(command: str) -> str:
    found = [job for job, pattern in JOBS.items() if pattern.search(command)]
    assert len(found) == 1, f"a scheduled job of unknown kind: {command}"
    return found[0]


def test_cron_lines_alert_exactly_on_the_codes_that_need_a_person(workdir: Path) -> None:
    """Each cron line runs its job through deploy/fti-cron: a fine code prints nothing (cron
    mails nothing) and exits 0; any other prints one line naming the exit and is passed on."""
    lines = 0
    for path in d.crontabs():
        env, entries = d.cron_entries(path)
        for entry in entries:
            assert "deploy/fti-cron " in entry.command, f"{entry.where}: not run through fti-cron"
            job, command = _job(entry.command), d.cron_command(entry, workdir)
            for code in (0, 1, 2, 3):
                run = d.run_stubbed(command, env, workdir, stub_exit=code)
                assert run.argvs, f"{entry.where}: started nothing"
                if code in FINE_EXIT_CODES[job]:
                    assert (run.status, run.stderr) == (0, ""), f"{entry.where}: exit {code}"
                else:
                    alert = run.stderr.strip().splitlines()
                    assert run.status == code, f"{entry.where}: exit {code} became {run.status}"
                    assert len(alert) == 1 and f"exit {code} (" in alert[0], (entry.where, alert)
            lines += 1
    assert lines == 8  # four jobs in each of the two crontabs


def _job_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, doc in d.k8s_documents():
        if doc.get("kind") == "CronJob":
            yield f"{path.name}", doc["spec"]["jobTemplate"]["spec"]
        elif doc.get("kind") == "Job":
            yield f"{path.name}", doc["spec"]


def test_kubernetes_feature_jobs_complete_on_partial_and_never_retry_bad_usage(
    workdir: Path,
) -> None:
    """A feature pod that exits 3 (partial) completes (not failed, not retried); 1 fails it and
    the Job retries; 2 (bad command line or setting) fails the Job at once."""
    checked = 0
    for where, job in _job_specs():
        pod = job["template"]["spec"]
        for container in pod["containers"]:
            script = d.shell_script([*container.get("command", []), *container.get("args", [])])
            if script is None or "feature_pipeline" not in script:
                continue
            env = {"JOB_COMPLETION_INDEX": "0"}
            for code, status in {0: 0, 3: 0, 1: 1, 2: 2}.items():
                run = d.run_stubbed(script, env, workdir, stub_exit=code)
                assert run.status == status, (
                    f"{where}: the job exiting {code} ends the pod {run.status}"
                )
            assert pod["restartPolicy"] == "Never", where  # a podFailurePolicy needs it
            rules = job.get("podFailurePolicy", {}).get("rules", [])
            fail_now = {
                code
                for rule in rules
                if rule["action"] == "FailJob"
                and rule["onExitCodes"].get("containerName") == container["name"]
                and rule["onExitCodes"]["operator"] == "In"
                for code in rule["onExitCodes"]["values"]
            }
            assert fail_now == {2}, f"{where}: exit 2 must fail the Job without retries"
            assert job["backoffLimit"] >= 1, f"{where}: a failure (1) should be retried"
            checked += 1
    assert checked == 2  # the daily CronJob and the backfill Job


def test_fti_cron_refuses_a_bad_invocation(workdir: Path) -> None:
    run = d.run_stubbed("deploy/fti-cron only-a-log", {}, workdir)
    assert run.status == 2 and "usage: fti-cron" in run.stderr
