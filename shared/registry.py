"""Model registry client (MLflow): log a training run, register a version, move aliases, load back.

A registered version is a directory of files (TorchScript model, MDT state, feature view, config,
metrics, reference statistics, Triton repositories) plus ``manifest.json``: the sha256 of every
other file. The sha256 of the manifest itself is a tag of the version, so :meth:`load` can prove
that the bytes it hands to inference are the bytes training registered.

Aliases, not the deprecated stages: ``challenger`` is set when a version is registered,
``champion`` when it passes the gates or is promoted explicitly. Every champion change is
appended to the registered model's ``champion_history`` tag, which is what ``rollback`` reads.

Works with the embedded default (``sqlite:///<data_root>/mlflow.db`` and artifacts under
``<data_root>/mlartifacts``) and with an MLflow tracking server (``http://host:port``).
MLflow is imported lazily so that importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from shared.errors import (
    ArtifactIntegrityError,
    ConfigurationError,
    ModelVersionNotFound,
    RegistryUnavailable,
)
from shared.registry_relocation import artifact_root_uri, reroot
from shared.settings import CommonSettings
from shared.triton_repository import file_manifest, verify_manifest

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
MANIFEST_FILE = "manifest.json"
MANIFEST_TAG = "manifest_sha256"
CHAMPION_HISTORY_TAG = "champion_history"
MODEL_ARTIFACT_PATH = "model"


class RegistrySettings(CommonSettings):
    """Where runs and model versions live (env prefix ``FTI_``)."""

    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server (http(s)://) or database (postgresql://, "
        "sqlite:///); default sqlite:///<data_root>/mlflow.db",
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="artifact root of new experiments; default <data_root>/mlartifacts with the "
        "embedded registry, the server's own with a tracking server",
    )
    model_name: str = Field(default="flight_delay", description="registered model's name")
    experiment_name: str = Field(
        default="flight_delay", description="MLflow experiment of the training runs"
    )
    allow_unverified_models: bool = Field(
        default=False,
        description=(
            "load a model version that has no manifest_sha256 tag (registered outside this "
            "system, or before manifests): its files cannot be proven to be the registered ones; "
            "each such load is logged as a warning"
        ),
    )

    @model_validator(mode="after")
    def _refuse_file_store(self) -> RegistrySettings:
        uri = self.mlflow_tracking_uri
        if uri is not None and not uri.startswith(("sqlite:", "http://", "https://", "postgresql")):
            raise ConfigurationError(
                f"FTI_MLFLOW_TRACKING_URI={uri!r}: use sqlite:///..., postgresql://... or an "
                "http(s):// tracking server (MLflow 3.13+ refuses the ./mlruns file store)"
            )
        return self

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_root.resolve()}/mlflow.db"

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for new experiments; None lets a tracking server choose its own."""
        if self.mlflow_artifact_root is not None:
            return self.mlflow_artifact_root
        if self.mlflow_tracking_uri is None:
            return artifact_root_uri(self.data_root)
        return None


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class LoadedVersion:
    """A version's files on local disk, verified against the manifest registered with it."""

    version: RegisteredVersion
    path: Path
    manifest: dict[str, str]

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())


def write_manifest(model_dir: Path) -> str:
    """Write ``manifest.json`` (sha256 of every other file); returns the manifest's own sha256."""
    manifest = {k: v for k, v in file_manifest(model_dir).items() if k != MANIFEST_FILE}
    text = json.dumps(manifest, indent=1, sort_keys=True)
    (model_dir / MANIFEST_FILE).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_model_dir(model_dir: Path, manifest_sha256: str | None) -> dict[str, str]:
    """Check the manifest against its registered hash, then every file against the manifest."""
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactIntegrityError(f"{model_dir} has no {MANIFEST_FILE}", path=str(model_dir))
    text = manifest_path.read_text()
    if manifest_sha256 is not None and hashlib.sha256(text.encode()).hexdigest() != manifest_sha256:
        raise ArtifactIntegrityError(
            f"{manifest_path} does not match the sha256 registered with the version",
            path=str(manifest_path),
            changed=[MANIFEST_FILE],
        )
    manifest: dict[str, str] = json.loads(text) | {MANIFEST_FILE: _sha256_text(text)}
    verify_manifest(model_dir, manifest)
    manifest.pop(MANIFEST_FILE)
    return manifest


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ModelRegistry:
    """The MLflow tracking + registry client of one registered model."""

    def __init__(self, settings: RegistrySettings) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.name = settings.model_name
        if settings.mlflow_tracking_uri is None:
            settings.data_root.mkdir(parents=True, exist_ok=True)
            if settings.mlflow_artifact_root is None:
                reroot(settings.data_root)  # the data root may have been copied or restored
        uri = settings.tracking_uri
        self.client: MlflowClient = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- runs -------------------------------------------------------------------------------

    def experiment_id(self) -> str:
        with _unavailable_as_error(self.settings.tracking_uri):
            found = self.client.get_experiment_by_name(self.settings.experiment_name)
            if found is not None:
                return str(found.experiment_id)
            return str(
                self.client.create_experiment(
                    self.settings.experiment_name, artifact_location=self.settings.artifact_location
                )
            )

    @contextmanager
    def run(self, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
        """An MLflow run that ends FINISHED, or FAILED when the block raises."""
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=dict(tags))
        run_id = str(run.info.run_id)
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        items = [
            Metric(k, float(v), timestamp=0, step=step)
            for k, v in sorted(metrics.items())
            if v is not None
        ]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    # -- versions ---------------------------------------------------------------------------

    def next_version(self) -> int:
        """The number the next registered version will get (files embed it, e.g. Triton's)."""
        with _unavailable_as_error(self.settings.tracking_uri):
            versions = self.client.search_model_versions(f"name = '{self.name}'")
        return 1 + max((int(v.version) for v in versions), default=0)

    def register(
        self,
        run_id: str,
        model_dir: Path,
        tags: Mapping[str, str] | None = None,
        *,
        expected_version: int | None = None,
    ) -> RegisteredVersion:
        """Upload ``model_dir`` (manifest written here) and register it as ``challenger``.

        ``expected_version`` is the number the files were built for; if another registration
        took it meanwhile, the new version is tagged ``invalid`` and an error raised, rather
        than serving files that name the wrong version.
        """
        manifest_sha = write_manifest(model_dir)
        self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
        self._ensure_registered_model()
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        version = self.client.create_model_version(
            self.name,
            source=source,
            run_id=run_id,
            tags={**(tags or {}), MANIFEST_TAG: manifest_sha},
        )
        if expected_version is not None and int(version.version) != expected_version:
            self.client.set_model_version_tag(self.name, version.version, "invalid", "true")
            raise ConfigurationError(
                f"registered {self.name} version {version.version} but its files were built for "
                f"version {expected_version} (a concurrent registration?); run training again"
            )
        self.client.set_registered_model_alias(self.name, CHALLENGER, version.version)
        log.info("registered %s version %s as %s", self.name, version.version, CHALLENGER)
        return self.get(str(version.version))

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name)

    def get(self, version: str) -> RegisteredVersion:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, version)
        except MlflowException as exc:
            raise ModelVersionNotFound(f"{self.name} has no version {version}") from exc
        return RegisteredVersion(
            name=self.name,
            version=str(mv.version),
            run_id=str(mv.run_id),
            source=str(mv.source),
            tags=dict(mv.tags),
            aliases=tuple(mv.aliases),
        )

    def version_for(self, alias: str) -> str | None:
        """The version an alias points to, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        with _unavailable_as_error(self.settings.tracking_uri):
            try:
                return str(self.client.get_model_version_by_alias(self.name, alias).version)
            except MlflowException:
                return None

    def resolve(self, ref: str) -> RegisteredVersion:
        """``ref`` is a version number or an alias (``champion``, ``challenger``)."""
        if ref.isdigit():
            return self.get(ref)
        version = self.version_for(ref)
        if version is None:
            raise ModelVersionNotFound(f"{self.name} has no version with alias {ref!r}")
        return self.get(version)

    def champion_history(self) -> list[str]:
        """Versions that held ``champion``, oldest first ([] when nothing is registered)."""
        from mlflow.exceptions import MlflowException

        with _unavailable_as_error(self.settings.tracking_uri):
            try:
                model = self.client.get_registered_model(self.name)
            except MlflowException:
                return []
        return list(json.loads(model.tags.get(CHAMPION_HISTORY_TAG, "[]")))

    def promote(self, version: str) -> RegisteredVersion:
        """Point ``champion`` at ``version`` and remember it for rollback."""
        target = self.get(version)
        if self.version_for(CHAMPION) == target.version:
            return target
        history = [*self.champion_history(), target.version]
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        self.client.set_registered_model_tag(self.name, CHAMPION_HISTORY_TAG, json.dumps(history))
        log.info("%s version %s is now %s", self.name, target.version, CHAMPION)
        return self.get(target.version)

    def rollback(self) -> RegisteredVersion:
        """Move ``champion`` back to the version that held it before the current one."""
        history = self.champion_history()
        current = self.version_for(CHAMPION)
        if current is not None and history and history[-1] == current:
            history = history[:-1]
        if not history:
            raise ModelVersionNotFound(f"{self.name} has no earlier champion to roll back to")
        previous = history[-1]
        self.client.set_registered_model_alias(self.name, CHAMPION, previous)
        self.client.set_registered_model_tag(self.name, CHAMPION_HISTORY_TAG, json.dumps(history))
        log.info("%s champion rolled back from %s to %s", self.name, current, previous)
        return self.get(previous)

    def load(self, ref: str, destination: Path | None = None) -> LoadedVersion:
        """Download a version's files and verify every hash; raises on any mismatch."""
        import mlflow.artifacts

        version = self.resolve(ref)
        expected = version.tags.get(MANIFEST_TAG)
        if expected is None:
            self._allow_unverified(version)
        target = destination or Path(tempfile.mkdtemp(prefix=f"{self.name}-v{version.version}-"))
        if target.exists() and any(target.iterdir()):
            shutil.rmtree(target)
        target.mkdir(parents=True, exist_ok=True)
        with _unavailable_as_error(self.settings.tracking_uri):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=version.source,
                dst_path=str(target),
                tracking_uri=self.settings.tracking_uri,
            )
        path = Path(local)
        if expected is None and not (path / MANIFEST_FILE).is_file():
            return LoadedVersion(version=version, path=path, manifest={})
        # Without the tag, the files are still checked against the manifest they carry.
        manifest = verify_model_dir(path, expected)
        return LoadedVersion(version=version, path=path, manifest=manifest)

    def _allow_unverified(self, version: RegisteredVersion) -> None:
        """A version without its manifest hash is refused unless the override is set."""
        if not self.settings.allow_unverified_models:
            raise ArtifactIntegrityError(
                f"{self.name} version {version.version} has no {MANIFEST_TAG} tag, so its files "
                "cannot be proven to be the registered ones; register it again with this "
                "system's training pipeline, or set FTI_ALLOW_UNVERIFIED_MODELS=true to load it "
                "unverified",
                path=version.source,
            )
        log.warning(
            "loading %s version %s UNVERIFIED: it has no %s tag and FTI_ALLOW_UNVERIFIED_MODELS "
            "is set",
            self.name,
            version.version,
            MANIFEST_TAG,
        )


@contextmanager
def _unavailable_as_error(uri: str) -> Iterator[None]:
    """A tracking server that cannot be reached is a typed error, not a stack trace."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if _unreachable(exc):
            raise RegistryUnavailable(f"MLflow at {uri} cannot be reached") from exc
        raise


def _unreachable(exc: BaseException) -> bool:
    """Whether the HTTP client failed to reach the server: connection refused or reset, no
    answer in time, or retries used up on 5xx answers. MLflow wraps these in a plain
    MlflowException, the client's own exception in its chain (cause or context)."""
    from requests import exceptions as http

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, http.ConnectionError | http.RetryError | http.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
