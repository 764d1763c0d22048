"""The feature store all three pipelines share: one interface, several backends."""

from __future__ import annotations

from shared.feature_store.point_in_time import point_in_time_join
from shared.feature_store.protocol import (
    AsyncOnlineReads,
    FeatureStore,
    GroupInfo,
    HeldRows,
    JoinRequest,
    MaterializeResult,
    OnlineLookup,
    OnlineRange,
    OnlineRangeLookup,
    OnlineRow,
    OnlineStore,
    WriteResult,
)
from shared.settings import FeatureStoreSettings, OnlineBackend, PitJoinMethod, StoreBackend


def open_online_store(settings: FeatureStoreSettings) -> OnlineStore:
    if settings.online_backend is OnlineBackend.redis:
        from shared.feature_store.online_redis import RedisOnlineStore

        return RedisOnlineStore(
            settings.redis_url,
            namespace=settings.redis_namespace,
            timeout_s=settings.online_timeout_s,
        )
    from shared.feature_store.online_sqlite import SQLiteOnlineStore

    return SQLiteOnlineStore(settings.resolved_sqlite_path, timeout_s=settings.online_timeout_s)


def open_feature_store(settings: FeatureStoreSettings) -> FeatureStore:
    """Build the configured backend. Imports are local so each image installs only its own."""
    if settings.backend is StoreBackend.hopsworks:
        from shared.feature_store.hopsworks_store import HopsworksFeatureStore

        return HopsworksFeatureStore.connect(settings)
    from shared.feature_store.commit_retry import CommitRetry
    from shared.feature_store.local import LocalFeatureStore
    from shared.feature_store.offline_delta import DeltaOfflineStore

    offline = DeltaOfflineStore(
        settings.resolved_offline_root,
        settings.storage_options,
        commit_retry=CommitRetry(settings.commit_retries, settings.commit_backoff_s),
    )
    return LocalFeatureStore(offline, open_online_store(settings), pit_join=settings.pit_join)


__all__ = [
    "AsyncOnlineReads",
    "FeatureStore",
    "GroupInfo",
    "HeldRows",
    "JoinRequest",
    "MaterializeResult",
    "OnlineLookup",
    "OnlineRange",
    "OnlineRangeLookup",
    "OnlineRow",
    "OnlineStore",
    "PitJoinMethod",
    "WriteResult",
    "open_feature_store",
    "open_online_store",
    "point_in_time_join",
]
