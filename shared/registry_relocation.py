"""Re-rooting the embedded registry after its data root moved.

The embedded registry (``sqlite:///<data_root>/mlflow.db`` + ``<data_root>/mlartifacts``) stores
absolute artifact locations: the experiment's artifact root, each run's artifact URI and each
model version's source. Copy or restore ``data/`` elsewhere and those still name the old path:
loads read from it (or fail once it is deleted) and new runs write into it. MLflow has no API to
move them, so on open the registry rewrites the old prefix to the configured root's
``mlartifacts`` in those columns of MLflow's own tables, in one SQLite transaction.

It does so only where it is safe to: the embedded default (no tracking URI and no artifact root
configured), an existing database, and artifacts present under the new root (they travelled with
the data). A registry whose artifacts were meant to live elsewhere is left alone.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"
# MLflow's tables and columns that hold artifact locations (stable since MLflow 1.x; the last
# one exists from MLflow 3 on and is skipped where absent).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


@dataclass(frozen=True)
class Relocation:
    old: str
    new: str
    rows: int


def artifact_root_uri(data_root: Path) -> str:
    return (data_root.resolve() / ARTIFACTS_DIR).as_uri()


def reroot(data_root: Path) -> list[Relocation]:
    """Point every artifact location of ``<data_root>/mlflow.db`` that lies under another
    ``.../mlartifacts`` at ``<data_root>/mlartifacts``; returns what was moved (logged)."""
    database = data_root / "mlflow.db"
    if not database.is_file() or not (data_root / ARTIFACTS_DIR).is_dir():
        return []
    new = artifact_root_uri(data_root)
    conn = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        if not _foreign_roots(conn, new):  # the usual case: a read, no lock taken
            return []
        conn.execute("BEGIN IMMEDIATE")  # processes opening the moved root together: one moves
        try:
            moved = [_move(conn, old, new) for old in _foreign_roots(conn, new)]
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:  # not MLflow's schema, or locked for 30 s
        log.warning("registry %s not re-rooted: %s", database, exc)
        return []
    finally:
        conn.close()
    for relocation in moved:
        log.warning(
            "data root moved: %d registry artifact locations re-rooted from %s to %s",
            relocation.rows,
            relocation.old,
            relocation.new,
        )
    return moved


def _foreign_roots(conn: sqlite3.Connection, new: str) -> list[str]:
    """Artifact roots of experiments that are another data root's ``mlartifacts``."""
    suffix = "/" + ARTIFACTS_DIR
    rows = conn.execute("SELECT DISTINCT artifact_location FROM experiments").fetchall()
    return sorted(
        loc
        for (loc,) in rows
        if isinstance(loc, str)
        and loc.startswith("file://")
        and loc.endswith(suffix)
        and loc != new
    )


def _move(conn: sqlite3.Connection, old: str, new: str) -> Relocation:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    rows = 0
    for table, column in LOCATION_COLUMNS:
        if table not in tables:
            continue
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            continue
        # old itself, or anything below it: prefix match without LIKE's wildcards
        rows += conn.execute(
            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
            (new, len(old) + 1, old, len(old) + 1, old + "/"),
        ).rowcount
    return Relocation(old, new, rows)
