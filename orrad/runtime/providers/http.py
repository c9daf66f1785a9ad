"""The transport layer under the HTTP providers: one shared client and one guarded POST.

The daemon makes one :class:`~orrad.runtime.providers.pool.ProviderClient` (llhttp on
trio, see :mod:`orrad.http.client` why not httpx) with :func:`make_http_client` and hands
it to every provider.
Embedders and tests may pass an :class:`httpx.AsyncClient` instead. :func:`post` sends one
request under a hard deadline through either and translates every failure into the
:class:`~orrad.errors.ProviderError` tree, so nothing above this module sees an httpx or
h11 exception. Status codes are not judged here; that is
:mod:`orrad.runtime.providers.retry`'s job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import httpx
import trio

from orrad.errors import ProviderError, ProviderUnavailable
from orrad.runtime.providers.pool import ProviderClient

__all__ = [
    "HTTPClient",
    "RawResponse",
    "StackedPoolTransport",
    "make_http_client",
    "make_httpx_client",
    "post",
]

HTTPClient = ProviderClient | httpx.AsyncClient
"""What providers accept: the daemon's lean client, or any httpx client."""

CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 120.0
KEEPALIVE_EXPIRY_S = 30.0


def make_http_client(max_connections: int) -> ProviderClient:
    """Create the client every provider shares.

    Args:
        max_connections: requests in flight at once. httpx's default pool of 100 would
            silently cap how many runs can talk to a provider at once, so the daemon passes
            its concurrency limit.

    Returns:
        A :class:`ProviderClient`: no redirects and no retries of its own (providers retry
        at exactly one layer); each call passes its own deadline.

    Resources:
        The caller owns the client and must ``await client.aclose()`` when done.
    """
    return ProviderClient(max_connections, connect_timeout_s=CONNECT_TIMEOUT_S)


def make_httpx_client(max_connections: int) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` over a :class:`StackedPoolTransport`, for embedders that
    want httpx (proxies from their own transport, event hooks); same limits as
    :func:`make_http_client`."""
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


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A fully read HTTP response: status, headers and body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes


async def post(
    client: HTTPClient,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes,
    timeout_s: float,
) -> RawResponse:
    """POST ``body`` to ``url`` and read the whole response within ``timeout_s`` seconds.

    The deadline covers connecting, sending, waiting and reading the body; httpx's own
    per-phase timeouts and a ``trio.fail_after`` guard both enforce it.

    Raises:
        ProviderUnavailable: a timeout, a refused or dropped connection, or a broken
            response (transient; the retry layer tries again).
        ProviderError: anything retrying cannot fix (bad URL, unsupported scheme).
    """
    if isinstance(client, ProviderClient):
        answer = await client.post(url, headers=headers, body=body, timeout_s=timeout_s)
        return RawResponse(answer.status, answer.headers, answer.body)
    try:
        with trio.fail_after(timeout_s):
            response = await client.post(
                url, content=body, headers=headers, timeout=httpx.Timeout(timeout_s)
            )
    except (trio.TooSlowError, httpx.TimeoutException) as exc:
        raise ProviderUnavailable(f"request timed out after {timeout_s:g}s") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise ProviderUnavailable(f"request failed: {_describe(exc)}") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ProviderError(f"request failed: {_describe(exc)}") from exc
    return RawResponse(response.status_code, response.headers, response.content)


def _describe(exc: Exception) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
