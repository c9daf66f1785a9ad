"""Synchronous webhook requests waiting for their replies, and their one timer.

Every synchronous request waits up to ``reply_timeout_s`` for its answer. A trio cancel
scope per request (``move_on_after``) cost ~4% of the event loop under load; all waits
have the same timeout, so their deadlines come in the order the waits start, and one task
sleeping until the oldest deadline times them out exactly. Waits are kept in an
insertion-ordered dict (removed as soon as they end), so the oldest is its first entry and
the memory is what is in flight.
"""

from __future__ import annotations

from typing import Any

import trio

from orrad.model import Receipt

__all__ = ["Pending", "ReplyWaits"]


class Pending:
    """A synchronous request waiting for its reply (``status`` and ``body`` once set).

    The wait ends once the pipeline's receipt is in and either says the message does not
    run now (a repeat, a refusal, a queue) or the reply came (a notice that the message
    is queued can come before the receipt), or when the timer ends it.
    """

    __slots__ = ("body", "done", "receipt", "status", "timed_out")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = 0
        self.body: dict[str, Any] = {}
        self.timed_out = False
        self.receipt: Receipt | None = None

    def answer(self, status: int, body: dict[str, Any]) -> None:
        """Give the waiting request its answer (the first answer or timeout wins)."""
        if self.status == 0 and not self.done.is_set():
            self.status, self.body = status, body
            if self.receipt is not None:
                self.done.set()

    def recorded(self, receipt: Receipt) -> None:
        """The pipeline's receipt (an ``on_recorded`` callback)."""
        self.receipt = receipt
        if (receipt.error is not None or not receipt.new or receipt.queued
                or self.status != 0):
            self.done.set()


class ReplyWaits:
    """Waits of ``timeout_s`` each, timed out by :meth:`run` (start it with
    ``nursery.start``; the waits need it running)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._deadlines: dict[Pending, float] = {}
        self._first = trio.Event()  # set when a wait starts while none is in progress

    async def wait(self, pending: Pending) -> bool:
        """Wait for ``pending``'s answer: True once it has one, False when ``timeout_s``
        passed first."""
        if not self._deadlines:
            self._first.set()
        self._deadlines[pending] = trio.current_time() + self.timeout_s
        try:
            await pending.done.wait()
        finally:
            self._deadlines.pop(pending, None)
        return not pending.timed_out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Time out every wait whose deadline passes, until cancelled."""
        task_status.started()
        while True:
            if not self._deadlines:
                self._first = trio.Event()
                await self._first.wait()
                continue
            pending, deadline = next(iter(self._deadlines.items()))
            if deadline > trio.current_time():
                # Later waits have later deadlines; one that ends meanwhile only makes
                # this wake early for nothing.
                await trio.sleep_until(deadline)
                continue
            del self._deadlines[pending]
            if not pending.done.is_set():
                pending.timed_out = True
                pending.done.set()
