"""Model registry client (MLflow): log a training run, register a version, move aliases, load back.

A registered version is a directory of files (TorchScript model, MDT state, feature view, config,
metrics, reference statistics, Triton repositories, the MLflow model files of its pyfunc) plus
``manifest.json``: the sha256 of every other file. The sha256 of the manifest itself is a tag of
the version, so :meth:`load` can prove that the bytes it hands to inference are the bytes training
registered.

The directory is uploaded as an MLflow *logged model* of the training run (MLflow 3:
``models:/<model_id>``, listed under the run, with its signature in the UI), and the registered
version points to it, so ``mlflow.pyfunc.load_model("models:/<name>@champion")`` loads it.

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
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
    from mlflow.data.dataset import Dataset
    from mlflow.entities import LoggedModel

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
MANIFEST_FILE = "manifest.json"
MANIFEST_TAG = "manifest_sha256"
CHAMPION_HISTORY_TAG = "champion_history"
MODEL_ARTIFACT_PATH = "model"
# Written into a version's directory when MLflow loads its pyfunc, on a local artifact store into
# the stored directory itself: MLflow's registered_model_meta (the name and version loaded) and
# the bytecode Python caches for the pyfunc's code. Not in the manifest; never read by this system.
LOAD_BYPRODUCTS = ("registered_model_meta", "__pycache__")


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
    source: str  # models:/<model_id>: its logged model (a run's artifact URI before MLflow 3)
    tags: dict[str, str]
    aliases: tuple[str, ...]
    created_ms: int | None = None  # registration time, epoch milliseconds

    @property
    def model_id(self) -> str | None:
        """Its logged model's id (MLflow's SQL registry keeps it only in the source)."""
        prefix = "models:/m-"
        return self.source.removeprefix("models:/") if self.source.startswith(prefix) else None


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

        now = int(time.time() * 1000)  # the UI's wall-time axis of live curves
        items = [
            Metric(k, float(v), timestamp=now, step=step)
            for k, v in sorted(metrics.items())
            if v is not None
        ]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def log_dataset(
        self, run_id: str, dataset: Dataset, *, context: str, tags: Mapping[str, str]
    ) -> None:
        """Record ``dataset`` as an input of the run (``mlflow.log_input`` without a fluent run)."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        input_tags += [InputTag(k, v) for k, v in tags.items()]
        entity = dataset._to_mlflow_entity()  # what mlflow.log_input sends
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, input_tags)])

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
        model = self._log_model(run_id, model_dir)
        self._ensure_registered_model()
        # MLflow's database registry looks the logged model of a models:/ source up with the
        # process-wide tracking URI, not this client's (mlflow 3.x): set it for the call.
        with _use_tracking_uri(self.settings.tracking_uri):
            version = self.client.create_model_version(
                self.name,
                source=f"models:/{model.model_id}",
                run_id=run_id,
                tags={**(tags or {}), MANIFEST_TAG: manifest_sha},
                model_id=model.model_id,
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

    def _log_model(self, run_id: str, model_dir: Path) -> LoggedModel:
        """Upload ``model_dir`` as a logged model of the run (what ``mlflow.<flavour>.log_model``
        does, with our manifest written first)."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        experiment_id = self.client.get_run(run_id).info.experiment_id
        model = self.client.create_logged_model(
            experiment_id, name=MODEL_ARTIFACT_PATH, source_run_id=run_id, model_type="pyfunc"
        )
        try:
            self.client.log_model_artifacts(model.model_id, str(model_dir))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model

    def files_uri(self, version: RegisteredVersion) -> str:
        """Where the version's files are kept (its logged model's artifact location)."""
        with _unavailable_as_error(self.settings.tracking_uri):
            return str(self.client.get_model_version_download_uri(self.name, version.version))

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
        return _registered(self.name, mv)

    def versions(self) -> list[RegisteredVersion]:
        """Every registered version with its aliases, newest first ([] when none)."""
        from mlflow.exceptions import MlflowException

        with _unavailable_as_error(self.settings.tracking_uri):
            try:
                aliases = self.client.get_registered_model(self.name).aliases
            except MlflowException:
                return []  # no such registered model yet
            found = self.client.search_model_versions(f"name = '{self.name}'")
        # (A search leaves each version's aliases out; the registered model has them all.)
        versions = [
            replace(
                _registered(self.name, mv),
                aliases=tuple(a for a, v in sorted(aliases.items()) if str(v) == str(mv.version)),
            )
            for mv in found
        ]
        return sorted(versions, key=lambda v: -int(v.version))

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
                artifact_uri=self.files_uri(version),
                dst_path=str(target),
                tracking_uri=self.settings.tracking_uri,
            )
        path = Path(local)
        _drop_load_byproducts(path)
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


def _registered(name: str, mv: Any) -> RegisteredVersion:
    return RegisteredVersion(
        name=name,
        version=str(mv.version),
        run_id=str(mv.run_id),
        source=str(mv.source),
        tags=dict(mv.tags),
        aliases=tuple(mv.aliases),
        created_ms=int(mv.creation_timestamp) if mv.creation_timestamp is not None else None,
    )


def _drop_load_byproducts(path: Path) -> None:
    """Remove from a downloaded copy what loading the pyfunc leaves in a version (see
    :data:`LOAD_BYPRODUCTS`), so that the manifest check sees the registered files only."""
    for found in (path / name for name in LOAD_BYPRODUCTS):
        if found.exists():
            log.debug("ignoring %s: written when the pyfunc was loaded", found)
            shutil.rmtree(found) if found.is_dir() else found.unlink()


@contextmanager
def _use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for a block, then restored, by MLflow's
    own helper (which also sets, then unsets, MLFLOW_TRACKING_URI in this process)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use

    with use(uri):
        yield


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
    """Whether the server could not be reached or could not serve: connection refused or reset,
    no answer in time, or retries used up on the answers MLflow retries (429 and 5xx).

    The HTTP client's own exception, where MLflow wraps one (cause or context), tells the first
    two. The last depends on the MLflow version: before 3.18 its client raised the client's
    ``RetryError``; since, it returns the last answer and raises the error that answer names
    (`RestException` for an MLflow error body, else an exception with the status's error code),
    so the code tells it: 429, 503 and 504's own codes, and ``INTERNAL_ERROR`` where the server
    answered it (a client-side MLflowException defaults to that code too, so only a
    `RestException` counts). A proxy's 502 page without an MLflow body is left as it is: MLflow
    gives it no code of its own."""
    from mlflow.exceptions import RestException
    from requests import exceptions as http

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, http.ConnectionError | http.RetryError | http.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    code = getattr(exc, "error_code", None)
    return code in _UNAVAILABLE_CODES or (isinstance(exc, RestException) and code == _SERVER_ERROR)


# The error codes MLflow gives the answers it retries (429, 503, 504), as its exceptions carry
# them (names: MLflow's ErrorCode enum), and the code of a 500.
_UNAVAILABLE_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}
)
_SERVER_ERROR = "INTERNAL_ERROR"
