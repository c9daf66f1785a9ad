"""An HTTP client for channels' own requests, built when the first request needs it.

Building an :class:`httpx.AsyncClient` loads the CA bundle into a new TLS context, about
40 ms of a start on these machines; most daemons never call out from a channel (only
webhook callbacks do), so the daemon hands channels an :class:`OnDemandClient` instead of
a client.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import trio

if TYPE_CHECKING:
    import httpx

__all__ = ["OnDemandClient"]


class OnDemandClient:
    """Makes one client with ``factory`` on the first :meth:`get`; :meth:`aclose` closes it.

    Use as ``async with OnDemandClient(factory) as source:``, then ``source.get()`` for each
    request. ``get`` after ``aclose`` raises :class:`trio.ClosedResourceError`: a client is
    never built again once its owner has let it go.
    """

    def __init__(self, factory: Callable[[], httpx.AsyncClient]) -> None:
        self._factory = factory
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    @property
    def built(self) -> bool:
        """Whether a client has been made (and not closed yet)."""
        return self._client is not None

    def get(self) -> httpx.AsyncClient:
        """The client, made now if this is the first call."""
        if self._closed:
            raise trio.ClosedResourceError("the HTTP client has been closed")
        if self._client is None:
            self._client = self._factory()
        return self._client

    async def aclose(self) -> None:
        """Close the client if one was made; later :meth:`get` calls fail."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()
