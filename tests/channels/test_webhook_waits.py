"""One timer for every synchronous webhook request's reply timeout (virtual time)."""

from __future__ import annotations

from typing import Any

import trio

from orrad.channels.webhook.waiting import Pending, ReplyWaits
from orrad.errors import StoreError
from orrad.model import Receipt


async def test_each_wait_ends_at_its_own_deadline_or_its_answer(autojump_clock: Any) -> None:
    waits = ReplyWaits(10.0)
    results: dict[str, tuple[bool, float, int, dict[str, Any]]] = {}

    async def one(name: str, start_at: float, answer_at: float | None = None) -> None:
        await trio.sleep_until(start_at)
        pending = Pending()
        pending.recorded(Receipt(True, "1"))  # recorded, runs now: the answer ends the wait
        if answer_at is not None:
            async def answer() -> None:
                await trio.sleep_until(answer_at)
                pending.answer(200, {"name": name})
            nursery.start_soon(answer)
        answered = await waits.wait(pending)
        results[name] = (answered, trio.current_time(), pending.status, pending.body)

    async with trio.open_nursery() as nursery:
        await nursery.start(waits.run)
        nursery.start_soon(one, "a", 0.0)          # never answered
        nursery.start_soon(one, "b", 1.0, 3.0)     # answered after 2 s
        nursery.start_soon(one, "c", 5.0)          # never answered, starts later
        nursery.start_soon(one, "d", 30.0, 31.0)   # after the timer had nothing to do
        nursery.start_soon(one, "e", 40.0, 60.0)   # its answer comes too late
        await trio.sleep(100)
        assert not waits._deadlines  # nothing kept once the waits ended
        nursery.cancel_scope.cancel()
    assert results["a"] == (False, 10.0, 0, {})
    assert results["b"] == (True, 3.0, 200, {"name": "b"})
    assert results["c"] == (False, 15.0, 0, {})
    assert results["d"] == (True, 31.0, 200, {"name": "d"})
    assert results["e"] == (False, 50.0, 0, {})


async def test_the_wait_needs_the_receipt_and_ends_without_an_answer_when_nothing_runs(
        autojump_clock: Any) -> None:
    """An answer (a 'queued' notice) can come before the receipt: the wait still ends only
    once the message is recorded. A receipt saying the message does not run now (a
    repeat, a refusal, a queue) ends it with no answer; one saying it runs does not."""
    waits = ReplyWaits(10.0)
    ended: dict[str, float] = {}

    async def wait(name: str, pending: Pending) -> None:
        assert await waits.wait(pending)
        ended[name] = trio.current_time()

    early, repeat, refused, queued, runs = (Pending() for _ in range(5))
    async with trio.open_nursery() as nursery:
        await nursery.start(waits.run)
        for name, pending in [("early", early), ("repeat", repeat), ("refused", refused),
                              ("queued", queued), ("runs", runs)]:
            nursery.start_soon(wait, name, pending)
        await trio.sleep(1)
        early.answer(202, {"status": "queued"})
        runs.recorded(Receipt(True, "5"))
        await trio.sleep(1)
        assert ended == {}  # the early answer waits for its receipt; "runs" for its reply
        early.recorded(Receipt(True, "1", queued=True))
        repeat.recorded(Receipt(False, "2", "answered"))
        refused.recorded(Receipt(False, error=StoreError("disk full")))
        queued.recorded(Receipt(True, "4", queued=True))
        await trio.sleep(1)
        assert ended == {"early": 2.0, "repeat": 2.0, "refused": 2.0, "queued": 2.0}
        assert (early.status, early.body) == (202, {"status": "queued"})
        assert repeat.status == refused.status == queued.status == 0
        runs.answer(200, {"message": "hi"})
        await trio.sleep(1)
        assert ended["runs"] == 3.0 and runs.status == 200
        nursery.cancel_scope.cancel()
