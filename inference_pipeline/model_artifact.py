"""A registered model version as inference needs it, rebuilt from the artifact alone.

The registry hands over a verified directory (:class:`shared.registry.LoadedVersion`); this module
finds in it the TorchScript file, the MDT state, the feature view the model was trained on and
the Triton repository of the wanted flavour, and publishes that repository for Triton.

Files are found by what they contain rather than by fixed names (the MDT state is the JSON file
with the MDT format marker, the feature view is the JSON holding a view description, possibly
nested under ``feature_view``), so the training pipeline may lay the artifact out as it likes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from shared.errors import ArtifactIntegrityError
from shared.feature_definitions import FEATURE_GROUPS
from shared.feature_store import JoinRequest
from shared.feature_view import FeatureView
from shared.fresh_features import FreshFeatures
from shared.registry import LoadedVersion, ModelRegistry
from shared.transforms import FORMAT as MDT_FORMAT
from shared.transforms import MDTState
from shared.triton_repository import (
    CONFIG_FILENAME,
    TORCHSCRIPT_FILENAME,
    ModelSignature,
    file_manifest,
    verify_manifest,
    write_model_repository,
)

log = logging.getLogger(__name__)

_NAME_LINE = re.compile(r'^name:\s*"([^"]+)"', re.MULTILINE)
_VERSION_POLICY_LINE = re.compile(r"^version_policy:.*$", re.MULTILINE)


@dataclass(frozen=True)
class ServingModel:
    """Everything inference rebuilds from one registered version."""

    version: str
    alias: str
    path: Path
    torchscript: Path
    mdt: MDTState
    view: FeatureView
    triton_name: str
    triton_config: Path | None  # the artifact's config.pbtxt of the wanted flavour, if any

    @property
    def signature(self) -> ModelSignature:
        return ModelSignature(n_numeric=self.mdt.n_numeric, n_categorical=self.mdt.n_categorical)

    @property
    def input_features(self) -> list[str]:
        return self.mdt.input_features

    @property
    def lead_minutes(self) -> int:
        """The lead it was trained at: its training rows were read as of departure minus it."""
        return self.view.lead_minutes


def load_serving_model(
    registry: ModelRegistry, ref: str, destination: Path, flavour: str = "cpu"
) -> ServingModel:
    """Download and verify ``ref`` (alias or version) and rebuild it; raises
    `ArtifactIntegrityError` on any changed, missing or unexpected file."""
    loaded = registry.load(ref, destination)
    return serving_model(loaded, alias=ref, flavour=flavour, default_name=registry.name)


def serving_model(
    loaded: LoadedVersion, *, alias: str, flavour: str, default_name: str
) -> ServingModel:
    jsons = _json_files(loaded.path)
    mdt_data = _find(jsons, lambda d: d.get("format") == MDT_FORMAT)
    if mdt_data is None:
        raise ArtifactIntegrityError(
            f"model version {loaded.version.version} has no MDT state", path=str(loaded.path)
        )
    view_data = _find(jsons, _is_view) or _find_nested(jsons)
    if view_data is None:
        raise ArtifactIntegrityError(
            f"model version {loaded.version.version} records no feature view",
            path=str(loaded.path),
        )
    mdt = MDTState.from_dict(mdt_data)
    view = feature_view_from_description(view_data, mdt)
    config = _triton_config(loaded.path, flavour)
    torchscript = _torchscript(loaded.path, config)
    name = default_name
    if config is not None:
        found = _NAME_LINE.search(config.read_text())
        name = found.group(1) if found else config.parent.name
    return ServingModel(
        version=loaded.version.version,
        alias=alias,
        path=loaded.path,
        torchscript=torchscript,
        mdt=mdt,
        view=view,
        triton_name=name,
        triton_config=config,
    )


def feature_view_from_description(data: dict[str, Any], mdt: MDTState) -> FeatureView:
    """The feature view a model was trained on, rebuilt from its stored description (its lead
    included: training and batch rows are read as of departure minus it).

    Group definitions come from :data:`shared.feature_definitions.FEATURE_GROUPS`; a version
    mismatch means this code cannot read what the model was trained on, and is refused.
    """
    joins = []
    for join in data["joins"]:
        group = FEATURE_GROUPS.get(join["group"])
        if group is None or group.version != join["group_version"]:
            raise ArtifactIntegrityError(
                f"the model reads feature group {join['group']} v{join['group_version']}, "
                "which this code does not define"
            )
        tolerance = join.get("tolerance_s")
        joins.append(
            JoinRequest(
                group,
                tuple(join["features"]),
                spine_keys=tuple(join["spine_keys"]),
                prefix=join["prefix"],
                tolerance=None if tolerance is None else timedelta(seconds=tolerance),
            )
        )
    spine = FEATURE_GROUPS[data["spine"]["group"]]
    joined = {j.prefix + f for j in joins for f in j.feature_list()}
    fresh = None
    if "fresh" in data:  # absent: a version trained before the fresh window features
        try:
            fresh = FreshFeatures.from_description(data["fresh"])
        except ValueError as exc:
            raise ArtifactIntegrityError(f"the model's fresh features: {exc}") from exc
        joined |= set(fresh.features)
    view = FeatureView(
        name=data["name"],
        version=int(data["version"]),
        spine=spine,
        label=data["label"],
        entity_columns=tuple(data["entity_columns"]),
        spine_features=tuple(
            f
            for f in (*data["numeric"], *data["categorical"])
            if f in spine.columns and f not in joined
        ),
        joins=tuple(joins),
        on_demand=tuple(data["on_demand"]),
        numeric=tuple(data["numeric"]),
        categorical=tuple(data["categorical"]),
        # Versions registered before the lead was recorded were joined at the departure.
        lead=timedelta(minutes=int(data.get("lead_minutes", 0))),
        fresh=fresh,
    )
    missing = [f for f in mdt.input_features if f not in view.features]
    if missing:
        raise ArtifactIntegrityError(f"the MDT state needs features {missing} the view lacks")
    return view


def publish_for_triton(
    model: ServingModel,
    repository: Path,
    flavour: str,
    *,
    retire_others: bool = True,
) -> str:
    """Publish the version into the serving repository as Triton version ``model.version``
    under the Triton name ``model.triton_name``. Returns that name.

    The model's config serves every version directory present (``version_policy: all``), so a
    switch is zero-downtime: publish the new version with ``retire_others=False``, load (Triton
    now serves both), move traffic, then :func:`retire_versions` and load again. With
    ``retire_others`` (the batch job) every other version directory goes at once, so that
    loading serves exactly this version, a rollback included.

    Safe when several processes publish into one repository at once (the workers of one service,
    replicas, the batch job, all sharing one Triton): everything is written into a private
    staging directory first, the version directory appears by one atomic rename, and a version
    that is already there is kept when it holds the same bytes (checked file by file against
    the staged copy) and refused when it does not. ``config.pbtxt`` is replaced atomically, so
    Triton never reads a half-written file.
    """
    name, version = model.triton_name, str(int(model.version))
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    # Inside the model directory, so the final renames stay on one file system; Triton skips
    # directories whose names are not version numbers, so a stage left by a crash is harmless.
    staging = Path(tempfile.mkdtemp(prefix=f".publish-{version}-", dir=model_dir))
    try:
        staged = write_model_repository(
            staging,
            name,
            int(version),
            model.torchscript,
            model.signature,
            "gpu" if flavour == "gpu" else "cpu",
        )
        config = staged / CONFIG_FILENAME
        if model.triton_config is not None:
            # The artifact's own config (batching, instances) wins over the default one.
            shutil.copyfile(model.triton_config, config)
        config.write_text(serving_config(config.read_text(), name))
        _place_version(staged / version, model_dir / version)
        os.replace(config, model_dir / CONFIG_FILENAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if retire_others:
        retire_versions(repository, name, keep=version)
    return name


def serving_config(text: str, name: str) -> str:
    """The artifact's ``config.pbtxt`` as served: under ``name`` (a challenger is served beside
    the champion under its own name), every version directory present."""
    text = _NAME_LINE.sub(f'name: "{name}"', text, count=1)
    if _VERSION_POLICY_LINE.search(text):
        return _VERSION_POLICY_LINE.sub("version_policy: { all: {} }", text, count=1)
    return text.rstrip("\n") + "\nversion_policy: { all: {} }\n"


def retire_versions(repository: Path, name: str, keep: str) -> list[str]:
    """Remove every version directory of ``name`` but ``keep``; load the model again after it
    and Triton unloads them (requests in flight finish first). Returns the retired versions."""
    retired = []
    for child in (repository / name).iterdir():
        if child.is_dir() and child.name.isdigit() and child.name != str(int(keep)):
            shutil.rmtree(child, ignore_errors=True)  # another publisher may retire it too
            retired.append(child.name)
    return retired


def _place_version(staged: Path, target: Path) -> None:
    """Rename ``staged`` to ``target``; when another process got there first, keep its copy if
    it holds the same files and bytes, refuse it otherwise (registered versions are immutable).
    """
    if not target.exists():
        try:
            os.rename(staged, target)
            return
        except OSError as exc:
            # ENOTEMPTY / EEXIST: another publisher renamed the same version in between.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
                raise
    try:
        verify_manifest(target, file_manifest(staged))
    except ArtifactIntegrityError as err:
        raise ArtifactIntegrityError(
            f"{target} already holds different files than model version {target.name}; "
            f"registered versions are immutable, remove the directory to republish ({err})",
            path=str(target),
        ) from err
    log.info("%s already holds this version; left as it is", target)


def _json_files(root: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def _is_view(data: dict[str, Any]) -> bool:
    return {"joins", "numeric", "categorical", "spine"} <= data.keys()


def _find(jsons: list[dict[str, Any]], match: Any) -> dict[str, Any] | None:
    return next((d for d in jsons if match(d)), None)


def _find_nested(jsons: list[dict[str, Any]]) -> dict[str, Any] | None:
    for data in jsons:
        nested = data.get("feature_view")
        if isinstance(nested, dict) and _is_view(nested):
            return nested
    return None


def _triton_config(root: Path, flavour: str) -> Path | None:
    marker = 'backend: "python"' if flavour == "cpu" else 'platform: "pytorch_libtorch"'
    for config in sorted(root.rglob(CONFIG_FILENAME)):
        if marker in config.read_text():
            return config
    return None


def _torchscript(root: Path, config: Path | None) -> Path:
    top = root / TORCHSCRIPT_FILENAME
    if top.is_file():
        return top
    candidates = sorted((config.parent if config else root).rglob(TORCHSCRIPT_FILENAME))
    if not candidates:
        raise ArtifactIntegrityError(f"no {TORCHSCRIPT_FILENAME} in {root}", path=str(root))
    return candidates[-1]
