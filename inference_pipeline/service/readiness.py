"""Readiness of the service's dependencies (``/readyz``): the feature store, the registry and
Triton with the served model loaded, each checked within its deadline and named when down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import polars as pl

from inference_pipeline.service.served_models import ServedModels
from inference_pipeline.service.store_access import StoreAccess
from inference_pipeline.service.triton_link import TritonLink
from shared.errors import ModelServerUnavailable, RegistryUnavailable, StoreUnavailable
from shared.feature_definitions import CARRIER_STATS


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str = ""


class DependencyChecks:
    def __init__(
        self,
        store: StoreAccess,
        models: ServedModels,
        triton: TritonLink,
        registry_timeout_s: float,
    ) -> None:
        self._store = store
        self._models = models
        self._triton = triton
        self._registry_timeout_s = registry_timeout_s

    async def all(self) -> dict[str, CheckResult]:
        """Every dependency's check, run concurrently."""
        store, registry, triton = await asyncio.gather(self.store(), self.registry(), self.triton())
        return {"feature_store": store, "registry": registry, "triton": triton}

    async def store(self) -> CheckResult:
        """The store the next process would open (a deleted or replaced SQLite file shows
        here, not only in a fresh process) with the served view's tables, and a read."""
        access = self._store
        probe = pl.DataFrame({"carrier": ["__readiness__"]})
        groups = {g.table_name: g for m in self._models.all() for g in m.view.groups if g.online}
        try:
            await access.call(access.store.check_online, list(groups.values()))
            await access.call(access.store.get_online_features, CARRIER_STATS, probe)
        except StoreUnavailable as exc:
            return CheckResult(False, str(exc))
        return CheckResult(True)

    async def registry(self) -> CheckResult:
        registry = self._models.registry
        if registry is None:
            return CheckResult(False, "not opened")
        model = self._models.champion
        try:
            async with asyncio.timeout(self._registry_timeout_s):  # see `follow_aliases`
                version = await asyncio.to_thread(registry.version_for, model.alias)
        except (TimeoutError, RegistryUnavailable) as exc:
            return CheckResult(False, str(exc) or "registry timed out")
        if version is None:
            return CheckResult(False, f"alias {model.alias!r} points to no version")
        stale = "" if version == model.version else f"; {model.alias} is now v{version}"
        return CheckResult(True, f"{model.alias} -> v{version}{stale}")

    async def triton(self) -> CheckResult:
        client = self._triton.client
        if client is None:
            return CheckResult(False, "not connected")
        model = self._models.champion
        try:
            ready = await client.model_ready(model.triton_name, model.version)
        except ModelServerUnavailable as exc:
            return CheckResult(False, str(exc))
        if not ready:
            self._triton.heal_soon()
            return CheckResult(False, f"{model.triton_name} v{model.version} not loaded")
        return CheckResult(True, f"{model.triton_name} v{model.version} ready")
