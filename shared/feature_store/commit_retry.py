"""Retrying a Delta commit that lost to a concurrent writer.

Delta Lake commits optimistically: two writers of one table (parallel backfill windows, the
stream and a backfill, several service workers' prediction logs) each prepare their files, and
the second to commit is refused with `CommitFailedError` when the first changed what it read
("This transaction's query must be rerun..."). Our writes are upserts keyed by primary key and
event time, so re-running one against the new table version is always correct: the attempt is
re-run from scratch (the table reloaded, the MERGE recomputed) after a bounded, jittered,
exponential back-off, each retry logged. Only when every attempt lost does the write fail, with
one readable line; nothing of it was committed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from deltalake.exceptions import CommitFailedError

from shared.errors import WriteConflict

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CommitRetry:
    """How often, and how patiently, a lost commit is retried."""

    retries: int = 8
    base_s: float = 0.2
    cap_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """'Full jitter' back-off: uniform in [0, min(cap, base * 2^attempt)], so writers that
        collided once do not collide again in lockstep."""
        ceiling = min(self.cap_s, self.base_s * 2**attempt)
        return (rng or random).uniform(0.0, ceiling)


def retry_commit(what: str, attempt: Callable[[], T], policy: CommitRetry) -> T:
    """Run ``attempt`` (one whole write: read the table, compute, commit) until it commits."""
    for n in range(policy.retries + 1):
        try:
            return attempt()
        except CommitFailedError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if n == policy.retries:
                raise WriteConflict(
                    f"{what}: {n + 1} commits in a row lost to concurrent writers ({reason}); "
                    "nothing of this write was committed. Re-run it (writes are idempotent), "
                    "run fewer writers at once, or raise FTI_COMMIT_RETRIES."
                ) from exc
            pause = policy.delay(n)
            log.warning(
                "%s lost to a concurrent commit (%s); retry %d of %d in %.2f s",
                what,
                reason,
                n + 1,
                policy.retries,
                pause,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises
