"""The replay's journal: what happened so far, so a replay resumes instead of repeating itself.

One JSON file under the replay directory, rewritten whole (temporary file + rename) after each
step that changed the registry, so a killed replay leaves the last consistent journal. A week in
``weeks`` is finished and is never run again; the week in ``current`` was interrupted and is
finished on the next run with the versions it started with (re-scoring a day with the same
version upserts the same rows: nothing is doubled).

Resuming under another plan (other epochs, scorer, windows...) is refused: the history would
mix two experiments.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

from .settings import ReplayPlan

JOURNAL_FILE = "journal.json"


@dataclass
class Journal:
    path: Path
    plan: dict[str, Any]
    started_at: str
    initial: dict[str, Any] | None = None
    weeks: list[dict[str, Any]] = field(default_factory=list)
    current: dict[str, Any] | None = None  # the week in progress
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> its story
    challenger: str | None = None  # the version being shadowed, if any
    last_training_week: int | None = None  # week index of the last training (0: initial)
    runs: list[dict[str, Any]] = field(default_factory=list)  # each invocation: when, how long

    @classmethod
    def open(cls, replay_dir: Path, plan: ReplayPlan) -> Journal:
        path = replay_dir / JOURNAL_FILE
        if not path.is_file():
            return cls(
                path=path,
                plan=plan.model_dump(mode="json"),
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        try:
            data = json.loads(path.read_text())
            saved = ReplayPlan.model_validate(data["plan"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"{path} is not a replay journal ({exc}); choose another --data-root or --fresh"
            ) from exc
        changes = plan.differences(saved)
        if changes:
            raise ConfigurationError(
                f"{path} holds a replay with another plan ({'; '.join(changes)}): resume it with "
                "the same options, or start over with --fresh"
            )
        data.pop("path", None)
        return cls(path=path, **data)

    def finished(self, index: int) -> bool:
        return any(week["index"] == index for week in self.weeks)

    def version(self, number: str) -> dict[str, Any]:
        return self.versions.setdefault(number, {"version": number})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.path)
