"""Wire types of the federation API (CONTRACT §6), versioned and tolerant.

Every body is JSON. Decoding is tolerant so daemons of different versions interoperate:
unknown fields are ignored and missing optional fields take their defaults (msgspec's
behaviour without ``forbid_unknown_fields``). Required fields, types and simple bounds are
enforced; a body that breaks them is a :class:`~orrad.federation.errors.WireError` (400
``bad_request``) on the server and a
:class:`~orrad.federation.errors.BadPeerResponse` on the client.

Versioning: the API version is in the path (``/federation/v1/...``); an incompatible
change gets a new path. Within v1, :class:`RelayRequest` and :class:`RelayResponse` carry
``version`` (the envelope revision, :data:`PROTOCOL_VERSION`); later revisions only add
optional fields, so a receiver accepts any revision. ``Health.version`` is the daemon's
software version (CONTRACT §6) and ``Health.protocol`` the envelope revision it speaks.

Errors use the CONTRACT §4 shape ``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, TypeVar

import msgspec

from orrad import safejson
from orrad.federation.errors import WireError
from orrad.model import EPOCH, Message, ToolCall, ToolResult, Usage

__all__ = [
    "PATH_AGENTS",
    "PATH_HEALTH",
    "PATH_RELAY",
    "PATH_SESSIONS",
    "PATH_SESSION_DETAIL",
    "PROTOCOL_VERSION",
    "AgentInfo",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "RelayRequest",
    "RelayResponse",
    "SessionDetail",
    "SessionInfo",
    "SessionMessage",
    "WireUsage",
    "decode",
    "encode",
    "error_body",
]

PROTOCOL_VERSION: Final = 1

PATH_RELAY: Final = "/federation/v1/relay"
PATH_HEALTH: Final = "/federation/v1/health"
PATH_AGENTS: Final = "/federation/v1/agents"
PATH_SESSIONS: Final = "/federation/v1/sessions"
PATH_SESSION_DETAIL: Final = "/federation/v1/sessions/detail"

TxnId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
PeerName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
Text = Annotated[str, msgspec.Meta(max_length=1_048_576)]


class _Wire(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every wire type: unknown fields are skipped on decode."""


class WireUsage(_Wire, frozen=True, kw_only=True):
    """Token counts of a run, as in every reply (CONTRACT §4)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_usage(cls, usage: Usage) -> WireUsage:
        return cls(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                   total_tokens=usage.total_tokens)

    def to_usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)


class RelayRequest(_Wire, frozen=True, kw_only=True):
    """``POST /federation/v1/relay``: run ``message`` in ``namespace`` on the receiver.

    Attributes:
        txn_id: chosen once by the first daemon that relays the message and reused on every
            retry; the receiver answers a repeated ``(origin, txn_id)`` from its ledger.
        origin: the immediate sender (equal to the ``x-orrad-origin`` header).
        hops: every daemon the message passed, the first one first, ending with ``origin``
            (see :func:`orrad.federation.routing.hops_for_relay`).
        agent: the agent the user chose explicitly (a name on the receiver), else ``None``
            and the receiver uses its ``default_agent``.
        metadata: the inbound message's metadata, passed through.
    """

    txn_id: TxnId
    origin: PeerName
    namespace: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    message: Text
    hops: tuple[PeerName, ...] = ()
    agent: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    version: int = PROTOCOL_VERSION


class RelayResponse(_Wire, frozen=True, kw_only=True):
    """The answer to a relay: the reply text, who ran it and what it cost.

    ``instance`` names the daemon that ran the agent (which may be further down the chain
    than the peer that was called).
    """

    txn_id: TxnId
    message: str
    namespace: str
    agent: str | None = None
    instance: str = ""
    usage: WireUsage = msgspec.field(default_factory=WireUsage)
    version: int = PROTOCOL_VERSION


class Health(_Wire, frozen=True, kw_only=True):
    """``GET /federation/v1/health``."""

    instance: str
    status: str = "ok"
    version: str = ""
    agent_count: int = 0
    protocol: int = PROTOCOL_VERSION


class AgentInfo(_Wire, frozen=True, kw_only=True):
    """One item of ``GET /federation/v1/agents``."""

    name: str
    description: str = ""
    model: str | None = None
    instance: str = ""


class SessionInfo(_Wire, frozen=True, kw_only=True):
    """One item of ``GET /federation/v1/sessions?prefix=`` (as ``/v1/sessions``)."""

    namespace: str
    message_count: int = 0
    created_at: datetime = EPOCH
    updated_at: datetime = EPOCH


class SessionMessage(_Wire, frozen=True, kw_only=True):
    """One message of a session detail. ``role`` is a plain string so that a role added
    by a later version still decodes."""

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_results: list[ToolResult] = msgspec.field(default_factory=list)
    timestamp: datetime = EPOCH

    @classmethod
    def from_message(cls, message: Message) -> SessionMessage:
        return cls(role=message.role, content=message.content,
                   tool_calls=list(message.tool_calls),
                   tool_results=list(message.tool_results), timestamp=message.timestamp)


class SessionDetail(_Wire, frozen=True, kw_only=True):
    """``GET /federation/v1/sessions/detail?namespace=``."""

    namespace: str
    messages: list[SessionMessage] = msgspec.field(default_factory=list)


class ErrorDetail(_Wire, frozen=True, kw_only=True):
    code: str
    message: str = ""


class ErrorBody(_Wire, frozen=True, kw_only=True):
    """``{"error": {"code", "message"}}`` (CONTRACT §4)."""

    error: ErrorDetail


def error_body(code: str, message: str) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(code=code, message=message))


_ENCODER = msgspec.json.Encoder()
T = TypeVar("T")


def encode(value: object) -> bytes:
    """JSON bytes of a wire value (Structs, lists of them, builtins)."""
    return _ENCODER.encode(value)


def decode(data: bytes, tp: type[T]) -> T:
    """Decode ``data`` as ``tp`` (a wire Struct or e.g. ``list[AgentInfo]``).

    Raises:
        WireError: not JSON (nested too deep included), or not that shape (the message
            names the bad field).
    """
    try:
        value: T = safejson.decode(data, type=tp)
    except msgspec.DecodeError as exc:
        raise WireError(f"invalid {_name(tp)}: {exc}") from None
    return value


def _name(tp: object) -> str:
    return getattr(tp, "__name__", None) or str(tp)
