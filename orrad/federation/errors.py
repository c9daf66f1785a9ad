"""The federation branch of the :class:`~orrad.errors.OrradError` tree.

Every error carries the HTTP ``status`` and the machine ``code`` it is answered with in the
CONTRACT §4 shape ``{"error": {"code", "message"}}``, so a handler can turn any of them into
a response without a lookup table::

    FederationError                   status, code, message
    ├── SignatureError                401; we refused a peer's request (bad_signature,
    │                                 clock_skew, replayed, unknown_peer, wrong_destination)
    ├── LoopDetected                  409 loop_detected; we refused to relay or accept
    ├── UnknownPeer                   400 unknown_agent; ``name@peer`` names no peer
    ├── WireError                     400 bad_request; a body that is not the wire type
    └── PeerError                     talking to peer ``peer`` failed
        ├── PeerRejected              the peer answered 4xx: its status and code, unchanged
        ├── PeerFailed                the peer answered 5xx (after retries): status, code kept
        ├── BadPeerResponse           502 bad_response; a 2xx we could not understand
        └── PeerUnavailable           503 unavailable; no answer at all (connection errors,
            │                         timeouts), naming the peer
            └── CircuitOpen           503 unavailable; the breaker is open, nothing was sent

``PeerError.retryable`` says whether the same request may succeed if sent again (the client
retries those); ``PeerError.unavailable`` says whether the peer should be treated as down
(the ``on_unavailable`` policy applies): true for :class:`PeerUnavailable` and for a 503
from the peer.
"""

from __future__ import annotations

from typing import Final

from orrad.errors import OrradError

__all__ = [
    "AUTH_CODES",
    "BadPeerResponse",
    "CircuitOpen",
    "FederationError",
    "LoopDetected",
    "PeerError",
    "PeerFailed",
    "PeerRejected",
    "PeerUnavailable",
    "SignatureError",
    "UnknownPeer",
    "WireError",
]

AUTH_CODES: Final = frozenset(
    {"bad_signature", "clock_skew", "replayed", "unknown_peer", "wrong_destination"}
)
"""The codes a :class:`SignatureError` (a 401 from the federation listener) may carry."""


class FederationError(OrradError):
    """Base of every federation error; answered as ``status`` with ``{code, message}``.

    Raise it directly (from a host, say) for a refusal no subclass names, e.g.
    ``FederationError(404, "not_found", "no session x")``.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SignatureError(FederationError):
    """A request failed authentication; ``code`` is one of :data:`AUTH_CODES`.

    The message says what was wrong but never echoes a secret or a signature.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in AUTH_CODES:
            raise ValueError(f"not a signature error code: {code!r}")
        super().__init__(401, code, message)


class LoopDetected(FederationError):
    """Relaying (or accepting) the message would pass a daemon twice or exceed ``max_hops``.

    Never retried. The channel that received the message answers 508 ``loop_detected``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(409, "loop_detected", message)


class UnknownPeer(FederationError):
    """``agent: name@peer`` names a peer that is not configured."""

    def __init__(self, agent: str, peer: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(400, "unknown_agent",
                         f"unknown peer {peer!r} in agent {agent!r}; known peers: {listed}")
        self.agent = agent
        self.peer = peer


class WireError(FederationError):
    """A request body that does not decode as the expected wire type."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_request", message)


class PeerError(FederationError):
    """A call to peer ``peer`` failed; see the subclasses for who failed and how."""

    retryable: bool = False
    unavailable: bool = False

    def __init__(self, peer: str, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.peer = peer


class PeerRejected(PeerError):
    """The peer answered a 4xx: ``status`` and ``code`` are the peer's, unchanged.

    Never retried (a 409 ``loop_detected`` or a 401 will not change by asking again).
    ``message`` is the peer's own message.
    """


class PeerFailed(PeerError):
    """The peer answered a 5xx; ``status`` and ``code`` are the peer's, unchanged.

    Retried by the client (the receiver is idempotent per ``txn_id``); raised once the
    retries are spent. A 503 means the peer is down (``unavailable``), any other 5xx that
    it answered (e.g. 502 ``provider_error``: its model failed).
    """

    retryable = True

    def __init__(self, peer: str, status: int, code: str, message: str) -> None:
        super().__init__(peer, status, code, message)
        self.unavailable = status == 503


class BadPeerResponse(PeerError):
    """The peer answered 2xx with a body that is not the expected wire type."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(peer, 502, "bad_response", f"peer {peer!r}: {message}")


class PeerUnavailable(PeerError):
    """No answer from the peer: connection refused or dropped, a timeout, a broken response.

    ``message`` names the peer (CONTRACT §6: the user's 503 ``unavailable`` names it).
    """

    retryable = True
    unavailable = True

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(peer, 503, "unavailable", f"peer {peer!r} is unavailable: {detail}")
        self.detail = detail


class CircuitOpen(PeerUnavailable):
    """The peer's circuit breaker is open: the request was not sent. Not retried."""

    retryable = False

    def __init__(self, peer: str, retry_in_s: float | None, last_error: str | None) -> None:
        when = f"; next probe in {retry_in_s:.1f}s" if retry_in_s is not None else ""
        why = f" (last error: {last_error})" if last_error else ""
        super().__init__(peer, f"circuit open{why}{when}")
        self.retry_in_s = retry_in_s
