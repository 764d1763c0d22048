"""The feature view of the flight-delay model: which label and features, from which groups, how.

A feature view is the contract between the feature store and a model (the mlfs-book shape):
flights are the spine; route stats, carrier stats, origin weather and planes are joined point in
time, backward as-of at each row's **prediction time T** (:mod:`shared.prediction_time`) with
the view's tolerances; the on-demand features of :mod:`shared.on_demand` are computed from the
flight itself (its schedule, not T). Offline, T is the scheduled departure minus the view's
``lead`` (the model's lead time: a model trained to predict 60 minutes ahead sees, for every
training row, only what was known 60 minutes before departure); online, T is the request's
arrival or its ``as_of``. A registered model stores :meth:`FeatureView.describe` (its lead
included), so batch and online inference ask the model which features to read, and as of when.

The same functions build the labeled training frame and the scoring frame of the batch job, and
:func:`online_feature_columns` builds the online one, so the three paths cannot drift apart.

The fresh window features (``FeatureView.fresh``: what left the origin airport, and the
aircraft, in the minutes before T) are computed rather than joined: offline by
:func:`feature_frame` right after the as-of join, from the departure events of the spine's span,
and online by :func:`online_feature_columns` from the events read in the same round trip; both
call the one function of :mod:`shared.recent_departures` (see :mod:`shared.fresh_features`).
A view records whether it has them, so versions trained without them serve without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from shared.errors import FeatureGroupNotFound
from shared.feature_definitions import (
    AIRPORT_WEATHER,
    CARRIER_STATS,
    FLIGHTS,
    PLANES,
    ROUTE_STATS,
)
from shared.feature_group import UTC_TIMESTAMP, FeatureGroup
from shared.feature_store import (
    FeatureStore,
    JoinRequest,
    OnlineLookup,
    OnlineRange,
    OnlineRangeLookup,
    OnlineRow,
)
from shared.feature_store.online_as_of import tolerance_us
from shared.flight_identity import local_day_start_utc
from shared.fresh_features import (
    FRESH_GROUP_NAME,
    FreshFeatures,
    FreshReads,
    offline_fresh_frame,
    online_fresh_columns,
    online_fresh_reads,
)
from shared.on_demand import (
    FLIGHT_DATE,
    PLANE_YEAR_BUILT,
    SCHED_DEP_TIME,
    on_demand_columns,
    with_on_demand_features,
)
from shared.prediction_time import (
    DEFAULT_LEAD_MINUTES,
    PREDICTION_TIME,
    lead_minutes,
    lead_of,
    prediction_times,
)

ON_DEMAND_FAMILY = "on_demand"  # the family of the features computed at request time


@dataclass(frozen=True)
class FeatureView:
    name: str
    version: int
    spine: FeatureGroup
    label: str
    # Columns that identify a row (kept in every frame, never fed to the model).
    entity_columns: tuple[str, ...]
    # Spine columns used directly as features.
    spine_features: tuple[str, ...]
    joins: tuple[JoinRequest, ...]
    # On-demand features the model uses (a subset of shared.on_demand.ON_DEMAND_FEATURES).
    on_demand: tuple[str, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    # Training and batch rows are read as of T = spine event time - lead (see the module doc).
    # Zero for versions registered before the lead was recorded: they were joined at departure.
    lead: timedelta = timedelta(0)
    # Fresh window features computed as of T from the departure events (shared.fresh_features);
    # None for versions registered before they existed, which read none of it.
    fresh: FreshFeatures | None = None

    def __post_init__(self) -> None:
        available = {*self.spine_features, *self.on_demand, *self.joined_columns}
        available |= set(self.fresh_columns)
        unknown = [f for f in (*self.numeric, *self.categorical) if f not in available]
        if unknown:
            raise ValueError(f"feature view {self.name}: unknown features {unknown}")
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise ValueError(
                f"feature view {self.name}: {sorted(both)} are numeric and categorical"
            )

    @property
    def lead_minutes(self) -> int:
        return lead_minutes(self.lead)

    def with_lead(self, minutes: int) -> FeatureView:
        """This view, reading training and batch rows ``minutes`` before departure."""
        return replace(self, lead=lead_of(minutes))

    def without_fresh(self) -> FeatureView:
        """This view without its fresh window features (as versions registered before them)."""
        fresh = set(self.fresh_columns)
        return replace(self, fresh=None, numeric=tuple(n for n in self.numeric if n not in fresh))

    @property
    def joined_columns(self) -> list[str]:
        return [r.prefix + f for r in self.joins for f in r.feature_list()]

    @property
    def fresh_columns(self) -> tuple[str, ...]:
        return () if self.fresh is None else self.fresh.features

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def groups(self) -> list[FeatureGroup]:
        fresh = [] if self.fresh is None else list(self.fresh.groups)
        return [self.spine, *(r.group for r in self.joins), *fresh]

    def input_groups(self) -> list[tuple[str, list[str]]]:
        """Each group the view reads for a row, with the columns it provides (the joins', and
        the fresh features under the departure events' name): what ``missing_groups`` names."""
        groups = [(r.group.name, [r.prefix + f for f in r.feature_list()]) for r in self.joins]
        if self.fresh is not None:
            groups.append((FRESH_GROUP_NAME, list(self.fresh.features)))
        return groups

    def feature_families(self) -> dict[str, str]:
        """Each model feature's family: the group a joined feature comes from, the fresh
        window features under the departure events' name, the spine's own fields under the
        spine's name, and the on-demand features under ``on_demand``. Monitoring weighs a
        drifted share by family, so that a family of many related features (26 fresh window
        features) counts once, like a family of four."""
        families = {name: self.spine.name for name in self.spine_features}
        families |= {name: ON_DEMAND_FAMILY for name in self.on_demand}
        for join in self.joins:
            families |= {join.prefix + f: join.group.name for f in join.feature_list()}
        families |= {name: FRESH_GROUP_NAME for name in self.fresh_columns}
        return {name: families[name] for name in self.features}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description, stored with every model version trained on the view."""
        return {
            "name": self.name,
            "version": self.version,
            "spine": {"group": self.spine.name, "version": self.spine.version},
            "spine_time": self.spine.event_time,
            "prediction_time": f"{self.spine.event_time} - lead",
            "lead_minutes": self.lead_minutes,
            "label": self.label,
            "entity_columns": list(self.entity_columns),
            "joins": [
                {
                    "group": r.group.name,
                    "group_version": r.group.version,
                    "spine_keys": [s for s, _ in r.key_pairs()],
                    "features": r.feature_list(),
                    "prefix": r.prefix,
                    "tolerance_s": None if r.tolerance is None else r.tolerance.total_seconds(),
                }
                for r in self.joins
            ],
            **({} if self.fresh is None else {"fresh": self.fresh.describe()}),
            "on_demand": list(self.on_demand),
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
        }


_STATS = ("flights", "delay_rate", "mean_dep_delay", "cancel_rate")
_STAT_FEATURES = tuple(f"{s}_{d}d" for d in (7, 28) for s in _STATS)
_WEATHER = (
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"
)  # fmt: skip

_FRESH = FreshFeatures()

FLIGHT_DELAY_VIEW = FeatureView(
    name="flight_delay",
    # v2: the fresh window features (v1 versions are rebuilt from their own description).
    version=2,
    spine=FLIGHTS,
    label="is_delayed",
    entity_columns=(
        "flight_id",
        "sched_dep_utc",
        "flight_date",
        "sched_dep_time",
        "carrier",
        "flight",
        "tailnum",
        "origin",
        "dest",
    ),
    spine_features=("carrier", "origin", "dest", "distance"),
    joins=(
        # Daily stats are valid from local midnight and describe days strictly before; after 28
        # days without a row every rolling window is empty anyway, so older rows are not used.
        JoinRequest(ROUTE_STATS, _STAT_FEATURES, prefix="route_", tolerance=timedelta(days=28)),
        JoinRequest(CARRIER_STATS, _STAT_FEATURES, prefix="carrier_", tolerance=timedelta(days=28)),
        # Hourly observations: one more than three hours old says little about the departure.
        JoinRequest(AIRPORT_WEATHER, _WEATHER, prefix="wx_", tolerance=timedelta(hours=3)),
        # The prefix makes `plane_year_built`, the input of on-demand `plane_age_years`.
        JoinRequest(
            PLANES,
            ("year_built", "seats", "engines", "plane_type", "manufacturer", "engine"),
            prefix="plane_",
        ),
    ),
    # month and day_of_year are left out on purpose: with a time split (train Jan-Sep, test
    # Nov-Dec) their test values never occur in training. The cyclic season pair generalises.
    on_demand=(
        "sched_hour",
        "sched_minute_of_day",
        "weekday",
        "is_weekend",
        "time_of_day_sin",
        "time_of_day_cos",
        "season_sin",
        "season_cos",
        "plane_age_years",
    ),
    numeric=(
        "distance",
        *(f"route_{f}" for f in _STAT_FEATURES),
        *(f"carrier_{f}" for f in _STAT_FEATURES),
        *(f"wx_{f}" for f in _WEATHER),
        "plane_seats",
        "plane_engines",
        "plane_age_years",
        "sched_minute_of_day",
        "is_weekend",
        "time_of_day_sin",
        "time_of_day_cos",
        "season_sin",
        "season_cos",
        *_FRESH.features,
    ),
    categorical=(
        "carrier",
        "origin",
        "dest",
        "sched_hour",
        "weekday",
        "plane_plane_type",
        "plane_manufacturer",
        "plane_engine",
    ),
    lead=lead_of(DEFAULT_LEAD_MINUTES),
    fresh=_FRESH,
)


@dataclass(frozen=True)
class LabeledFrame:
    """Training rows of a date window, and what was left out and why."""

    frame: pl.DataFrame
    rows_read: int
    unlabeled: int  # cancelled flights: no departure, so no label
    table_versions: dict[str, int]


def pinned_versions(store: FeatureStore, view: FeatureView) -> dict[str, int]:
    """Current table version of every group the view reads (all later reads pin to them)."""
    versions: dict[str, int] = {}
    for group in view.groups:
        version = store.table_version(group)
        if version is None:
            raise FeatureGroupNotFound(
                f"feature group {group.table_name} is empty or missing; run the feature pipeline"
            )
        versions[group.name] = version
    return versions


def read_spine(
    store: FeatureStore,
    view: FeatureView,
    start: date,
    end: date,
    *,
    versions: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """Spine rows whose local flight date is in [start, end), sorted by departure then id."""
    version = (versions or {}).get(view.spine.name)
    frame = store.read(
        view.spine,
        local_day_start_utc(start) - timedelta(days=1),
        local_day_start_utc(end) + timedelta(days=1),
        version=version,
    )
    frame = frame.filter((pl.col("flight_date") >= start) & (pl.col("flight_date") < end))
    # A stable order makes the training data (and its hash) independent of file layout.
    return frame.sort([view.spine.event_time, "flight_id"])


def feature_frame(
    store: FeatureStore,
    view: FeatureView,
    spine: pl.DataFrame,
    *,
    versions: Mapping[str, int] | None = None,
    extra_columns: Sequence[str] = (),
) -> pl.DataFrame:
    """Entity columns, the prediction time T, every feature of the view and ``extra_columns``
    for each spine row.

    Point in time: each joined value has an event time at or before the row's T, and no older
    than the join's tolerance before it. T is the spine's own :data:`PREDICTION_TIME` column
    when it has one, else its scheduled departure minus ``view.lead``. Every spine row is kept
    in order; a row with no match gets nulls.
    """
    if PREDICTION_TIME not in spine.columns:
        spine = spine.with_columns(prediction_times(view.spine.event_time, view.lead))
    joined = store.point_in_time_join(
        spine, PREDICTION_TIME, list(view.joins), versions=dict(versions or {})
    )
    if view.fresh is not None:  # computed as of each row's T from the events strictly before
        fresh = offline_fresh_frame(store, view.fresh, joined, versions=dict(versions or {}))
        joined = pl.concat([joined.drop(fresh.columns, strict=False), fresh], how="horizontal")
    joined = with_on_demand_features(joined)
    return joined.select(
        _unique([*view.entity_columns, PREDICTION_TIME, *view.features, *extra_columns])
    )


def build_training_frame(
    store: FeatureStore,
    view: FeatureView,
    start: date,
    end: date,
    *,
    versions: Mapping[str, int] | None = None,
) -> LabeledFrame:
    """Labeled rows for flights with local date in [start, end); cancelled flights counted out."""
    pinned = dict(versions) if versions is not None else pinned_versions(store, view)
    spine = read_spine(store, view, start, end, versions=pinned)
    labeled = spine.filter(pl.col(view.label).is_not_null())
    frame = feature_frame(store, view, labeled, versions=pinned, extra_columns=[view.label])
    return LabeledFrame(
        frame=frame,
        rows_read=spine.height,
        unlabeled=spine.height - labeled.height,
        table_versions=pinned,
    )


def build_scoring_frame(
    store: FeatureStore,
    view: FeatureView,
    flights: pl.DataFrame,
    *,
    versions: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """Feature rows for scheduled ``flights`` (spine columns; no outcome needed), in order, as
    of ``scheduled departure - view.lead`` (or the flights' own ``prediction_time`` column)."""
    missing = [c for c in (view.spine.event_time, *view.entity_columns) if c not in flights.columns]
    if missing:
        raise ValueError(f"flights to score lack columns {missing}")
    spine = flights.select(
        [pl.col(c).cast(view.spine.polars_schema[c]) for c in view.spine.columns if c in flights]
        + ([pl.col(PREDICTION_TIME).cast(UTC_TIMESTAMP)] if PREDICTION_TIME in flights else [])
    )
    return feature_frame(store, view, spine, versions=versions)


@dataclass(frozen=True)
class OnlineFeatures:
    """The online twin of :func:`feature_frame` for a few request rows, as plain columns.

    ``columns`` maps every feature of the view (and the request fields) to one value per row,
    as stored or requested (None where missing; on-demand features as numpy arrays, NaN where
    missing), ready for ``shared.transforms.apply_mdt_columns``. No frames: building Polars
    frames costs more than the whole model call for one flight."""

    columns: dict[str, Any]
    rows: int
    # These features are rows [start, start + rows) of ``columns``: the requests of a batch
    # share its columns rather than each copying slices of ~100 of them.
    start: int = 0

    @property
    def window(self) -> slice:
        """This object's rows in ``columns``."""
        return slice(self.start, self.start + self.rows)

    def rows_between(self, start: int, stop: int) -> OnlineFeatures:
        return OnlineFeatures(self.columns, stop - start, self.start + start)

    def row(self, index: int, names: Sequence[str]) -> dict[str, Any]:
        """One row's values as JSON-ready Python values (NaN -> None)."""
        at = self.start + index
        return {name: _plain(self.columns[name][at]) for name in names}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _key_type(dtype: pl.DataType) -> Callable[[Any], Any]:
    """How a request value becomes the plain value the online store keeps for a key of
    ``dtype``."""
    if dtype == pl.String:
        return str
    if dtype.is_integer():
        return int
    raise TypeError(f"online keys of type {dtype} are not supported on the request path")


def _online_keys(
    join: JoinRequest, requests: Sequence[Mapping[str, Any]], times: Sequence[int]
) -> OnlineLookup:
    """The group's key of each request (None parts where the request lacks them), as of the
    request's T with the join's tolerance; the key's fields and types are looked up once per
    call, not once per request."""
    schema = join.group.polars_schema
    fields = [(spine, _key_type(schema[key])) for spine, key in join.key_pairs()]
    return OnlineLookup(
        join.group,
        [  # tuple of a list, not of a generator: a third less per request and join
            tuple([None if (v := r.get(name)) is None else convert(v) for name, convert in fields])
            for r in requests
        ],
        as_of=times,
        tolerance_us=tolerance_us(join.tolerance),
    )


@dataclass(frozen=True)
class OnlineRead:
    """The one store read a batch of requests needs, planned without the store: key lookups as
    of each request's T (the joins', then, with fresh window features, the stream's watermark)
    and the fresh features' event ranges. Planning and assembling are apart from the read so
    that a caller can read with a client of its own (an asyncio one: see ``model_inputs_async``
    in the inference pipeline)."""

    lookups: list[OnlineLookup]
    ranges: tuple[OnlineRangeLookup, ...]
    fresh: FreshReads | None
    rows: int


def plan_online_read(
    view: FeatureView, requests: Sequence[Mapping[str, Any]], times: Sequence[int]
) -> OnlineRead:
    """What :func:`online_feature_columns` reads for ``requests`` as of ``times``."""
    rows = len(requests)
    if len(times) != rows:
        raise ValueError(f"{len(times)} prediction times for {rows} requests")
    lookups = [_online_keys(join, requests, times) for join in view.joins]
    if view.fresh is None or not rows:
        return OnlineRead(lookups, (), None, rows)
    reads = online_fresh_reads(requests, times)
    return OnlineRead([*lookups, reads.progress], reads.ranges, reads, rows)


def read_online(
    store: FeatureStore, read: OnlineRead
) -> tuple[list[list[OnlineRow]], list[list[OnlineRange]]]:
    """The store's answer to ``read``: one call (none for no requests)."""
    if not read.rows:
        return [[] for _ in read.lookups], []
    if read.fresh is None:
        return store.get_online_rows(read.lookups), []
    return store.get_online_rows_and_ranges(read.lookups, read.ranges)


def online_feature_columns(
    store: FeatureStore,
    view: FeatureView,
    requests: Sequence[Mapping[str, Any]],
    times: Sequence[int],
) -> OnlineFeatures:
    """Online values valid as of each request's T, plus the on-demand features.

    ``requests`` hold the spine's request fields (flight_date as a date, sched_dep_time,
    carrier, origin, dest, distance, tailnum, ...); ``times`` each one's prediction time T in
    epoch microseconds (UTC). One ``get_online_rows`` call reads every group, with the view's
    tolerances as of T, as the offline join applies them: a row newer than T is never used, and
    keys unknown online or whose row is too old give missing values, imputed by the MDT and
    reported. ``columns`` also holds T under :data:`PREDICTION_TIME`."""
    read = plan_online_read(view, requests, times)
    found, ranges = read_online(store, read)
    return assemble_online_features(view, requests, times, read, found, ranges)


def assemble_online_features(
    view: FeatureView,
    requests: Sequence[Mapping[str, Any]],
    times: Sequence[int],
    read: OnlineRead,
    found: list[list[OnlineRow]],
    ranges: Sequence[Sequence[OnlineRange]],
) -> OnlineFeatures:
    """The features of ``requests`` from the store's answer to ``read``
    (see :func:`online_feature_columns`)."""
    rows = read.rows
    fresh = None
    if read.fresh is not None and view.fresh is not None:
        progress = found[-1]
        found = found[:-1]
        fresh = online_fresh_columns(view.fresh, read.fresh, progress, ranges)
    fields = requests[0].keys() if requests else ()
    columns: dict[str, Any] = {name: [r.get(name) for r in requests] for name in fields}
    columns[PREDICTION_TIME] = times
    for join, group_rows in zip(view.joins, found, strict=True):
        for feature in join.feature_list():
            columns[join.prefix + feature] = [None if r is None else r[feature] for r in group_rows]
    if view.fresh is not None:
        columns |= fresh or {name: np.empty(0) for name in view.fresh.features}
    columns |= on_demand_columns(
        np.array(columns[FLIGHT_DATE], dtype="datetime64[D]"),
        np.array(columns[SCHED_DEP_TIME], dtype=np.int64),
        np.array(columns.get(PLANE_YEAR_BUILT, [None] * rows), dtype=np.float64),
    )
    return OnlineFeatures(columns=columns, rows=rows)


def _unique(names: Sequence[str]) -> list[str]:
    """Names in first-seen order without repeats (entity columns can also be features)."""
    return list(dict.fromkeys(names))
