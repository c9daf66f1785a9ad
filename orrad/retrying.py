"""One attempt first, tenacity only once it failed: retries that cost nothing when unused.

Building and driving a tenacity ``AsyncRetrying`` costs ~70 µs of the event loop per call
on these machines, as much as a provider call's own bookkeeping, and almost every call
succeeds at once. :func:`attempt_then_retry` makes the first attempt itself; only a
failure worth retrying builds the retry object, which then sees that failure as its
attempt 1, so numbering, logging and backoff are exactly those of a retried call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying

__all__ = ["attempt_then_retry"]

T = TypeVar("T")


async def attempt_then_retry(attempt: Callable[[], Awaitable[T]], *,
                             retryable: Callable[[Exception], bool],
                             retrying: Callable[[], AsyncRetrying]) -> T:
    """``await attempt()``; when it raises an error ``retryable`` accepts, go on with
    ``retrying()`` (replaying that error as attempt 1). Any other error is raised as is.

    Cancellation: as ``attempt`` and tenacity's sleep; a cancelled attempt is not retried.
    """
    try:
        return await attempt()
    except Exception as exc:
        if not retryable(exc):
            raise
        first_failure: list[Exception] = [exc]

    async def replay_then_attempt() -> T:
        if first_failure:
            raise first_failure.pop()
        return await attempt()

    result: T = await retrying()(replay_then_attempt)
    return result
