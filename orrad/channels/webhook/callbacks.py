"""Delivery of asynchronous webhook replies to ``callback_url``: checked, signed, retried.

Each callback is POSTed with the same ``webhook-id`` on every attempt (so the receiver can
deduplicate), retried with full-jitter backoff on connection errors, 408, 425, 429 and 5xx,
and given up after :data:`MAX_ATTEMPTS`. Which callbacks are due is not this module's
business: the pipeline's ledger keeps every answer until :func:`post_callback` returns, and
delivers it again (the same body, the same id) after a restart.

Every attempt resolves the host once (through :class:`CallbackGuard`), checks *every*
address against the channel's :class:`~orrad.channels.webhook.policy.CallbackPolicy`, and
connects to a checked address itself: the request goes to that literal address, with the
original ``Host`` header and, for https, the original name for SNI and the certificate
check. A name that resolves to a refused address (DNS rebinding included) is a final
failure, never sent and never retried. Redirects are not followed and at most
:data:`MAX_RESPONSE_BYTES` of a response are read, under one deadline per attempt.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from orrad.channels.webhook.auth import WebhookAuth
from orrad.channels.webhook.policy import CallbackPolicy, IPAddress, parse_ip
from orrad.errors import ChannelSendError, OrradError
from orrad.metrics import Metrics

if TYPE_CHECKING:
    import httpx  # imported where it is used: most daemons never send a callback

__all__ = ["MAX_ATTEMPTS", "CallbackGuard", "CallbackRefused", "Resolver", "post_callback",
           "shown_url", "system_resolver"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BACKOFF_MULTIPLIER_S = 1.0  # full jitter: uniform(0, min(MAX_WAIT_S, 1 s * 2**n))
MAX_WAIT_S = 60.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RESOLVE_TIMEOUT_S = 10.0
ATTEMPT_TIMEOUT_S = 60.0  # one attempt in all: resolution, every address, the answer
MAX_RESPONSE_BYTES = 64 * 1024  # read (and dropped) so the connection can be reused

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host name, port) -> addresses`` as strings, in the order to try them."""


class _Retryable(OrradError):
    pass


class CallbackRefused(OrradError):
    """A ``callback_url`` the channel's address rules refuse (at intake: 400; at send
    time: a final failure, not retried). The message names the reason, never the URL's
    path, query or userinfo."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (TCP), without duplicates."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def _is_localhost(host: str) -> bool:
    name = host.lower().removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


@dataclass(frozen=True)
class CallbackGuard:
    """A channel's address rules and the name resolution its callbacks use (injectable,
    so tests resolve names offline and deterministically)."""

    policy: CallbackPolicy = field(default_factory=CallbackPolicy)
    resolver: Resolver = system_resolver

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` stands for, each one checked.

        A literal is itself (any ``inet_aton`` spelling); ``localhost`` and
        ``*.localhost`` are 127.0.0.1 and ::1 without asking anyone (RFC 6761); other
        names are resolved once, here.

        Returns:
            The addresses ``callback_allow`` allows, in order (all when it is not set).

        Raises:
            CallbackRefused: one of the addresses is refused by the fixed rules (a name
                that resolves to a refused address among good ones is refused as a
                whole), or ``callback_allow`` allows none of them.
            _Retryable: the name did not resolve (in time).
        """
        literal = parse_ip(host)
        if literal is not None:
            found: list[IPAddress] = [literal]
        elif _is_localhost(host):
            found = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
        else:
            try:
                with trio.fail_after(RESOLVE_TIMEOUT_S):
                    raw = await self.resolver(host, port)
            except (OSError, trio.TooSlowError) as exc:
                raise _Retryable(f"cannot resolve {host}: {exc or 'timed out'}") from None
            found = []
            for text in raw:
                ip = parse_ip(text)
                if ip is None:
                    raise CallbackRefused(f"{host} resolved to {text[:60]!r}, not an address")
                found.append(ip)
            if not found:
                raise _Retryable(f"{host} has no address")
        for ip in found:
            problem = self.policy.address_problem(host, ip)
            if problem is not None:  # one bad address refuses the name as a whole
                raise CallbackRefused(problem)
        allowed = [ip for ip in found if self.policy.allows(host, ip)]
        if not allowed:
            shown = ", ".join(str(ip) for ip in found[:4])
            raise CallbackRefused(f"callback_url host {host!r} resolves to {shown}, not in "
                                  "callback_allow")
        return allowed


def shown_url(url: str) -> str:
    """``url`` as it may be logged: scheme, host and port only (a path or query may hold
    a token, and userinfo a password)."""
    import httpx

    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
    except (httpx.InvalidURL, TypeError, ValueError, UnicodeDecodeError):
        return "(an invalid URL)"


async def post_callback(client: httpx.AsyncClient, auth: WebhookAuth, channel: str,
                        request_id: str, url: str, body: dict[str, Any],
                        guard: CallbackGuard | None = None, *,
                        metrics: Metrics | None = None) -> None:
    """POST ``body`` to ``url`` if ``guard`` (default: the fixed rules only) allows it;
    raise :class:`ChannelSendError` once it failed for good (logged, and counted in
    ``metrics``' ``orrad_webhook_callback_failures_total`` when given)."""
    guard = guard or CallbackGuard()
    payload = msgspec.json.encode(body)
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(MAX_ATTEMPTS),
            wait=wait_random_exponential(multiplier=BACKOFF_MULTIPLIER_S, max=MAX_WAIT_S),
            retry=retry_if_exception_type(_Retryable),
            sleep=trio.sleep,
            reraise=True,
        ):
            with attempt:
                await _attempt(client, auth, guard, channel, request_id, url, payload,
                               attempt.retry_state.attempt_number)
    except OrradError as exc:
        log.error("webhook %s: callback for %s to %s failed for good: %s", channel,
                  request_id, shown_url(url), exc)
        if metrics is not None:
            metrics.callback_failures.labels(channel).inc()
        raise ChannelSendError(f"callback failed: {exc}") from None


async def _attempt(client: httpx.AsyncClient, auth: WebhookAuth, guard: CallbackGuard,
                   channel: str, request_id: str, url: str, payload: bytes,
                   attempt: int) -> None:
    import httpx

    # The intake rules again: the URL may have been stored before they existed, or before
    # a reload changed callback_allow.
    problem = guard.policy.url_problem(url)
    if problem is not None:
        raise CallbackRefused(problem)
    try:
        with trio.fail_after(ATTEMPT_TIMEOUT_S):
            await _post(client, auth, guard, channel, request_id, httpx.URL(url), payload,
                        attempt)
    except trio.TooSlowError:
        log.warning("webhook %s: callback %s attempt %d: no answer within %gs", channel,
                    request_id, attempt, ATTEMPT_TIMEOUT_S)
        raise _Retryable(f"no answer within {ATTEMPT_TIMEOUT_S:g}s") from None


async def _post(client: httpx.AsyncClient, auth: WebhookAuth, guard: CallbackGuard,
                channel: str, request_id: str, url: httpx.URL, payload: bytes,
                attempt: int) -> None:
    import httpx

    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await guard.addresses(host, port)
    headers = [("host", url.netloc.decode("ascii")), ("content-type", "application/json"),
               ("user-agent", "orrad-webhook"), *auth.signature_headers(request_id, payload)]
    # https to a name: the name, not the address, is what the certificate must show.
    extensions = ({"sni_hostname": host.removesuffix(".")}
                  if url.scheme == "https" and parse_ip(host) is None else {})
    failure = "no address"
    for ip in addresses:
        try:
            async with client.stream("POST", url.copy_with(host=str(ip)), content=payload,
                                     headers=headers, extensions=extensions,
                                     follow_redirects=False) as response:
                status = response.status_code
                await _read_some(response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = f"{type(exc).__name__} to {ip}"  # try the next address
            continue
        except httpx.HTTPError as exc:
            log.warning("webhook %s: callback %s attempt %d: %s", channel, request_id,
                        attempt, type(exc).__name__)
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return
        if status in RETRY_STATUSES:
            log.warning("webhook %s: callback %s attempt %d: HTTP %d", channel, request_id,
                        attempt, status)
            raise _Retryable(f"HTTP {status}")
        raise OrradError(f"HTTP {status} (not retried)")
    log.warning("webhook %s: callback %s attempt %d: %s", channel, request_id, attempt,
                failure)
    raise _Retryable(failure)


async def _read_some(response: httpx.Response) -> None:
    """Read the answer's body up to :data:`MAX_RESPONSE_BYTES` (nothing of it is used; a
    longer one is cut off and its connection closed). The status has decided already: a
    body that breaks off only costs the connection."""
    import httpx

    if response.is_stream_consumed:
        return
    read = 0
    try:
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                return
    except (httpx.HTTPError, httpx.StreamError):
        return
