"""Request coalescing: concurrent calls share batches, each caller gets its own result, failures
reach exactly the callers of the failed batch, and callers that gave up are dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inference_pipeline.coalescing import Coalescer


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()

    async def run(self, key: str, items: list[int]) -> list[int]:
        self.batches.append((key, items))
        if len(self.batches) == 1:
            await self.gate.wait()  # the first batch is "in flight" until the test opens it
        if self.fail_on in items:
            raise RuntimeError(f"batch with {self.fail_on} failed")
        return [item * 10 for item in items]


def test_a_lone_call_runs_at_once() -> None:
    async def scenario() -> int:
        recorder = Recorder()
        recorder.gate.set()
        coalescer = Coalescer(recorder.run, size=lambda _: 1, max_size=8)
        return await coalescer.submit("k", 4)

    assert asyncio.run(scenario()) == 40


def test_calls_arriving_during_a_batch_share_the_next_one_per_key() -> None:
    async def scenario() -> tuple[list[int], list[tuple[str, list[int]]]]:
        recorder = Recorder()
        coalescer = Coalescer(recorder.run, size=lambda _: 1, max_size=8)
        first = asyncio.ensure_future(coalescer.submit("a", 1))
        await asyncio.sleep(0)  # batch [1] in flight
        rest = [asyncio.ensure_future(coalescer.submit("a", i)) for i in (2, 3, 4)]
        other = asyncio.ensure_future(coalescer.submit("b", 5))  # another key: its own batch
        await asyncio.sleep(0)
        recorder.gate.set()
        results = await asyncio.gather(first, *rest, other)
        return results, recorder.batches

    results, batches = asyncio.run(scenario())
    assert results == [10, 20, 30, 40, 50]
    assert ("a", [1]) in batches and ("a", [2, 3, 4]) in batches and ("b", [5]) in batches
    assert len(batches) == 3


def test_batches_stay_under_max_size_but_take_at_least_one_item() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        recorder = Recorder()
        coalescer = Coalescer(recorder.run, size=lambda item: item, max_size=5)
        first = asyncio.ensure_future(coalescer.submit("k", 1))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(coalescer.submit("k", i)) for i in (2, 2, 2, 9)]
        recorder.gate.set()
        await asyncio.gather(first, *queued)
        return recorder.batches

    assert [items for _, items in asyncio.run(scenario())] == [[1], [2, 2], [2], [9]]


def test_a_failed_batch_fails_its_callers_only() -> None:
    async def scenario() -> list[object]:
        recorder = Recorder(fail_on=3)
        coalescer = Coalescer(recorder.run, size=lambda _: 1, max_size=2)
        first = asyncio.ensure_future(coalescer.submit("k", 1))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(coalescer.submit("k", i)) for i in (2, 3, 4)]
        recorder.gate.set()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    first, two, three, four = asyncio.run(scenario())
    assert first == 10 and four == 40  # batches [1], [2, 3], [4]
    assert isinstance(two, RuntimeError) and isinstance(three, RuntimeError)


def test_a_caller_that_gave_up_is_dropped_from_later_batches() -> None:
    async def scenario() -> tuple[list[tuple[str, list[int]]], int]:
        recorder = Recorder()
        coalescer = Coalescer(recorder.run, size=lambda _: 1, max_size=8)
        first = asyncio.ensure_future(coalescer.submit("k", 1))
        await asyncio.sleep(0)
        impatient = asyncio.ensure_future(coalescer.submit("k", 2))
        patient = asyncio.ensure_future(coalescer.submit("k", 3))
        await asyncio.sleep(0)
        impatient.cancel()
        recorder.gate.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await impatient
        return recorder.batches, await patient

    batches, patient = asyncio.run(scenario())
    assert [items for _, items in batches] == [[1], [3]]
    assert patient == 30


class Gated:
    """Each batch waits for its own gate, opened by the test."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []

    async def run(self, key: str, items: list[int]) -> list[int]:
        self.batches.append(items)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [item * 10 for item in items]


def test_up_to_in_flight_batches_run_at_once_and_the_rest_share_the_next() -> None:
    async def scenario() -> tuple[list[list[int]], list[int], int]:
        gated = Gated()
        coalescer = Coalescer(gated.run, size=lambda _: 1, max_size=8, in_flight=2)
        first = asyncio.ensure_future(coalescer.submit("k", 1))
        second = asyncio.ensure_future(coalescer.submit("k", 2))
        await asyncio.sleep(0)
        started_together = len(gated.batches)  # both run: two slots
        rest = [asyncio.ensure_future(coalescer.submit("k", i)) for i in (3, 4, 5)]
        await asyncio.sleep(0)
        assert len(gated.batches) == 2  # no slot free: 3, 4 and 5 wait
        gated.gates[1].set()  # the second batch ends first: its slot takes all that waits
        assert await second == 20
        await asyncio.sleep(0)
        for gate in gated.gates[:1] + gated.gates[2:]:
            gate.set()
        results = await asyncio.gather(first, *rest)
        return gated.batches, results, started_together

    batches, results, started_together = asyncio.run(scenario())
    assert started_together == 2
    assert batches == [[1], [2], [3, 4, 5]]
    assert results == [10, 30, 40, 50]


def test_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="in_flight"):
        Coalescer(Gated().run, size=lambda _: 1, max_size=8, in_flight=0)


def test_a_network_store_gets_two_batches_in_flight_an_in_process_one_one() -> None:
    from types import SimpleNamespace

    from inference_pipeline.service.pipeline import _batches_in_flight

    def access(in_process: bool) -> Any:
        return SimpleNamespace(store=SimpleNamespace(online_reads_in_process=in_process))

    assert _batches_in_flight(access(True)) == 1
    assert _batches_in_flight(access(False)) == 2
