"""Concurrent writers of one Delta table: lost commits are retried, never surfaced raw.

delta-rs refuses the second of two conflicting commits with `CommitFailedError` ("This
transaction's query must be rerun..."). The store re-runs the whole write against the table
version that won, with a bounded, jittered back-off; only when every retry lost does the write
fail, with one readable line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake.exceptions import CommitFailedError

from shared.errors import WriteConflict
from shared.feature_definitions import PLANES
from shared.feature_store.commit_retry import CommitRetry, retry_commit
from shared.feature_store.offline_delta import DeltaOfflineStore

pytestmark = pytest.mark.integration
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _planes(first: int, n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "tailnum": [f"N{i}" for i in range(first, first + n)],
            "valid_from": [EPOCH] * n,
            "year_built": [2000] * n,
            "seats": [100] * n,
            "engines": [2] * n,
            "plane_type": ["jet"] * n,
            "manufacturer": ["BOEING"] * n,
            "engine": ["Turbo-fan"] * n,
        }
    )


def _in_threads(count: int, work: Callable[[int], object]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_upserts_into_one_table_all_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offline = DeltaOfflineStore(
        str(tmp_path / "offline"), commit_retry=CommitRetry(retries=20, base_s=0.01, cap_s=0.2)
    )
    offline.register(PLANES)

    def writer(i: int) -> None:
        for j in range(5):
            offline.insert(PLANES, _planes(1000 * i + 10 * j, 10))

    with caplog.at_level(logging.WARNING, logger="shared.feature_store.commit_retry"):
        assert _in_threads(4, writer) == []
    stored = offline.read(PLANES)
    assert stored.height == 4 * 5 * 10  # nothing lost, nothing doubled
    assert stored["tailnum"].n_unique() == stored.height
    retried = [r for r in caplog.records if "lost to a concurrent commit" in r.getMessage()]
    assert retried, "4 writers x 5 merges into one table should have conflicted at least once"
    assert "retry 1 of 20" in retried[0].getMessage()


def test_concurrent_first_registration_does_not_fail(tmp_path: Path) -> None:
    for attempt in range(3):
        root = str(tmp_path / f"offline-{attempt}")
        assert _in_threads(4, lambda _i, root=root: DeltaOfflineStore(root).register(PLANES)) == []
        assert DeltaOfflineStore(root).read(PLANES).is_empty()


def test_a_write_that_loses_every_retry_fails_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def always_conflicts() -> None:
        calls.append(1)
        raise CommitFailedError(
            "Failed to commit transaction: Commit failed: a concurrent transactions added new "
            "data.\nHelp: This transaction's query must be rerun to include the new data."
        )

    with (
        caplog.at_level(logging.WARNING, logger="shared.feature_store.commit_retry"),
        pytest.raises(WriteConflict) as error,
    ):
        retry_commit("upsert into route_stats_v1", always_conflicts, CommitRetry(3, 0.001))
    assert len(calls) == 4  # the first try and three retries
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("upsert into route_stats_v1: 4 commits in a row lost to concurrent")
    assert "a concurrent transactions added new data" in message
    assert len([r for r in caplog.records if "lost to a concurrent commit" in r.getMessage()]) == 3


def test_a_retry_that_wins_returns_its_result() -> None:
    outcomes = iter([CommitFailedError("conflict"), CommitFailedError("conflict"), "committed"])

    def attempt() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_commit("append to x", attempt, CommitRetry(2, 0.001)) == "committed"


def test_back_off_is_bounded_and_jittered() -> None:
    import random

    policy = CommitRetry(retries=8, base_s=0.2, cap_s=10.0)
    rng = random.Random(7)
    delays = [[policy.delay(n, rng) for n in range(12)] for _ in range(50)]
    for n in range(12):
        ceiling = min(10.0, 0.2 * 2**n)
        column = [d[n] for d in delays]
        assert all(0 <= d <= ceiling for d in column)
        assert len(set(column)) > 1  # jittered: colliding writers spread out
