"""The service's shutdown is bounded: a dependency whose close hangs is named in the log with
what it waits on, and the steps after it still run (a worker once hung past its supervisor's
60 s with nothing in its log)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

import inference_pipeline.service.runtime as runtime_module
from inference_pipeline.service.metrics import ServiceMetrics
from inference_pipeline.service.runtime import ServiceRuntime
from inference_pipeline.settings import InferenceSettings


def test_a_close_that_hangs_is_named_with_its_stack_and_the_rest_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime_module, "CLOSE_STEP_S", 0.2)
    runtime = ServiceRuntime(InferenceSettings(data_root=tmp_path), ServiceMetrics())
    runtime.downloads.open()
    downloads = runtime.downloads.own
    assert downloads.is_dir()

    async def the_triton_client_never_closes() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(runtime.triton, "close", the_triton_client_never_closes)

    async def shut_down() -> float:
        began = time.monotonic()
        await runtime.close()
        return time.monotonic() - began

    with caplog.at_level(logging.ERROR, logger=runtime_module.__name__):
        took = asyncio.run(shut_down())
    assert took < 2.0
    assert not downloads.exists()  # the step after the hung one ran
    [record] = [r for r in caplog.records if "did not close" in r.getMessage()]
    message = record.getMessage()
    assert "Triton client did not close within 0.2 s" in message
    assert "the_triton_client_never_closes" in message  # the stack says where it waits


def test_a_close_that_fails_is_raised_after_every_other_step_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = ServiceRuntime(InferenceSettings(data_root=tmp_path), ServiceMetrics())
    runtime.downloads.open()
    downloads = runtime.downloads.own

    async def the_triton_client_fails() -> None:
        raise RuntimeError("close failed")

    class PredictionLog:
        def close(self) -> None:
            raise OSError("disk gone")

    class Store:
        closed = False

        async def close(self) -> None:
            self.closed = True

    store = Store()
    monkeypatch.setattr(runtime.triton, "close", the_triton_client_fails)
    monkeypatch.setattr(runtime, "prediction_log", PredictionLog())
    monkeypatch.setattr(runtime, "store", store)
    with (
        caplog.at_level(logging.ERROR, logger=runtime_module.__name__),
        pytest.raises(OSError, match="disk gone"),  # the first failure, in shutdown order
    ):
        asyncio.run(runtime.close())
    assert not downloads.exists() and store.closed  # the steps after both failures ran
    logged = [r.getMessage() for r in caplog.records]
    assert "shutdown: closing the prediction log failed: OSError: disk gone" in logged
    assert "shutdown: closing the Triton client failed: RuntimeError: close failed" in logged


def test_a_close_left_behind_that_fails_later_is_logged_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime_module, "CLOSE_STEP_S", 0.1)
    runtime = ServiceRuntime(InferenceSettings(data_root=tmp_path), ServiceMetrics())
    unretrieved: list[dict[str, object]] = []

    async def the_triton_client_fails_late() -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("closed too late")

    monkeypatch.setattr(runtime.triton, "close", the_triton_client_fails_late)

    async def shut_down_then_stay() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unretrieved.append(c))
        await runtime.close()  # leaves the Triton client behind after 0.1 s
        await asyncio.sleep(0.5)  # the server's loop runs on: the step fails meanwhile

    with caplog.at_level(logging.ERROR, logger=runtime_module.__name__):
        asyncio.run(shut_down_then_stay())
    logged = [r.getMessage() for r in caplog.records]
    assert (
        "shutdown: closing the Triton client failed after it was left behind: "
        "RuntimeError: closed too late" in logged
    )
    assert not unretrieved  # asyncio had no "exception was never retrieved" to report


def test_alias_following_stops_when_cancelled_as_its_registry_call_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shutdown cancels the alias follower; a cancellation that arrives in the same loop
    turn as the registry's answer must still end it. With ``asyncio.wait_for`` around the call
    (Python 3.11) the answer was returned and the cancellation dropped, every time: the loop
    polled on and `BackgroundTasks.close` waited on it."""
    runtime = ServiceRuntime(
        InferenceSettings(data_root=tmp_path, alias_poll_s=0), ServiceMetrics()
    )
    models = runtime.models

    async def on_this_thread(fn, *args):  # type: ignore[no-untyped-def]
        return fn(*args)  # the call answers within the loop turn that made it

    monkeypatch.setattr(asyncio, "to_thread", on_this_thread)
    calls: list[str] = []

    async def follow_then_shut_down() -> bool:
        loop = asyncio.get_running_loop()
        follower = asyncio.ensure_future(models.follow_aliases())

        class Registry:
            def version_for(self, alias: str) -> None:
                calls.append(alias)
                loop.call_soon(follower.cancel)  # the shutdown, as the answer comes back

        models.registry = Registry()  # type: ignore[assignment]
        done, _ = await asyncio.wait({follower}, timeout=1.0)
        follower.cancel()
        return follower in done and follower.cancelled()

    assert asyncio.run(follow_then_shut_down())
    assert calls == ["champion"]
