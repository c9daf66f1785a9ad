"""One timer for every synchronous webhook request's reply timeout (virtual time)."""

from __future__ import annotations

from typing import Any

import trio

from orrad.channels.webhook.waiting import Pending, ReplyWaits


async def test_each_wait_ends_at_its_own_deadline_or_its_answer(autojump_clock: Any) -> None:
    waits = ReplyWaits(10.0)
    results: dict[str, tuple[bool, float, int, dict[str, Any]]] = {}

    async def one(name: str, start_at: float, answer_at: float | None = None) -> None:
        await trio.sleep_until(start_at)
        pending = Pending()
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
