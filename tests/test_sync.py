"""orrad.sync: free resources are taken without a scheduling round; busy ones are waited for;
:class:`Changes` wakes every task waiting at the time of a change, and only those."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from orrad.sync import Changes, acquire, held


async def test_a_free_lock_is_taken_without_yielding() -> None:
    lock = trio.Lock()
    switched = False

    async def other() -> None:
        nonlocal switched
        switched = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)  # would run at the first scheduling round
        async with held(lock):
            assert lock.locked()
            assert not switched
        assert not lock.locked()


async def test_a_busy_limiter_is_waited_for_and_released_on_error() -> None:
    limiter = trio.CapacityLimiter(1)
    order: list[str] = []

    async def second() -> None:
        async with held(limiter):
            order.append("second")

    async with trio.open_nursery() as nursery:
        await acquire(limiter)
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert order == []  # waiting for the slot
        order.append("first")
        limiter.release()
    assert order == ["first", "second"]
    with pytest.raises(ValueError):
        async with held(limiter):
            raise ValueError("boom")
    assert limiter.borrowed_tokens == 0


async def test_changes_wake_the_tasks_waiting_then_and_no_later_waiter() -> None:
    changes = Changes()
    changes.changed()  # nobody waits: nothing is kept for a later waiter
    woken: list[str] = []

    async def waiter(name: str) -> None:
        await changes.wait()
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        changes.changed()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == ["a", "b"]
        nursery.start_soon(waiter, "c")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == ["a", "b"]  # "c" waits for the next change
        changes.changed()
    assert sorted(woken) == ["a", "b", "c"]
