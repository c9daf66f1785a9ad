"""The database's worker thread: calls run in it, in order, to their end."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from orrad.state.worker import WorkerThread


async def test_a_call_returns_its_value_or_raises_its_error_in_the_caller() -> None:
    worker = WorkerThread("test-worker")
    try:
        assert await worker.run_sync(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="bad"):
            await worker.run_sync(_raise, ValueError("bad"))
        # The thread survives an error: the next call still runs.
        assert await worker.run_sync(threading.current_thread) is not threading.current_thread()
    finally:
        worker.stop()


async def test_every_call_runs_in_the_same_thread_in_the_order_made() -> None:
    worker = WorkerThread("test-worker")
    seen: list[tuple[int, str]] = []

    def note(i: int) -> None:
        seen.append((i, threading.current_thread().name))

    try:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(worker.run_sync, note, i)
                await trio.testing.wait_all_tasks_blocked()
    finally:
        worker.stop()
    assert seen == [(i, "test-worker") for i in range(20)]


async def test_a_cancelled_caller_waits_for_its_call_then_sees_the_cancellation() -> None:
    worker = WorkerThread("test-worker")
    started, release = threading.Event(), threading.Event()
    steps: list[str] = []

    def blocking() -> str:
        started.set()
        release.wait(10)
        steps.append("call ended")
        return "done"

    async def caller(scope: trio.CancelScope) -> None:
        with scope:
            steps.append(await worker.run_sync(blocking))
            await trio.lowlevel.checkpoint()
            steps.append("not cancelled")  # pragma: no cover - the test fails here

    try:
        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, scope)
            await trio.to_thread.run_sync(started.wait)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert steps == []  # still waiting for the call, although cancelled
            release.set()
        assert steps == ["call ended", "done"]
        assert scope.cancelled_caught
    finally:
        release.set()
        worker.stop()


async def test_stop_ends_the_thread_and_a_later_call_starts_another() -> None:
    worker = WorkerThread("test-worker")
    first = await worker.run_sync(threading.current_thread)
    worker.stop()
    assert not first.is_alive()
    second = await worker.run_sync(threading.current_thread)
    assert second is not first and second.is_alive()
    worker.stop()
    worker.stop()  # stopping a stopped worker does nothing
    assert not second.is_alive()


def _raise(exc: BaseException) -> None:
    raise exc
