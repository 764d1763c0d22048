"""What a run did: a rich table for people and one JSON line for machines (cron, logs)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum

from rich.console import Console
from rich.markup import escape
from rich.table import Table


class ExitCode(IntEnum):
    """Exit codes that tell cron what happened (2 is also Typer's own usage error)."""

    success = 0
    failure = 1
    usage = 2  # a bad command line or setting: nothing was run
    partial = 3  # written, but some input rows were quarantined


@dataclass
class SourceCounts:
    rows_read: int = 0
    quarantined: int = 0
    deduplicated: int = 0


@dataclass
class GroupCounts:
    rows_written: int = 0
    inserted: int = 0
    updated: int = 0
    table_version: int | None = None
    online_keys: int | None = None


@dataclass
class RunSummary:
    run_id: str
    command: str
    window: str
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    groups: dict[str, GroupCounts] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    # Where the rolling statistics' lookback before the window came from (days of it).
    lookback_days_from_source: int = 0
    lookback_days_from_store: int = 0

    @property
    def exit_code(self) -> ExitCode:
        if self.error:
            return ExitCode.failure
        if any(s.quarantined for s in self.sources.values()):
            return ExitCode.partial
        return ExitCode.success

    @property
    def status(self) -> str:
        return self.exit_code.name

    def source(self, name: str) -> SourceCounts:
        return self.sources.setdefault(name, SourceCounts())

    def group(self, name: str) -> GroupCounts:
        return self.groups.setdefault(name, GroupCounts())

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"status": self.status}, sort_keys=True, default=str)

    def render(self, console: Console) -> None:
        sources = Table(title=f"{self.command} {self.window}: {self.status} in {self.seconds:.1f}s")
        for column in ("source", "rows read", "quarantined", "deduplicated"):
            sources.add_column(column, justify="right" if column != "source" else "left")
        for name, s in self.sources.items():
            sources.add_row(name, f"{s.rows_read:,}", f"{s.quarantined:,}", f"{s.deduplicated:,}")
        groups = Table()
        for column in (
            "feature group",
            "written",
            "inserted",
            "updated",
            "table version",
            "online keys",
        ):
            groups.add_column(column, justify="right" if column != "feature group" else "left")
        for name, g in self.groups.items():
            groups.add_row(
                name,
                f"{g.rows_written:,}",
                f"{g.inserted:,}",
                f"{g.updated:,}",
                str(g.table_version),
                "-" if g.online_keys is None else f"{g.online_keys:,}",
            )
        console.print(sources)
        console.print(
            f"lookback before the window: {self.lookback_days_from_source} days from the "
            f"source, {self.lookback_days_from_store} from the store"
        )
        console.print(groups)
        if self.error:  # one line, never wrapped: what a log search or an alert shows
            console.print(f"[bold red]error:[/] {escape(self.error)}", soft_wrap=True)
