"""The model versions the service serves, by role, and rollouts between them.

Roles: ``champion`` (the version ``FTI_MODEL_ALIAS`` names; admin reload may point it to another
alias) and, with a canary or shadow, ``challenger``. Each role's version is downloaded and
verified, published into the Triton model repository beside the one served, loaded, and only
then switched to (no request fails); the version it replaced is retired from Triton after a
grace period. Every worker and replica follows the registry aliases on its own
(``FTI_ALIAS_POLL_S``), so promotion and rollback need no restart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from inference_pipeline.model_artifact import (
    ServingModel,
    load_serving_model,
    publish_for_triton,
    retire_versions,
)
from inference_pipeline.service.background import BackgroundTasks
from inference_pipeline.service.downloads import Downloads
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.triton_link import TritonLink
from inference_pipeline.settings import InferenceSettings
from inference_pipeline.triton_server import TritonServerError
from shared.errors import ModelServerUnavailable
from shared.registry import CHALLENGER, CHAMPION, ModelRegistry

log = logging.getLogger(__name__)

# The challenger is served under a Triton name of its own, so both versions answer side by side.
CHALLENGER_SUFFIX = "__challenger"


class ServedModels:
    def __init__(
        self,
        settings: InferenceSettings,
        metrics: ServiceMetrics,
        triton: TritonLink,
        downloads: Downloads,
        tasks: BackgroundTasks,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry: ModelRegistry | None = None  # opened by the runtime's start
        self._triton = triton
        self._downloads = downloads
        self._tasks = tasks
        self._models: dict[str, ServingModel] = {}  # role -> the version serving it
        self._champion_alias = settings.model_alias  # admin reload may point it elsewhere
        self._switch_lock = asyncio.Lock()

    # -- what is served ---------------------------------------------------------------------

    @property
    def champion(self) -> ServingModel:
        """The champion (or the version ``FTI_MODEL_ALIAS`` names)."""
        found = self._models.get(CHAMPION)
        if found is None:
            raise ModelServerUnavailable("no model loaded yet")
        return found

    @property
    def challenger(self) -> ServingModel | None:
        return self._models.get(CHALLENGER)

    def for_role(self, role: str) -> ServingModel:
        """The role's model; the champion's while no challenger is served."""
        if role == CHALLENGER and (challenger := self._models.get(CHALLENGER)) is not None:
            return challenger
        return self.champion

    def all(self) -> list[ServingModel]:
        return list(self._models.values())

    # -- first versions ---------------------------------------------------------------------

    async def fetch_champion(self) -> ServingModel:
        """Download, verify and publish the champion (before a managed Triton starts on the
        repository)."""
        model = await asyncio.to_thread(self._fetch, CHAMPION, self.settings.model_alias)
        await self._publish(model)
        return model

    async def serve_first(self, champion: ServingModel) -> None:
        """Load the champion fetched before Triton started, and the challenger if any."""
        await self._load(CHAMPION, champion)
        if self.settings.serves_challenger:
            await self._follow_challenger()

    def _fetch(self, role: str, ref: str) -> ServingModel:
        assert self.registry is not None
        destination = self._downloads.destination()
        try:
            model = load_serving_model(
                self.registry, ref, destination, flavour=self.settings.triton_flavour
            )
        except BaseException:
            self._downloads.discard(destination)
            raise
        if role == CHALLENGER:
            model = replace(model, triton_name=model.triton_name + CHALLENGER_SUFFIX)
        return model

    # -- switching --------------------------------------------------------------------------

    async def switch(
        self, role: str, ref: str | None = None
    ) -> tuple[ServingModel | None, ServingModel]:
        """Serve ``ref`` (default: the role's alias now) for ``role``; requests in flight finish
        on the previous version, and a failure leaves it serving."""
        async with self._switch_lock:
            previous = self._models.get(role)
            try:
                model = await asyncio.to_thread(self._fetch, role, ref or self._alias(role))
                if previous is not None and model.version == previous.version:
                    self._downloads.discard(model.path)
                    return previous, previous
                # Publish beside the version served, load (Triton serves both), switch.
                await self._publish(model)
                await self._load(role, model)
            except Exception:
                self.metrics.reloads.labels("failed").inc()
                raise
            self.metrics.reloads.labels("ok").inc()
            log.info(
                "%s: version %s -> %s", role, previous.version if previous else "-", model.version
            )
            return previous, model

    async def reload(self, alias: str) -> tuple[ServingModel, ServingModel]:
        """Admin reload: serve what ``alias`` points to now, and follow that alias from now on."""
        previous, model = await self.switch(CHAMPION, alias)
        self._champion_alias = alias
        return previous or model, model

    def _alias(self, role: str) -> str:
        return self._champion_alias if role == CHAMPION else self.settings.challenger_alias

    async def _publish(self, model: ServingModel) -> None:
        s = self.settings
        await asyncio.to_thread(
            publish_for_triton, model, s.model_repository, s.triton_flavour, retire_others=False
        )

    async def _load(self, role: str, model: ServingModel) -> None:
        await self._triton.load(model)
        previous, self._models[role] = self._models.get(role), model
        self.metrics.role_version.labels(role).set(float(model.version))
        if role == CHAMPION:
            self.metrics.set_model(model.version, model.alias, model.triton_name)
        if previous is not None and previous.path != model.path:
            # Requests in flight hold the previous model's MDT in memory, not its files.
            self._downloads.discard(previous.path)
        self._tasks.spawn(self._retire_later(role, model), f"retire-{role}")

    @property
    def _retire_grace_s(self) -> float:
        """Other workers and replicas check the aliases every ``alias_poll_s``; a request they
        sent just before switching may still be in flight for up to the inference timeout."""
        s = self.settings
        return 2 * s.alias_poll_s + s.triton_timeout_s + 1.0

    async def _retire_later(self, role: str, model: ServingModel) -> None:
        """After the grace period, retire the versions of ``model``'s Triton name other than
        its own (the one it replaced)."""
        await asyncio.sleep(self._retire_grace_s)
        # Under the switch lock: a switch in progress has published its version but not yet
        # switched to it, and retiring "all but the served one" then would delete it.
        async with self._switch_lock:
            if self._models.get(role) is not model:
                return  # switched again meanwhile: that switch retires
            retired = await asyncio.to_thread(
                retire_versions, self.settings.model_repository, model.triton_name, model.version
            )
            if retired:
                try:
                    await self._triton.load(model)
                except TritonServerError as exc:
                    log.warning("could not unload retired versions %s: %s", retired, exc)
                else:
                    log.info("%s: retired versions %s of %s", role, retired, model.triton_name)
        # Downloads of siblings that are gone (the served ones' own went with each switch).
        await asyncio.to_thread(self._downloads.sweep)

    # -- following the registry -------------------------------------------------------------

    async def _follow_challenger(self) -> None:
        """Serve the challenger alias if it exists (its absence is not an error)."""
        assert self.registry is not None
        alias = self.settings.challenger_alias
        version = await asyncio.to_thread(self.registry.version_for, alias)
        if version is None:
            if (gone := self._models.pop(CHALLENGER, None)) is not None:
                self._downloads.discard(gone.path)
                log.info("alias %s removed: champion answers everything", alias)
            return
        current = self.challenger
        if current is None or current.version != version:
            await self.switch(CHALLENGER, version)

    async def follow_aliases(self) -> None:
        """Promotion and rollback without a restart: when an alias moves in the registry,
        switch to its new version (every worker and replica does this on its own)."""
        assert self.registry is not None
        registry = self.registry
        while True:
            await asyncio.sleep(self.settings.alias_poll_s)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result of
                # a call that completed as the task was cancelled, and drops the cancellation;
                # this loop would then run on past the service's shutdown.
                async with asyncio.timeout(self.settings.registry_timeout_s):
                    version = await asyncio.to_thread(registry.version_for, self._champion_alias)
                if version is not None and version != self.champion.version:
                    await self.switch(CHAMPION, version)
                if self.settings.serves_challenger:
                    await self._follow_challenger()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry or Triton may be down: keep serving
                log.warning("could not follow registry aliases: %s", exc)
