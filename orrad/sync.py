"""Taking a trio lock, semaphore or capacity limiter without a trip through the scheduler
when it is free.

trio's ``acquire`` always yields to the scheduler, even when nothing else holds the
resource, so that every async primitive is a checkpoint. The message pipeline takes four
such resources per message (a pending slot, the namespace lock, a run slot, a delivery
slot), almost always free, and every yield costs a scheduling round. :func:`acquire` and
:class:`held` take a free resource at once and wait (with trio's checkpoint semantics)
only when they must. Use them only where the code around reaches real checkpoints anyway
(here: database and network waits), so cancellation is still seen promptly.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

import trio

__all__ = ["Acquirable", "Changes", "acquire", "held"]


class Acquirable(Protocol):
    """What trio's ``Lock``, ``Semaphore`` and ``CapacityLimiter`` have in common."""

    def acquire_nowait(self) -> None: ...

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


async def acquire(resource: Acquirable) -> None:
    """Acquire ``resource``: at once when it is free, else wait for it as trio does."""
    try:
        resource.acquire_nowait()
    except trio.WouldBlock:
        await resource.acquire()


class held:
    """``async with held(resource):`` — hold ``resource`` for the block."""

    __slots__ = ("_resource",)

    def __init__(self, resource: Acquirable) -> None:
        self._resource = resource

    async def __aenter__(self) -> None:
        await acquire(self._resource)

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._resource.release()


class Changes:
    """A wake-up for tasks waiting until some state changes: :meth:`wait` returns after the
    next :meth:`changed`.

    Like replacing a set :class:`trio.Event` with a fresh one on every change, but the
    event exists only while a task waits, so a change nobody waits for (on the pipeline,
    nearly every one) costs an attribute test, not an event built and set.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def changed(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        """Return after the next :meth:`changed` (a checkpoint, like ``Event.wait``)."""
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()
