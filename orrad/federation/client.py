"""PeerClient: signed calls to peer daemons, with retries and a breaker per peer.

One :class:`PeerClient` serves every peer over one shared ``httpx.AsyncClient`` (see
:func:`make_http_client`); relays, one per message, go over an
:class:`~orrad.http.client.PooledClient` when one is given (a sixth of httpx's CPU per
call). For each call:

- The per-peer :class:`~orrad.federation.breaker.CircuitBreaker` is asked before every
  attempt: open means :class:`~orrad.federation.errors.CircuitOpen` at once, with nothing
  sent. When it grants the half-open probe, a signed ``GET /federation/v1/health`` is that
  probe; only if it succeeds does the call itself go out.
- Every attempt is signed afresh (new timestamp and nonce, so a retry is never refused as
  ``replayed``), but the body is the same bytes: a relay's ``txn_id`` is the caller's and
  is reused on every retry, so the receiver answers a retry from its ledger.
- Connection errors, timeouts and 5xx are retried with full-jitter exponential backoff
  (tenacity ``wait_random_exponential``, sleeping with ``trio.sleep``); every 4xx raises
  :class:`~orrad.federation.errors.PeerRejected` with the peer's status and code
  unchanged (a 409 ``loop_detected`` included) and is never retried.
- The breaker is fed after each attempt: a connection error, timeout or 5xx is a failure;
  any other answer (4xx included: the peer is up) is a success.

Errors (all :class:`~orrad.federation.errors.PeerError`): ``PeerRejected`` (4xx),
``PeerFailed`` (5xx once the retries are spent; status and code kept), ``PeerUnavailable``
(no answer; names the peer), ``CircuitOpen``, ``BadPeerResponse`` (a 2xx we cannot decode).

Cancellation: safe at any point; a cancelled attempt feeds nothing to the breaker (a
cancelled probe frees the probe slot) and is never retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec
import trio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from orrad import safejson
from orrad.config.schema import FederationConfig, PeerConfig
from orrad.federation.breaker import Admission, BreakerStatus, CircuitBreaker
from orrad.federation.errors import (
    BadPeerResponse,
    CircuitOpen,
    PeerError,
    PeerFailed,
    PeerRejected,
    PeerUnavailable,
    WireError,
)
from orrad.federation.signing import Clock, Signer
from orrad.federation.wire import (
    PATH_AGENTS,
    PATH_HEALTH,
    PATH_RELAY,
    PATH_SESSION_DETAIL,
    PATH_SESSIONS,
    AgentInfo,
    ErrorBody,
    Health,
    RelayRequest,
    RelayResponse,
    SessionDetail,
    SessionInfo,
    decode,
    encode,
)
from orrad.http.client import Answer, InvalidRequest, PooledClient, RequestFailed
from orrad.retrying import attempt_then_retry
from orrad.version import __version__

__all__ = [
    "Peer",
    "PeerClient",
    "PeerStatus",
    "RetrySettings",
    "make_http_client",
    "peers_from_config",
]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 5.0
QUERY_TIMEOUT_S: Final = 10.0
"""Deadline of one attempt of a health, agents or sessions call (relays use the peer's
``timeout_s``: they wait for the peer's agent)."""
MAX_ERROR_CHARS: Final = 300

# A peer's error body without the §4 shape still gets a code: the usual one for the status.
_STATUS_CODES: Final = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "timeout", 409: "conflict", 413: "too_large",
    415: "unsupported_media_type", 429: "rate_limited", 500: "internal",
    502: "bad_gateway", 503: "unavailable", 504: "timeout",
}

T = TypeVar("T")

# 5xx codes an orrad peer answers about its own run (its model failed...): the peer is up.
_ALIVE_CODES: Final = frozenset({"provider_error", "max_turns_exceeded", "agent_error",
                                 "internal", "timeout", "expired"})


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as the client needs it: its base URL (``federation.peers[].url``; the
    ``/federation/v1/...`` paths are appended), the secret shared with it, and the deadline
    of one relay attempt (``timeout_s``: it waits for the peer's agent)."""

    name: str
    url: str
    secret: str = field(repr=False)
    timeout_s: float = 120.0

    @classmethod
    def from_config(cls, peer: PeerConfig, default_secret: str) -> Peer:
        """``peer.secret``, or ``default_secret`` (``federation.secret``) when empty."""
        return cls(peer.name, peer.url.rstrip("/"), peer.secret or default_secret,
                   peer.timeout_s)


def peers_from_config(federation: FederationConfig | None) -> list[Peer]:
    """Every configured peer with its effective secret (``[]`` without federation).

    The same secrets verify what the peers send us:
    ``Verifier(instance, {p.name: p.secret for p in peers})``.
    """
    if federation is None:
        return []
    return [Peer.from_config(p, federation.secret) for p in federation.peers]


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How hard one call tries.

    Attributes:
        attempts: attempts in all (1 = no retry).
        backoff_base_s: full-jitter multiplier: retry *n* waits up to
            ``backoff_base_s * 2**n``...
        backoff_max_s: ...but never more than this.
    """

    attempts: int = 4
    backoff_base_s: float = 0.25
    backoff_max_s: float = 5.0


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What ``/v1/status`` shows about one peer (``*_ms`` from the last such call)."""

    name: str
    url: str
    breaker: BreakerStatus
    rtt_ms: float | None
    """Round trip of the last successful health call."""
    last_relay_ms: float | None
    """Duration of the last answered relay (includes the peer's agent run)."""
    last_error: str | None


def make_http_client(
    *, max_connections: int = 64, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> httpx.AsyncClient:
    """The shared client for federation calls: explicit limits and timeouts, no redirects,
    no environment proxies, no transport retries (the :class:`PeerClient` retries).

    Resources:
        The caller owns the client and must ``await client.aclose()``.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(QUERY_TIMEOUT_S, connect=connect_timeout_s, write=10.0,
                              pool=5.0),
        limits=httpx.Limits(max_connections=max_connections,
                            max_keepalive_connections=min(16, max_connections),
                            keepalive_expiry=30.0),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": f"orrad/{__version__}"},
    )


class _PeerState:
    __slots__ = ("breaker", "last_relay_s", "peer", "rtt_s")

    def __init__(self, peer: Peer, breaker: CircuitBreaker) -> None:
        self.peer = peer
        self.breaker = breaker
        self.rtt_s: float | None = None
        self.last_relay_s: float | None = None


class PeerClient:
    """Signed, retried, breaker-guarded calls to the configured peers.

    Args:
        instance: this daemon's instance name (the origin of every request).
        peers: the peers that may be called.
        http: the shared client (see :func:`make_http_client`); not closed by us.
        retry: attempts and backoff per call.
        breaker_factory: makes the breaker of one peer (by name); default
            ``CircuitBreaker(name)`` with its default thresholds.
        clock: unix seconds for the signatures' timestamps.
        connect_timeout_s: connect deadline of each attempt.
        relays: the client relays go over (not closed by us); ``None``: ``http``.
    """

    def __init__(
        self, instance: str, peers: Iterable[Peer], http: httpx.AsyncClient, *,
        retry: RetrySettings | None = None,
        breaker_factory: Callable[[str], CircuitBreaker] = CircuitBreaker,
        clock: Clock = time.time,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        relays: PooledClient | None = None,
    ) -> None:
        self.instance = instance
        self._http = http
        self._relays = relays
        self._retry = retry or RetrySettings()
        self._connect_timeout_s = connect_timeout_s
        self._peers = {p.name: _PeerState(p, breaker_factory(p.name)) for p in peers}
        self._signer = Signer(instance, {p.name: p.secret for p in self._peers_list()},
                              clock=clock)

    def _peers_list(self) -> list[Peer]:
        return [state.peer for state in self._peers.values()]

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    def breaker(self, peer: str) -> CircuitBreaker:
        """The breaker of ``peer`` (for status and a manual ``reset()``).

        Raises:
            KeyError: ``peer`` is not configured.
        """
        return self._peers[peer].breaker

    def status(self, peer: str) -> PeerStatus:
        """A snapshot of ``peer`` for ``/v1/status``.

        Raises:
            KeyError: ``peer`` is not configured.
        """
        state = self._peers[peer]
        snap = state.breaker.status()
        return PeerStatus(
            peer, state.peer.url, snap,
            None if state.rtt_s is None else state.rtt_s * 1000,
            None if state.last_relay_s is None else state.last_relay_s * 1000,
            snap.last_error,
        )

    # -- calls -----------------------------------------------------------------------------

    async def relay(self, peer: str, request: RelayRequest) -> RelayResponse:
        """Relay one message to ``peer`` and return its answer.

        ``request`` is sent as is on every attempt (same ``txn_id``); its ``origin`` must be
        this instance and its ``hops`` must end with it (see
        :func:`~orrad.federation.routing.hops_for_relay`).

        Raises:
            ValueError: ``request`` is not from this instance.
            KeyError: ``peer`` is not configured.
            PeerError: see the module docstring.
        """
        if request.origin != self.instance or not request.hops or \
                request.hops[-1] != self.instance:
            raise ValueError(f"a relay from {self.instance!r} must have origin and last hop "
                             f"{self.instance!r}")
        state = self._peers[peer]
        started = trio.current_time()
        body = encode(request)
        response = await self._call(state, "POST", PATH_RELAY, RelayResponse, body=body,
                                    timeout_s=state.peer.timeout_s, what=f"relay {request.txn_id}")
        if response.txn_id != request.txn_id:
            raise BadPeerResponse(peer, f"answered txn {response.txn_id!r} for "
                                        f"{request.txn_id!r}")
        state.last_relay_s = trio.current_time() - started
        return response

    async def health(self, peer: str) -> Health:
        """``GET /federation/v1/health`` on ``peer``; records the round-trip time.

        While the breaker is open this raises ``CircuitOpen`` without a network attempt;
        when it is half-open, this call is the probe.

        Raises:
            KeyError: ``peer`` is not configured.
            PeerError: see the module docstring.
        """
        return await self._call(self._peers[peer], "GET", PATH_HEALTH, Health,
                                timeout_s=QUERY_TIMEOUT_S, what="health")

    async def agents(self, peer: str) -> list[AgentInfo]:
        """The agents ``peer`` offers (``GET /federation/v1/agents``)."""
        return await self._call(self._peers[peer], "GET", PATH_AGENTS, list[AgentInfo],
                                timeout_s=QUERY_TIMEOUT_S, what="agents")

    async def sessions(self, peer: str, prefix: str = "") -> list[SessionInfo]:
        """Sessions ``peer`` owns under ``prefix`` (``""``: all of them)."""
        return await self._call(self._peers[peer], "GET", PATH_SESSIONS, list[SessionInfo],
                                params={"prefix": prefix}, timeout_s=QUERY_TIMEOUT_S,
                                what="sessions")

    async def session_detail(self, peer: str, namespace: str) -> SessionDetail:
        """One session ``peer`` owns; an unknown one is ``PeerRejected`` 404 ``not_found``."""
        return await self._call(self._peers[peer], "GET", PATH_SESSION_DETAIL, SessionDetail,
                                params={"namespace": namespace}, timeout_s=QUERY_TIMEOUT_S,
                                what="session detail")

    # -- machinery -------------------------------------------------------------------------

    async def _call(
        self, state: _PeerState, method: str, path: str, tp: type[T], *, body: bytes = b"",
        params: dict[str, str] | None = None, timeout_s: float, what: str,
    ) -> T:
        settings = self._retry

        async def attempt() -> T:
            admission = state.breaker.admit()
            if admission is Admission.DENY:
                snap = state.breaker.status()
                raise CircuitOpen(state.peer.name, snap.retry_in_s, snap.last_error)
            if admission is Admission.PROBE and path != PATH_HEALTH:
                logger.info("peer %s: probing health before %s", state.peer.name, what)
                # Success closes the breaker; failure re-opens it and raises.
                await self._exchange(state, "GET", PATH_HEALTH, Health, b"", None,
                                     QUERY_TIMEOUT_S)
            return await self._exchange(state, method, path, tp, body, params, timeout_s)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, PeerError) and exc.retryable

        def retrying() -> AsyncRetrying:
            return AsyncRetrying(
                sleep=trio.sleep,
                stop=stop_after_attempt(max(1, settings.attempts)),
                wait=wait_random_exponential(multiplier=settings.backoff_base_s,
                                             max=settings.backoff_max_s),
                retry=retry_if_exception(retryable),
                before_sleep=lambda retry_state: self._log_retry(state.peer.name, what,
                                                                 retry_state),
                reraise=True,
            )

        return await attempt_then_retry(
            attempt, retrying=retrying,
            retryable=lambda exc: settings.attempts > 1 and retryable(exc))

    async def _exchange(
        self, state: _PeerState, method: str, path: str, tp: type[T], body: bytes,
        params: dict[str, str] | None, timeout_s: float,
    ) -> T:
        """One signed attempt; feeds the breaker with its outcome (or releases it)."""
        peer, breaker = state.peer, state.breaker
        recorded = False
        started = trio.current_time()
        try:
            try:
                if self._relays is not None and method == "POST" and params is None:
                    response = await self._post(peer, path, body, timeout_s)
                else:
                    response = await self._send(peer, method, path, body, params, timeout_s)
            except PeerUnavailable as error:
                breaker.record_failure(error.detail)
                recorded = True
                raise
            status = response.status
            if status >= 500:
                failed = _peer_error(PeerFailed, peer.name, response)
                if failed.code in _ALIVE_CODES:
                    # The peer is up and answered for itself (its agent failed): not a
                    # reason to treat it as down.
                    breaker.record_success()
                else:
                    breaker.record_failure(f"HTTP {status} {failed.code}")
                recorded = True
                raise failed
            breaker.record_success()
            recorded = True
        finally:
            if not recorded:
                breaker.release()
        if path == PATH_HEALTH:
            state.rtt_s = trio.current_time() - started
        if status >= 400:
            rejected = _peer_error(PeerRejected, peer.name, response)
            if status == 401:
                logger.error("peer %s: auth rejected by %s (%s): %s; check the secrets and "
                             "clocks of both daemons", peer.name, peer.name, rejected.code,
                             rejected.message)
            raise rejected
        if not 200 <= status < 300:
            raise BadPeerResponse(peer.name, f"unexpected HTTP {status} for {method} {path}")
        try:
            return decode(response.body, tp)
        except WireError as exc:
            raise BadPeerResponse(peer.name, exc.message) from None

    async def _send(self, peer: Peer, method: str, path: str, body: bytes,
                    params: dict[str, str] | None, timeout_s: float) -> Answer:
        """One signed request through httpx; no answer is :class:`PeerUnavailable`."""
        request = self._http.build_request(
            method, peer.url.rstrip("/") + path, params=params, content=body or None,
            headers={"content-type": "application/json"} if body else None,
            timeout=httpx.Timeout(timeout_s, connect=min(self._connect_timeout_s, timeout_s)),
        )
        target = request.url.raw_path.decode("ascii")
        request.headers.update(self._signer.headers(peer.name, method, target, body))
        try:
            # httpx enforces each phase; this bounds the whole attempt (slow drip too).
            with trio.fail_after(timeout_s + 1):
                response = await self._http.send(request)
        except (trio.TooSlowError, httpx.HTTPError) as exc:
            # Any httpx failure (a broken connection, a body that cannot be decoded) is the
            # peer's failure, never ours to crash on.
            raise PeerUnavailable(peer.name, _describe(exc, timeout_s)) from exc
        return Answer(response.status_code, dict(response.headers), response.content)

    async def _post(self, peer: Peer, path: str, body: bytes, timeout_s: float) -> Answer:
        """One signed POST through the relay client; no answer is :class:`PeerUnavailable`."""
        assert self._relays is not None
        base = peer.url.rstrip("/")
        target = urlsplit(base).path + path
        headers = {"content-type": "application/json",
                   **self._signer.headers(peer.name, "POST", target, body)}
        try:
            return await self._relays.post(base + path, headers=headers, body=body,
                                           timeout_s=timeout_s)
        except RequestFailed as exc:
            detail = f"timed out after {timeout_s:g}s" if exc.timed_out else exc.detail
            raise PeerUnavailable(peer.name, detail) from None
        except InvalidRequest as exc:  # the peer's configured URL cannot be used
            raise PeerUnavailable(peer.name, exc.detail) from None

    def _log_retry(self, peer: str, what: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning("peer %s: %s attempt %d/%d failed: %s; retrying in %.2fs", peer, what,
                       state.attempt_number, self._retry.attempts, exc, delay)


E = TypeVar("E", PeerFailed, PeerRejected)


def _peer_error(cls: type[E], peer: str, response: Answer) -> E:
    """The peer's error, status and code unchanged (a code from the status without a body)."""
    status = response.status
    code = _STATUS_CODES.get(status, f"http_{status}")
    message = (response.body.decode("utf-8", "replace")[:MAX_ERROR_CHARS]
               or f"HTTP {status}")
    try:
        detail = safejson.decode(response.body, type=ErrorBody).error
    except msgspec.DecodeError:
        pass
    else:
        code, message = detail.code or code, detail.message[:MAX_ERROR_CHARS]
    return cls(peer, status, code, message)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, trio.TooSlowError | httpx.TimeoutException):
        return f"timed out after {timeout_s:g}s"
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
