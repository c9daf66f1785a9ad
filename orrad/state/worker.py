"""One long-lived thread for the state database's blocking calls.

:func:`trio.to_thread.run_sync` is general: it takes a capacity limiter token, copies the
context, hands the call to its thread cache and reports back through a fresh closure, all
in Python. Measured here, that costs ~115 µs of the event loop's CPU per call, against
~45 µs for a thread of its own that waits on a queue and reports through the trio token.
The database makes one such call per batch (the ``COMMIT`` and its fsync), and at low
concurrency every message makes two or three batches: the difference is a tenth of a
message's CPU, and as much of its latency.

Every call runs to its end. Like ``trio.to_thread.run_sync`` without
``abandon_on_cancel``, a cancelled caller still waits for it (a batch is either committed
or not started, never in an unknown state), and sees the cancellation at its next
checkpoint.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

__all__ = ["WorkerThread"]

T = TypeVar("T")

# What the thread is given: the call and where to send its outcome, or None to stop.
_Job = tuple[Callable[[], Any], trio.lowlevel.TrioToken, trio.lowlevel.Task]


class WorkerThread:
    """A thread that runs one blocking call at a time for trio tasks, in order.

    It starts with the first call and ends with :meth:`stop`; a daemon thread, so a
    database that was never closed does not keep the interpreter from exiting.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread; its return value, or its exception raised here.

        Not cancellable while it runs (see the module docstring)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        task = trio.lowlevel.current_task()
        self._jobs.put((lambda: fn(*args), trio.lowlevel.current_trio_token(), task))
        result: T = await trio.lowlevel.wait_task_rescheduled(_not_abortable)
        return result

    def stop(self) -> None:
        """Let the thread finish (no call may be running: the caller waited for them)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, token, task = job
            result = outcome.capture(call)
            with contextlib.suppress(trio.RunFinishedError):  # no run left to tell
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)


def _not_abortable(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
