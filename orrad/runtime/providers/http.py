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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, Union

import trio

from orrad.errors import ProviderError, ProviderUnavailable
from orrad.runtime.providers.pool import CONNECT_TIMEOUT_S, ProviderClient

if TYPE_CHECKING:
    import httpx

__all__ = [
    "HTTPClient",
    "RawResponse",
    "make_http_client",
    "make_httpx_client",
    "post",
]

# httpx is named, not imported: a daemon that only uses its own client never imports it.
HTTPClient: TypeAlias = Union[ProviderClient, "httpx.AsyncClient"]
"""What providers accept: the daemon's lean client, or any httpx client."""


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
    """An :class:`httpx.AsyncClient` over a
    :class:`~orrad.runtime.providers.httpx_pool.StackedPoolTransport`, for embedders that
    want httpx (proxies from their own transport, event hooks); same limits as
    :func:`make_http_client`."""
    from orrad.runtime.providers.httpx_pool import make_httpx_client as make

    return make(max_connections)


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
    import httpx  # loaded already: the client is one of its

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
