"""Typed domain errors. They are raised in `shared/` and the pipelines, and translated only at
the edges: one readable line and an exit code in a CLI, a 4xx/5xx JSON body in the API."""

from __future__ import annotations


class FTIError(Exception):
    """Base class of every error this system raises on purpose."""


class ConfigurationError(FTIError):
    """A setting is missing, malformed or unsafe."""


class SourceError(FTIError):
    """Raw input cannot be read: missing file or column, corrupted content, wrong types."""


class HistoryMissing(SourceError):
    """Days the rolling statistics need are held neither by the source nor by the store."""

    def __init__(self, message: str, *, days: list[object]) -> None:
        super().__init__(message)
        self.days = days


class ValidationFailed(FTIError):
    """Too large a share of the input broke the data contract; nothing was written."""

    def __init__(self, message: str, *, bad_rows: int, total_rows: int) -> None:
        super().__init__(message)
        self.bad_rows = bad_rows
        self.total_rows = total_rows


class SchemaMismatch(FTIError):
    """A feature group exists with a different schema than the definition asks for."""


class FeatureGroupNotFound(FTIError):
    """The feature group (or the requested table version) does not exist in the store."""


class StoreUnavailable(FTIError):
    """A feature store backend (offline or online) cannot be reached."""


class WriteConflict(FTIError):
    """Every retry of a write lost its commit to concurrent writers; nothing was committed."""


class ArtifactIntegrityError(FTIError):
    """A model artifact's files are missing, changed or unexpected: what would be served is not
    what was registered. ``path`` names the first offending file (or directory); the lists name
    every offending file, relative to the artifact directory."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        changed: list[str] | None = None,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.changed = changed or []
        self.missing = missing or []
        self.unexpected = unexpected or []


class RegistryUnavailable(FTIError):
    """The model registry / tracking server (MLflow) cannot be reached."""


class ModelVersionNotFound(FTIError):
    """No registered model version matches the requested number or alias."""


class GateFailed(FTIError):
    """A candidate model failed a quality gate; it was not made champion."""

    def __init__(self, message: str, *, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class CheckpointError(FTIError):
    """A training run cannot resume: no checkpoint, or one from another config or data."""


class ModelServerUnavailable(FTIError):
    """The model server (Triton) cannot be reached in time, or does not serve the model."""


class ModelOutputInvalid(FTIError):
    """The model answered something that is not a probability (NaN, infinite): a defect of
    the model version, not of the request."""


class NothingToScore(FTIError):
    """A batch scoring run found no scheduled flights for its date."""


class NothingToMonitor(FTIError):
    """A monitoring run found no logged predictions for its window (or no predictions group)."""


class BrokerUnavailable(FTIError):
    """The event broker (a Redis stream) cannot be reached, or refused an append."""
