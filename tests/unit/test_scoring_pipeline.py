"""`ScoringPipeline` sends the model call before it builds the input reports, so that the reports
are built while Triton computes, and never leaves a Triton call running for nobody."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from inference_pipeline.service import pipeline as pipeline_module
from inference_pipeline.service.pipeline import ScoringPipeline


class _Inputs:
    """Stands for `OnlineInputs` (one request per batch: no split needed)."""

    def split(self, sizes: list[int]) -> list[_Inputs]:
        assert sizes == [1]
        return [self]


class _TritonClient:
    """Like tritonclient.http.aio on aiohttp: the request is built in the call's first step and
    its body written one loop turn later, by a task of its own."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def infer(self, model: str, version: str, matrices: Any) -> np.ndarray:
        self.events.append("request built")
        await asyncio.sleep(0)
        self.events.append("request sent")
        try:
            await asyncio.sleep(0.01)  # Triton computing
        except asyncio.CancelledError:
            self.events.append("call cancelled")
            raise
        self.events.append("answered")
        return np.array([0.25], dtype=np.float32)


def _pipeline(events: list[str]) -> ScoringPipeline:
    store = SimpleNamespace(store=SimpleNamespace(online_reads_in_process=True))
    triton = SimpleNamespace(client=_TritonClient(events), heal_soon=lambda: None)
    return ScoringPipeline(store, triton)  # type: ignore[arg-type]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []

    def model_inputs(store: Any, model: Any, flights: Any) -> Any:
        log.append("features and MDT")
        return SimpleNamespace(matrices="matrices")

    monkeypatch.setattr(pipeline_module, "model_inputs", model_inputs)
    return log


def _model() -> Any:
    return SimpleNamespace(triton_name="flight_delay", version="3")


def test_the_reports_are_built_while_triton_computes(
    events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def reported_inputs(prepared: Any, model: Any) -> _Inputs:
        events.append("reports")
        return _Inputs()

    monkeypatch.setattr(pipeline_module, "reported_inputs", reported_inputs)
    scores = asyncio.run(_pipeline(events).score(_model(), [{"flight": 1545}]))
    assert scores.probabilities == [0.25]
    assert events == ["features and MDT", "request built", "request sent", "reports", "answered"]


def test_failed_reports_cancel_the_triton_call(
    events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def reported_inputs(prepared: Any, model: Any) -> _Inputs:
        raise ValueError("a report that cannot be built")

    monkeypatch.setattr(pipeline_module, "reported_inputs", reported_inputs)

    async def score() -> None:
        with pytest.raises(ValueError, match="cannot be built"):
            await _pipeline(events).score(_model(), [{"flight": 1545}])
        await asyncio.sleep(0)  # the cancelled call's task runs its last step

    asyncio.run(score())
    assert events[-1] == "call cancelled"
    assert "answered" not in events
