"""Validate: split typed rows into valid ones and quarantined ones, each with the rules it broke.

Three kinds of rule, all reported per row:
- parse rules: a raw value that is present but does not parse as its type ("unparseable x");
- the feature group's pandera schema (nulls in keys, impossible values, unknown airports);
- duplicates: exact copies are dropped (Compress), while rows that share a primary key but
  disagree keep the first and quarantine the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import pandera.polars as pa
import polars as pl

PARSE_ERRORS = "__parse_errors"
RAW = "raw__"  # raw string columns keep this prefix until quarantine, so bad values survive
_ROW = "__row"
# pandera reports a broken `unique=` constraint on *every* copy; the duplicate rule below keeps
# the first copy instead, so that check is left to it.
_UNIQUENESS_CHECK = "multiple_fields_uniqueness"


@dataclass(frozen=True)
class Validated:
    source: str
    rows_read: int
    valid: pl.DataFrame
    quarantine: pl.DataFrame  # columns: source, row_hash, raw, rules
    deduplicated: int

    @property
    def bad_share(self) -> float:
        return self.quarantine.height / self.rows_read if self.rows_read else 0.0


def raw(column: str) -> pl.Expr:
    return pl.col(RAW + column)


def parsed(raw_column: str, typed: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """A typed expression and the parse error it raises when a present value fails to parse."""
    error = (
        pl.when(raw(raw_column).is_not_null() & typed.is_null())
        .then(pl.lit(f"{raw_column}: unparseable"))
        .otherwise(None)
    )
    return typed, error


def unparsed(source: pl.DataFrame, columns: Mapping[str, tuple[pl.Expr, pl.Expr]]) -> pl.DataFrame:
    """Raw frame (columns prefixed ``raw__``) + typed columns + a list of parse errors per row."""
    typed = [expr.alias(name) for name, (expr, _) in columns.items()]
    errors = [err for _, err in columns.values()]
    return source.rename(lambda c: RAW + c).with_columns(
        *typed, pl.concat_list(errors).list.drop_nulls().alias(PARSE_ERRORS)
    )


def schema_failures(schema: pa.DataFrameSchema, frame: pl.DataFrame) -> pl.DataFrame:
    """Row index -> list of "column: check" the pandera schema reports for that row."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.filter(pl.col("check") != _UNIQUENESS_CHECK)
        if cases.filter(pl.col("index").is_null()).height:
            raise  # a frame-level failure (a column or dtype): a bug here, not a bad row
        return (
            cases.select(
                pl.col("index").cast(pl.UInt32).alias(_ROW),
                pl.concat_str(
                    [pl.col("column").fill_null("row"), pl.col("check")], separator=": "
                ).alias("rule"),
            )
            .group_by(_ROW)
            .agg(pl.col("rule").unique().sort())
        )
    return pl.DataFrame(schema={_ROW: pl.UInt32, "rule": pl.List(pl.String)})


def duplicate_errors(key: list[str]) -> pl.Expr:
    """Every copy of a primary key after the first is a duplicate."""
    is_later_copy = ~pl.struct(key).is_first_distinct()
    return pl.when(is_later_copy).then(pl.lit("duplicate key: " + "+".join(key))).otherwise(None)


def split_valid(
    source: str,
    typed: pl.DataFrame,
    schema: pa.DataFrameSchema,
    raw_columns: list[str],
    key: list[str],
) -> Validated:
    """Apply every rule, then split. ``typed`` holds the raw columns, the typed columns the
    schema describes and the parse-error list."""
    rows_read = typed.height
    deduped = typed.unique(subset=[RAW + c for c in raw_columns], keep="first", maintain_order=True)
    frame = deduped.with_row_index(_ROW)
    frame = frame.with_columns(
        pl.concat_list(pl.col(PARSE_ERRORS), duplicate_errors(key).cast(pl.String))
        .list.drop_nulls()
        .alias(PARSE_ERRORS)
    )
    failures = schema_failures(schema, frame.drop(_ROW))
    frame = frame.join(failures, on=_ROW, how="left").with_columns(
        pl.concat_list(
            pl.col(PARSE_ERRORS), pl.col("rule").fill_null(pl.lit([], pl.List(pl.String)))
        )
        .list.unique(maintain_order=True)
        .alias("rules")
    )
    bad = frame.filter(pl.col("rules").list.len() > 0)
    valid = frame.filter(pl.col("rules").list.len() == 0).select(list(schema.columns))
    return Validated(
        source=source,
        rows_read=rows_read,
        valid=valid,
        quarantine=quarantine_rows(source, bad, raw_columns),
        deduplicated=rows_read - deduped.height,
    )


def quarantine_rows(source: str, bad: pl.DataFrame, raw_columns: list[str]) -> pl.DataFrame:
    """Quarantine records keyed by a content hash, so re-runs never duplicate them."""
    fields = [raw(c).alias(c) for c in raw_columns]
    raw_json = bad.select(pl.struct(fields).struct.json_encode().alias("raw"))["raw"]
    hashes = [hashlib.sha256(f"{source}\x1f{r}".encode()).hexdigest() for r in raw_json]
    return pl.DataFrame(
        {
            "source": pl.Series([source] * bad.height, dtype=pl.String),
            "row_hash": pl.Series(hashes, dtype=pl.String),
            "raw": raw_json,
            "rules": bad["rules"].list.join("; ") if bad.height else pl.Series([], dtype=pl.String),
        }
    )


def stamp_quarantine(frames: list[pl.DataFrame], run_id: str, at: datetime) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame()
    rows = pl.concat(frames)
    return rows.with_columns(
        pl.lit(datetime(1970, 1, 1), dtype=pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
        .alias("key_time"),
        pl.lit(run_id).alias("first_run_id"),
        pl.lit(at).cast(pl.Datetime("us", "UTC")).alias("quarantined_at"),
    )
