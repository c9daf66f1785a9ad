"""The federation listener's routes (CONTRACT §6) over orrad's own HTTP server.

:func:`build_federation_router` answers::

    POST /federation/v1/relay                      RelayRequest -> RelayResponse
    GET  /federation/v1/health                     Health
    GET  /federation/v1/agents                     [AgentInfo]
    GET  /federation/v1/sessions?prefix=NS         [SessionInfo]   ("" or absent: all)
    GET  /federation/v1/sessions/detail?namespace=NS   SessionDetail (404 when unknown)

Every request is verified first (:class:`~orrad.federation.signing.Verifier`, over the raw
request target, so the query is signed too); a failure is answered 401 with its code and
nothing else happens: the body is not even decoded. Then, for a relay, the server itself
refuses (so the host never sees them):

- a body that is not a :class:`~orrad.federation.wire.RelayRequest`, an invalid
  namespace, an ``origin`` that differs from the authenticated ``x-orrad-origin``, or
  ``hops`` not ending with it: 400 ``bad_request``;
- a loop (this daemon already in ``hops``, a daemon twice, or more than ``max_hops``
  hops; :func:`~orrad.federation.routing.check_received_hops`): 409 ``loop_detected``.

Everything else is the host's: running the message (and answering a repeated
``(origin, txn_id)`` from its ledger), routing it onward, deciding which sessions it owns.
A :class:`~orrad.federation.errors.FederationError` (or
:class:`~orrad.http.HTTPError`) raised by the host is answered with its status and code
in the CONTRACT §4 shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from orrad.errors import InvalidNamespace
from orrad.federation.errors import FederationError, SignatureError, WireError
from orrad.federation.routing import check_received_hops
from orrad.federation.signing import Verifier, signed_headers
from orrad.federation.wire import (
    PATH_AGENTS,
    PATH_HEALTH,
    PATH_RELAY,
    PATH_SESSION_DETAIL,
    PATH_SESSIONS,
    AgentInfo,
    Health,
    RelayRequest,
    RelayResponse,
    SessionDetail,
    SessionInfo,
    decode,
)
from orrad.http import (
    Handler,
    HTTPError,
    Request,
    Response,
    Router,
    error_response,
    json_response,
)
from orrad.model import Namespace

__all__ = ["MAX_RELAY_BYTES", "FederationHost", "build_federation_router"]

logger = logging.getLogger(__name__)

MAX_RELAY_BYTES: Final = 2 * 1024 * 1024
"""Body limit of ``POST /federation/v1/relay`` (a message is at most 1 MiB of text)."""

_SKEW_HINT = "check that both hosts keep time (NTP)"


class FederationHost(Protocol):
    """What the federation routes need from the daemon.

    Attributes may be plain attributes or properties.
    """

    @property
    def instance(self) -> str:
        """This daemon's instance name."""
        ...

    @property
    def version(self) -> str:
        """The software version shown by ``/federation/v1/health``."""
        ...

    @property
    def max_hops(self) -> int:
        """``federation.max_hops``: relays with more hops are refused (409)."""
        ...

    def agents(self) -> list[AgentInfo]:
        """The agents this daemon offers to peers."""
        ...

    async def relay(self, request: RelayRequest) -> RelayResponse:
        """Run (or route onward) an authenticated, loop-checked relay.

        A repeated ``(request.origin, request.txn_id)`` must return the stored result
        without running the agent again.

        Raises:
            FederationError: a refusal, answered with its status and code (e.g. a peer's
                :class:`~orrad.federation.errors.PeerRejected` passed back unchanged).
        """
        ...

    async def list_sessions(self, prefix: str) -> list[SessionInfo]:
        """Sessions this daemon owns under ``prefix`` (a valid namespace, or ``""``: all);
        whole-segment match including ``prefix`` itself."""
        ...

    async def session_detail(self, namespace: str) -> SessionDetail | None:
        """One owned session (``namespace`` is valid), or ``None`` (answered 404)."""
        ...


AuthedHandler = Callable[[Request, str], Awaitable[Response]]


def build_federation_router(
    host: FederationHost, verifier: Verifier, *, max_relay_bytes: int = MAX_RELAY_BYTES
) -> Router:
    """The routes of the module docstring, each behind ``verifier``.

    Raises:
        ValueError: ``verifier`` checks requests for another instance than ``host``'s.
    """
    if verifier.instance != host.instance:
        raise ValueError(f"verifier is for {verifier.instance!r}, host is {host.instance!r}")

    def authenticated(handler: AuthedHandler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                origin = verifier.verify(request.method, request.target,
                                         signed_headers(request.headers), request.body)
            except SignatureError as exc:
                _log_refusal(request, exc)
                return error_response(401, exc.code, exc.message)
            try:
                return await handler(request, origin)
            except FederationError as exc:
                return error_response(exc.status, exc.code, exc.message)

        return wrapped

    async def relay(request: Request, origin: str) -> Response:
        relay_request = decode(request.body, RelayRequest)
        if relay_request.origin != origin:
            raise WireError(f"origin {relay_request.origin!r} in the body does not match the "
                            f"signed origin {origin!r}")
        _namespace(relay_request.namespace)
        check_received_hops(relay_request.hops, origin=origin, instance=host.instance,
                            max_hops=host.max_hops)
        logger.debug("federation: relay %s from %s for %s", relay_request.txn_id, origin,
                     relay_request.namespace)
        return json_response(200, await host.relay(relay_request))

    async def health(request: Request, origin: str) -> Response:
        return json_response(200, Health(instance=host.instance, status="ok",
                                          version=host.version,
                                          agent_count=len(host.agents())))

    async def agents(request: Request, origin: str) -> Response:
        return json_response(200, host.agents())

    async def sessions(request: Request, origin: str) -> Response:
        prefix = request.query.get("prefix", [""])[0]
        if prefix:
            _namespace(prefix)
        return json_response(200, await host.list_sessions(prefix))

    async def session_detail(request: Request, origin: str) -> Response:
        namespace = request.query.get("namespace", [""])[0]
        if not namespace:
            raise WireError("the namespace query parameter is required")
        _namespace(namespace)
        detail = await host.session_detail(namespace)
        if detail is None:
            raise HTTPError(404, "not_found", f"no session {namespace}")
        return json_response(200, detail)

    router = Router()
    router.add("POST", PATH_RELAY, authenticated(relay), max_body_bytes=max_relay_bytes)
    router.add("GET", PATH_HEALTH, authenticated(health))
    router.add("GET", PATH_AGENTS, authenticated(agents))
    router.add("GET", PATH_SESSIONS, authenticated(sessions))
    router.add("GET", PATH_SESSION_DETAIL, authenticated(session_detail))
    return router


def _namespace(key: str) -> None:
    try:
        Namespace.parse(key)
    except InvalidNamespace as exc:
        raise WireError(str(exc)) from None


def _log_refusal(request: Request, exc: SignatureError) -> None:
    claimed = request.header("x-orrad-origin") or "?"
    if len(claimed) > 128:
        claimed = claimed[:128] + "..."
    if exc.code == "clock_skew":
        logger.warning("federation: clock skew with %r (from %s): %s; %s", claimed,
                       request.client, exc.message, _SKEW_HINT)
    else:
        logger.warning("federation: refused %s %s from %s (origin %r): %s: %s",
                       request.method, request.path, request.client, claimed, exc.code,
                       exc.message)
