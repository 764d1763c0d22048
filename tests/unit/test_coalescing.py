"""Request coalescing: concurrent calls share batches, each caller gets its own result, failures
reach exactly the callers of the failed batch, and callers that gave up are dropped."""

from __future__ import annotations

import asyncio

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
