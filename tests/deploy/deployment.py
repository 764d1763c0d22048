"""The deployment files read as data: which containers run what command, with which environment,
volumes, ports and probes, wherever they are declared (docker-compose.yml, the Dockerfiles,
deploy/k8s/*.yaml, the crontabs).

Nothing here decides what is right; the tests do. Parsing is deliberately small: exec-form
commands, ``sh -c`` scripts split into simple commands, Dockerfile instructions, crontab lines,
and compose's ``${VAR:-default}`` interpolation.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PIPELINE_PACKAGES = ("feature_pipeline", "training_pipeline", "inference_pipeline")
# What containers run: the pipelines, and the daily DAG's Dagster code location.
DEPLOYED_PACKAGES = (*PIPELINE_PACKAGES, "orchestration")
PROJECT_PACKAGES = ("shared", *DEPLOYED_PACKAGES)
DAGSTER_DIR = DEPLOY / "dagster"  # dagster.yaml + workspace.yaml, copied into the image

# -- settings the code reads ----------------------------------------------------------------


@dataclass(frozen=True)
class SettingsClass:
    package: str  # top-level package that defines it
    qualname: str
    env_names: frozenset[str]


def settings_classes() -> list[SettingsClass]:
    """Every pydantic-settings class defined in the project, found by importing its modules."""
    found: dict[str, SettingsClass] = {}
    for package_name in PROJECT_PACKAGES:
        package = importlib.import_module(package_name)
        modules = [package_name] + [
            info.name
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}.")
            if not info.name.endswith("__main__")
        ]
        for module_name in modules:
            module = importlib.import_module(module_name)
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseSettings)
                    and value.__module__ == module_name
                ):
                    qualname = f"{module_name}.{value.__qualname__}"
                    found[qualname] = SettingsClass(package_name, qualname, env_names(value))
    return sorted(found.values(), key=lambda s: s.qualname)


def env_names(cls: type[BaseSettings]) -> frozenset[str]:
    """Environment variable names of a settings class: prefix + field name (or its alias)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else None
        names.add((alias or f"{prefix}{name}").upper())
    return frozenset(names)


# -- Dockerfiles ----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: str | None = None  # the instruction's text after HEALTHCHECK
    expose: list[int] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)  # COPY arguments


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]
    text: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all_env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for stage in self.stages:
            merged |= stage.env
        return merged


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            yield keyword.upper(), rest.strip()


def _exec_form(rest: str) -> list[str]:
    try:
        value = json.loads(rest)
    except json.JSONDecodeError:
        return ["/bin/sh", "-c", rest]  # shell form
    return [str(v) for v in value]


def _env_pairs(rest: str) -> dict[str, str]:
    tokens = shlex.split(rest)
    if len(tokens) >= 2 and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def parse_dockerfile(path: Path) -> Dockerfile:
    text = path.read_text()
    stages: list[Stage] = []
    for keyword, rest in _instructions(text):
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
            continue
        if keyword == "ARG" and not stages:
            continue
        stage = stages[-1]
        if keyword == "ENV":
            stage.env |= _env_pairs(rest)
        elif keyword == "USER":
            stage.user = rest
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(rest)
        elif keyword == "CMD":
            stage.cmd = _exec_form(rest)
        elif keyword == "HEALTHCHECK":
            stage.healthcheck = rest
        elif keyword == "EXPOSE":
            stage.expose += [int(p.split("/")[0]) for p in rest.split()]
        elif keyword == "COPY":
            stage.copies.append(shlex.split(rest))
    return Dockerfile(path, stages, text)


def install_requirements(dockerfile: Dockerfile) -> list[str]:
    """What the image's ``pip install`` / ``uv pip install`` lines install: quoted requirement
    strings and ``.[extras]`` of this project, with ``ARG`` defaults substituted."""
    args: dict[str, str] = {}
    found = []
    for keyword, rest in _instructions(dockerfile.text):
        if keyword == "ARG" and "=" in rest:
            name, default = rest.split("=", 1)
            args[name.strip()] = default.strip()
        elif keyword == "RUN" and "pip install" in rest:
            for token in re.findall(r'"([^"]+)"', rest):
                found.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), token))
    return found


def dockerfiles() -> dict[Path, Dockerfile]:
    return {p: parse_dockerfile(p) for p in sorted((DEPLOY / "docker").glob("*Dockerfile"))}


# -- compose --------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolated_names(value: str) -> list[str]:
    """``${NAME}``/``${NAME:-default}`` references compose resolves from the host environment."""
    return [m.group(1) for m in _INTERPOLATION.finditer(value.replace("$$", ""))]


def interpolate(value: str, host_env: dict[str, str] | None = None) -> str:
    """Compose interpolation from ``host_env`` (not this process's environment) or the
    defaults, and ``$$`` kept as ``$`` for the container's shell."""
    given = host_env or {}
    resolved = _INTERPOLATION.sub(
        lambda m: given.get(m.group(1)) or m.group(2) or "", value.replace("$$", "\0")
    )
    return resolved.replace("\0", "$")


def _deep_interpolate(node: Any, host_env: dict[str, str] | None) -> Any:
    if isinstance(node, str):
        return interpolate(node, host_env)
    if isinstance(node, list):
        return [_deep_interpolate(v, host_env) for v in node]
    if isinstance(node, dict):
        return {k: _deep_interpolate(v, host_env) for k, v in node.items()}
    return node


def load_compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def compose_raw_strings() -> list[str]:
    """Every string of the compose file before interpolation (for ``${VAR}`` references)."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(k)
                walk(v)

    walk(load_compose())
    return out


# -- containers -----------------------------------------------------------------------------


@dataclass
class Container:
    """One container as declared: the effective command and what it is given."""

    where: str  # human-readable location
    kind: str  # "compose" | "k8s"
    name: str
    image: str | None
    dockerfile: Dockerfile | None
    argv: list[str]  # entrypoint + command as the runtime assembles them
    env: dict[str, str]  # set directly on the container (image ENV excluded)
    image_env: dict[str, str]
    env_files: list[Path] = field(default_factory=list)
    config_refs: list[tuple[str, str, bool]] = field(default_factory=list)  # kind, name, optional
    mounts: dict[str, str] = field(default_factory=dict)  # mount path -> volume identity
    ports: list[int] = field(default_factory=list)  # container ports
    probes: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, path, port)
    health_url_ports: list[int] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_env(self) -> dict[str, str]:
        return self.image_env | self.env


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ["/bin/sh", "-c", value]
    return [str(v) for v in value]


def _env_dict(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        return dict(str(item).split("=", 1) for item in value)
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


_URL_PORT = re.compile(r"https?://[^/:'\"\s]+:(\d+)")


def _url_ports(words: list[str]) -> list[int]:
    return [int(p) for word in words for p in _URL_PORT.findall(word)]


def compose_containers(host_env: dict[str, str] | None = None) -> list[Container]:
    """The compose services as containers; ``host_env`` plays the operator's shell
    (``FTI_TRITON_FLAVOUR=cpu docker compose ...``)."""
    compose = _deep_interpolate(load_compose(), host_env)
    files = dockerfiles()
    out = []
    for name, service in compose["services"].items():
        build = service.get("build")
        dockerfile = None
        if build is not None:
            build_path = ROOT / build.get("context", ".") / build["dockerfile"]
            dockerfile = files.get(build_path.resolve()) or parse_dockerfile(build_path)
        image_stage = dockerfile.final if dockerfile else None
        entrypoint = _as_list(service.get("entrypoint"))
        command = _as_list(service.get("command"))
        if entrypoint is None and image_stage is not None:
            entrypoint = image_stage.entrypoint
            if command is None:
                command = image_stage.cmd
        argv = [*(entrypoint or []), *(command or [])]
        env_files = service.get("env_file") or []
        if isinstance(env_files, str):
            env_files = [env_files]
        health = service.get("healthcheck", {}).get("test") or []
        health_ports = _url_ports([str(w) for w in health])
        if not health and image_stage and image_stage.healthcheck:
            health_ports = _url_ports([image_stage.healthcheck])
        ports = []
        for mapping in service.get("ports", []):
            ports.append(int(str(mapping).rsplit(":", 1)[-1].split("/")[0]))
        ports += [int(str(port).split("/")[0]) for port in service.get("expose", [])]
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            mounts[target] = f"volume:{source}" if "/" not in source else f"bind:{source}"
        out.append(
            Container(
                where=f"docker-compose.yml: services.{name}",
                kind="compose",
                name=name,
                image=service.get("image"),
                dockerfile=dockerfile,
                argv=argv,
                env=_env_dict(service.get("environment")),
                image_env=dockerfile.all_env() if dockerfile else {},
                env_files=[ROOT / str(f if isinstance(f, str) else f["path"]) for f in env_files],
                mounts=mounts,
                ports=ports + (image_stage.expose if image_stage else []),
                health_url_ports=health_ports,
                spec=service,
            )
        )
    return out


# -- Kubernetes -----------------------------------------------------------------------------


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("k8s/**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    spec = doc.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return dict(spec["template"]["spec"])
    if kind == "CronJob":
        return dict(spec["jobTemplate"]["spec"]["template"]["spec"])
    return None


def image_dockerfiles() -> dict[str, Dockerfile]:
    """Image repository name (``online-service``) -> its Dockerfile, from compose's build+image."""
    out = {}
    for container in compose_containers():
        if container.image and container.dockerfile:
            out[_image_name(container.image)] = container.dockerfile
    return out


def _image_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":", 1)[0]


def k8s_containers() -> list[Container]:
    by_image = image_dockerfiles()
    out = []
    for path, doc in k8s_documents():
        spec = pod_spec(doc)
        if spec is None:
            continue
        volumes = {}
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                volumes[volume["name"]] = f"pvc:{volume['persistentVolumeClaim']['claimName']}"
            else:
                volumes[volume["name"]] = (
                    f"{next(k for k in volume if k != 'name')}:{volume['name']}"
                )
        for c in spec.get("containers", []):
            dockerfile = by_image.get(_image_name(c["image"]))
            stage = dockerfile.final if dockerfile else None
            command = c.get("command")
            args = c.get("args")
            if command is None:
                command = stage.entrypoint if stage else None
                if args is None and stage is not None:
                    args = stage.cmd
            probes = []
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe and "httpGet" in probe:
                    probes.append((kind, probe["httpGet"]["path"], int(probe["httpGet"]["port"])))
            env = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
            refs = []
            for source in c.get("envFrom", []):
                for ref_kind in ("configMapRef", "secretRef"):
                    if ref_kind in source:
                        ref = source[ref_kind]
                        refs.append((ref_kind, ref["name"], bool(ref.get("optional", False))))
            out.append(
                Container(
                    where=f"{path.relative_to(ROOT)}: {doc['kind']}/{_name(doc)}/{c['name']}",
                    kind="k8s",
                    name=c["name"],
                    image=c["image"],
                    dockerfile=dockerfile,
                    argv=[*(command or []), *(args or [])],
                    env=env,
                    image_env=dockerfile.all_env() if dockerfile else {},
                    config_refs=refs,
                    mounts={m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])},
                    ports=[int(p["containerPort"]) for p in c.get("ports", [])],
                    probes=probes,
                    spec=c,
                )
            )
    return out


def _name(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata", {})
    return str(meta.get("name") or meta.get("generateName", "?"))


def config_maps() -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: {k: str(v) for k, v in doc.get("data", {}).items()}
        for _, doc in k8s_documents()
        if doc.get("kind") == "ConfigMap"
    }


def secrets() -> dict[str, dict[str, str]]:
    """Secrets the manifests document (deploy/k8s/examples): name -> keys with placeholders."""
    return {
        doc["metadata"]["name"]: {k: str(v) for k, v in doc.get("stringData", {}).items()}
        for _, doc in k8s_documents()
        if doc.get("kind") == "Secret"
    }


# -- crontabs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CronEntry:
    where: str
    schedule: str
    command: str


def crontabs() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("crontab*") if p.is_file())


def cron_entries(path: Path) -> tuple[dict[str, str], list[CronEntry]]:
    env: dict[str, str] = {}
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if assignment:
            env[assignment.group(1)] = assignment.group(2)
            continue
        fields = line.split(None, 5)
        # cron turns an unescaped % into a newline; \% is a literal %
        command = fields[5].replace("\\%", "%") if len(fields) == 6 else ""
        entries.append(
            CronEntry(f"{path.relative_to(ROOT)}:{number}", " ".join(fields[:5]), command)
        )
    return env, entries


# -- commands -------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One program started by a deployment file, with its arguments as the shell passes them."""

    where: str
    # "python -m" | "torchrun" | "mlflow" | "tritonserver" | "docker compose run" | "dagster"
    program: str
    target: str | None  # python module, or compose service
    args: list[str]
    script: str | None = None  # the shell text it came from, if any


_REDIRECTS = [re.compile(r"\s\d*>&\d+"), re.compile(r"\s\d*>>?\s*\S+")]


def simple_commands(script: str) -> list[list[str]]:
    """``a && b; c | d`` -> [[a...], [b...], [c...], [d...]] (quotes respected)."""
    for pattern in _REDIRECTS:
        script = pattern.sub(" ", script)
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def shell_script(argv: list[str]) -> str | None:
    if len(argv) >= 3 and argv[0] in {"/bin/sh", "sh", "/bin/bash", "bash"} and argv[1] == "-c":
        return argv[2]
    return None


def invocations_in(argv: list[str], where: str, script: str | None = None) -> list[Invocation]:
    """Programs an argv starts: itself, or each simple command of an ``sh -c`` script."""
    inner = shell_script(argv)
    if inner is not None:
        found = []
        for command in simple_commands(inner):
            found += invocations_in(command, where, script=inner)
        return found
    words = list(argv)
    while words and (words[0] == "exec" or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
        words.pop(0)  # `exec`, `VAR=value cmd`
    if not words:
        return []
    program = Path(words[0]).name
    if re.fullmatch(r"python(3(\.\d+)?)?", program) and len(words) >= 3 and words[1] == "-m":
        return [Invocation(where, "python -m", words[2], words[3:], script)]
    if program == "torchrun":
        found = [Invocation(where, "torchrun", None, words[1:], script)]
        if "-m" in words:
            at = words.index("-m")
            found.append(Invocation(where, "python -m", words[at + 1], words[at + 2 :], script))
        return found
    if program in {"mlflow", "tritonserver"}:
        return [Invocation(where, program, None, words[1:], script)]
    if program == "docker" and words[1:2] == ["compose"]:
        rest = _after_options(words[2:], COMPOSE_VALUED_OPTIONS)
        if rest[:1] == ["run"]:
            rest = _after_options(rest[1:], COMPOSE_RUN_VALUED_OPTIONS)
            return [Invocation(where, "docker compose run", rest[0], rest[1:], script)]
        return []
    if program in {"dagster-webserver", "dagster-daemon"}:
        return [
            Invocation(where, "dagster", module, words[1:], script)
            for module in dagster_workspace_modules(words[1:])
        ]
    return []


# Options of `docker compose` and of `docker compose run` that take a value.
COMPOSE_VALUED_OPTIONS = {"-f", "--file", "--project-directory", "-p", "--project-name",
                          "--profile", "--env-file"}  # fmt: skip
COMPOSE_RUN_VALUED_OPTIONS = {"-e", "--env", "--name", "-u", "--user", "-w", "--workdir",
                              "-v", "--volume", "-p", "--publish", "--entrypoint", "-l",
                              "--label", "--pull"}  # fmt: skip


def _after_options(words: list[str], valued: set[str]) -> list[str]:
    rest = list(words)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in valued and rest:
            rest.pop(0)
    return rest


def dagster_workspace_modules(args: list[str]) -> list[str]:
    """Python modules a Dagster webserver or daemon loads: those of its ``--workspace`` file
    (the image's copy of deploy/dagster/<name>), or of ``-m`` options."""
    modules = [args[i + 1] for i, a in enumerate(args[:-1]) if a in {"-m", "--module-name"}]
    for i, arg in enumerate(args[:-1]):
        if arg in {"-w", "--workspace"}:
            workspace = yaml.safe_load((DAGSTER_DIR / Path(args[i + 1]).name).read_text())
            for location in workspace["load_from"]:
                modules.append(location["python_module"]["module_name"])
    return modules


FAKED_PROGRAMS = ("python", "python3", "torchrun", "mlflow", "tritonserver", "docker")

_FAKE = """#!/bin/sh
n=$(ls "$CAPTURE_DIR" | wc -l)
printf '%s\\0' "$0" "$@" > "$CAPTURE_DIR/$(printf %04d "$n")"
exit "${STUB_EXIT:-0}"
"""
# Programs of this repository that deployment scripts start by a path relative to the checkout.
CHECKOUT_PROGRAMS = ("deploy/fti-cron",)


@dataclass(frozen=True)
class StubbedRun:
    status: int
    argvs: list[list[str]]
    stderr: str


def run_stubbed(
    script: str, env: dict[str, str], workdir: Path, *, stub_exit: int = 0
) -> StubbedRun:
    """Run a deployment's shell script as its container or cron would, but with every program
    it may start (python, torchrun, docker, ...) replaced by a stub that records its argv and
    exits ``stub_exit``: the arguments come out exactly as the shell expands them
    (``$(date ...)``, variables, quoting). ``cd`` is a no-op, so paths of the target host do not
    matter; the checkout's own programs (``deploy/fti-cron``) are there, real."""
    import shutil
    import subprocess

    fakes = workdir / "bin"
    capture = workdir / "capture"
    for folder in (fakes, capture, workdir / ".venv" / "bin"):
        folder.mkdir(parents=True, exist_ok=True)
    for program in FAKED_PROGRAMS:
        for place in (fakes / program, workdir / ".venv" / "bin" / program):
            place.write_text(_FAKE)
            place.chmod(0o755)
    for program in CHECKOUT_PROGRAMS:
        (workdir / program).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / program, workdir / program)
    for old in capture.iterdir():
        old.unlink()
    done = subprocess.run(
        ["/bin/bash", "-c", f"cd() {{ :; }}\n{script}"],
        cwd=workdir,
        env={
            **env,
            "PATH": f"{fakes}:/usr/bin:/bin",
            "CAPTURE_DIR": str(capture),
            "STUB_EXIT": str(stub_exit),
        },
        capture_output=True,
        timeout=30,
        check=False,
    )
    argvs = []
    for record in sorted(capture.iterdir()):
        words = record.read_bytes().split(b"\0")[:-1]
        argvs.append([Path(words[0].decode()).name, *(w.decode() for w in words[1:])])
    return StubbedRun(done.returncode, argvs, done.stderr.decode(errors="replace"))


def run_script(script: str, env: dict[str, str], workdir: Path) -> tuple[int, list[list[str]]]:
    """`run_stubbed` with every program succeeding: the script's exit status and the recorded
    argvs, in order."""
    run = run_stubbed(script, env, workdir)
    return run.status, run.argvs


def cron_command(entry: CronEntry, workdir: Path) -> str:
    """A cron line's command with the target host's log files made one file of ours."""
    command = re.sub(r"(\d?>>?)\s*/\S+", rf"\1 {workdir}/cron.log", entry.command)
    return re.sub(r"/var/log/\S+", f"{workdir}/cron.log", command)


@dataclass
class ScriptRun:
    where: str
    script: str
    status: int
    argvs: list[list[str]]


def script_runs(workdir: Path) -> list[ScriptRun]:
    """Every shell script of our containers (images built from deploy/docker) and crontabs,
    run with stubbed programs (see :func:`run_script`)."""
    runs = []
    for container in [*compose_containers(), *k8s_containers()]:
        script = shell_script(container.argv)
        if script is None or container.dockerfile is None:
            continue
        env = {**container.effective_env, "JOB_COMPLETION_INDEX": "0"}  # index 0 of a Job
        status, argvs = run_script(script, env, workdir)
        runs.append(ScriptRun(container.where, script, status, argvs))
    for path in crontabs():
        cron_env, entries = cron_entries(path)
        for entry in entries:
            status, argvs = run_script(cron_command(entry, workdir), cron_env, workdir)
            runs.append(ScriptRun(entry.where, entry.command, status, argvs))
    return runs


def all_invocations(workdir: Path) -> list[Invocation]:
    """Every program every deployment file starts, with shell scripts expanded for real and
    ``docker compose run`` resolved to the service's entrypoint."""
    found: list[Invocation] = []
    compose = {c.name: c for c in compose_containers()}
    runs = {run.where: run for run in script_runs(workdir)}
    for container in [*compose.values(), *k8s_containers()]:
        if container.where in runs:
            for argv in runs[container.where].argvs:
                found += invocations_in(argv, container.where, runs[container.where].script)
        else:
            found += invocations_in(container.argv, container.where)
    for path, dockerfile in dockerfiles().items():
        stage = dockerfile.final
        argv = [*(stage.entrypoint or []), *(stage.cmd or [])]
        found += invocations_in(argv, f"{path.relative_to(ROOT)}: ENTRYPOINT + CMD")
    launched = [
        (run.where, argv, run.script)
        for run in runs.values()
        if run.where.startswith("deploy/") and "crontab" in run.where
        for argv in run.argvs
    ]
    launched += [(where, argv, None) for where, argv in dag_task_commands()]
    for where, argv, script in launched:
        for invocation in invocations_in(argv, where, script):
            found.append(invocation)
            if invocation.program == "docker compose run" and invocation.target in compose:
                service = compose[invocation.target]
                entrypoint = _as_list(service.spec.get("entrypoint"))
                if entrypoint is None and service.dockerfile is not None:
                    entrypoint = service.dockerfile.final.entrypoint
                found += invocations_in(
                    [*(entrypoint or []), *invocation.args],
                    f"{where} (service {invocation.target})",
                )
    return found


DAG_SAMPLE_DAY = "2013-07-04"


def dag_orchestrators() -> list[Container]:
    """Compose containers that run the daily DAG's Dagster code location."""
    return [
        c
        for c in compose_containers()
        if any(i.target == "orchestration" for i in invocations_in(c.argv, c.where))
    ]


def dag_task_commands() -> list[tuple[str, list[str]]]:
    """The command line of every task of one day of the daily DAG, as each orchestrator
    container's settings (FTI_DAG_*) build it."""
    from datetime import date

    from orchestration.daily import TASKS, DailyFlow
    from orchestration.launch import Launcher
    from orchestration.settings import DagSettings

    out = []
    for container in dag_orchestrators():
        given = {
            k.removeprefix("FTI_DAG_").lower(): v
            for k, v in container.effective_env.items()
            if k.startswith("FTI_DAG_")
        }
        flow = DailyFlow.from_settings(DagSettings(**given))
        launcher = Launcher.from_settings(DagSettings(**given))
        for task in TASKS:
            cli, args = flow.command(task, date.fromisoformat(DAG_SAMPLE_DAY))
            out.append((f"{container.where}: DAG task {task}", launcher.argv(cli, args)))
    return out
