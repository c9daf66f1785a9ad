"""httpx under the providers, for embedders and tests that pass an :class:`httpx.AsyncClient`.

Kept apart from :mod:`orrad.runtime.providers.http` so that a daemon on its own client
(:class:`~orrad.runtime.providers.pool.ProviderClient`) never imports httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import trio

from orrad.runtime.providers.pool import CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S, KEEPALIVE_EXPIRY_S

__all__ = ["StackedPoolTransport", "make_httpx_client"]


def make_httpx_client(max_connections: int) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` over a :class:`StackedPoolTransport` (see
    :func:`orrad.runtime.providers.http.make_httpx_client`)."""
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    return httpx.AsyncClient(
        transport=StackedPoolTransport(max_connections),
        timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
        headers={"user-agent": "orrad"},
    )


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its pool back when it is done (closed)."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class StackedPoolTransport(httpx.AsyncBaseTransport):
    """One single-connection pool per request in flight, reused last-in first-out.

    httpcore's pool looks at every one of its connections (and every queued request) each
    time it assigns or releases one, so a single pool of 256 connections spent most of the
    daemon's CPU under a 256-way load just choosing a connection (measured: 85 % of the
    event loop's time with pools of 32). Here choosing is a list pop: each request takes an
    idle single-connection pool (the most recently used, so its connection is warm) or
    makes a new one, and gives it back when its response is closed. At most
    ``max_connections`` requests are in flight; more wait for a pool to come back.
    """

    def __init__(self, max_connections: int) -> None:
        self._slots = trio.Semaphore(max_connections)
        # One TLS context for every pool: building one loads the CA bundle (~17 ms each).
        self._tls = httpx.create_ssl_context()
        self._idle: list[httpx.AsyncHTTPTransport] = []
        self._every: list[httpx.AsyncHTTPTransport] = []

    def _take(self) -> httpx.AsyncHTTPTransport:
        if self._idle:
            return self._idle.pop()
        pool = httpx.AsyncHTTPTransport(verify=self._tls, limits=httpx.Limits(
            max_connections=1, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_EXPIRY_S))
        self._every.append(pool)
        return pool

    def _give_back(self, pool: httpx.AsyncHTTPTransport) -> None:
        self._idle.append(pool)
        self._slots.release()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()
        pool = self._take()
        try:
            response = await pool.handle_async_request(request)
        except BaseException:
            self._give_back(pool)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, lambda: self._give_back(pool))
        return response

    async def aclose(self) -> None:
        pools, self._every, self._idle = self._every, [], []
        for pool in pools:
            await pool.aclose()
