"""The data orrad moves around: namespaces, messages, usage, and the seed's channel envelopes.

Messages are msgspec Structs so they encode to the state store and the wire without a
hand-written mapping. The JSON form follows orra's: empty ``tool_calls``/``tool_results``
are left out, and a missing timestamp reads as the epoch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from orrad.errors import InvalidNamespace, OrradError

__all__ = [
    "EPOCH",
    "InboundMessage",
    "Message",
    "Namespace",
    "OutboundError",
    "OutboundMessage",
    "Receipt",
    "Role",
    "RunSummary",
    "ToolCall",
    "ToolResult",
    "Usage",
]

SEGMENT_RE = re.compile(r"[A-Za-z0-9_.@+=-]{1,128}")
MAX_SEGMENTS = 16
MAX_KEY_LENGTH = 512


def _check_segment(segment: str) -> str:
    if not isinstance(segment, str) or not SEGMENT_RE.fullmatch(segment):
        raise InvalidNamespace(
            f"invalid namespace segment {segment!r}: use 1-128 characters of "
            "A-Z a-z 0-9 _ . @ + = -"
        )
    if segment in (".", ".."):
        raise InvalidNamespace(f"invalid namespace segment {segment!r}")
    return segment


class Namespace:
    """A key of ``:``-separated segments naming one conversation, e.g. ``discord:1:2:3``.

    ``Namespace("a")`` makes a one-segment namespace and ``child("b")`` appends one; both
    raise :class:`~orrad.errors.InvalidNamespace` (a ``ValueError``) for a segment outside
    CONTRACT §3. Keys from outside go through :meth:`parse`. Instances are immutable and
    compare and hash by their segments.
    """

    # The key is kept, not joined on each use: the pipeline reads it several times for
    # every message (lanes, locks, sessions, deliveries).
    __slots__ = ("_key", "_segments")
    _segments: tuple[str, ...]
    _key: str

    def __init__(self, root: str) -> None:
        self._segments = (_check_segment(root),)
        self._key = root

    @classmethod
    def _from_segments(cls, segments: tuple[str, ...]) -> Namespace:
        for segment in segments:
            _check_segment(segment)
        return cls._from_checked(segments)

    @classmethod
    def _from_checked(cls, segments: tuple[str, ...]) -> Namespace:
        """From ``segments`` each already checked: only their number and length are."""
        if not segments:
            raise InvalidNamespace("a namespace needs at least one segment")
        if len(segments) > MAX_SEGMENTS:
            raise InvalidNamespace(f"namespace has more than {MAX_SEGMENTS} segments")
        if sum(map(len, segments)) + len(segments) - 1 > MAX_KEY_LENGTH:
            raise InvalidNamespace(f"namespace is longer than {MAX_KEY_LENGTH} characters")
        ns = object.__new__(cls)
        ns._segments = segments
        ns._key = ":".join(segments)
        return ns

    @classmethod
    def parse(cls, key: str) -> Namespace:
        """Split ``key`` on every ``:`` and validate each segment."""
        if not isinstance(key, str) or not key:
            raise InvalidNamespace("namespace must be a non-empty string")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidNamespace(f"namespace is longer than {MAX_KEY_LENGTH} characters")
        return cls._from_segments(tuple(key.split(":")))

    def child(self, segment: str) -> Namespace:
        return Namespace._from_checked((*self._segments, _check_segment(segment)))

    def join(self, key: str) -> Namespace:
        """Append every segment of ``key`` (a ``:``-separated relative key); only those
        are checked (this namespace's own were checked when it was made)."""
        return Namespace._from_checked((*self._segments, *Namespace.parse(key)._segments))

    @property
    def key(self) -> str:
        return self._key

    @property
    def segments(self) -> tuple[str, ...]:
        return self._segments

    @property
    def depth(self) -> int:
        return len(self._segments)

    def root(self) -> str:
        return self._segments[0]

    def parent(self) -> Namespace | None:
        if len(self._segments) <= 1:
            return None
        ns = object.__new__(Namespace)
        ns._segments = self._segments[:-1]
        ns._key = ":".join(ns._segments)
        return ns

    def ancestors(self) -> Iterator[Namespace]:
        """Yield the parent, its parent, and so on up to the root (nearest first)."""
        current = self.parent()
        while current is not None:
            yield current
            current = current.parent()

    def is_ancestor_of(self, other: Namespace) -> bool:
        """Strict: a namespace is not its own ancestor."""
        n = len(self._segments)
        return n < len(other._segments) and other._segments[:n] == self._segments

    def is_descendant_of(self, other: Namespace) -> bool:
        return other.is_ancestor_of(self)

    def matches_prefix(self, prefix: Namespace) -> bool:
        """True when ``prefix`` equals this namespace or is an ancestor (whole segments)."""
        return self == prefix or prefix.is_ancestor_of(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and other._segments == self._segments

    def __hash__(self) -> int:
        return hash(self._segments)

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"Namespace.parse({self.key!r})"


def key_matches_prefix(key: str, prefix: str) -> bool:
    """Whole-segment prefix match on raw keys: ``acme`` matches ``acme`` and ``acme:x``."""
    return key == prefix or key.startswith(prefix + ":")


# -- messages ------------------------------------------------------------------------------

Role = Literal["system", "user", "assistant"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class ToolCall(msgspec.Struct, frozen=True):
    """A model's request to run tool ``name`` with JSON ``arguments``."""

    id: str
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResult(msgspec.Struct, frozen=True):
    """The outcome of one tool call; ``content`` is shown to the model."""

    call_id: str
    content: str
    is_error: bool = False


class Message(msgspec.Struct, omit_defaults=True, weakref=True):
    """One chat message. Tool results travel in a ``user`` message with empty content.

    ``run_id`` names the run that added the message to its session (the ledger id of the
    inbound message): a run repeated after a crash finds its own earlier entries by it and
    never appends a second copy. Weak-referenceable so per-message caches (token counts) can
    follow an object's life.
    """

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_results: list[ToolResult] = msgspec.field(default_factory=list)
    timestamp: datetime = EPOCH
    run_id: str | None = None

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", text, timestamp=_now())

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", text, timestamp=_now())

    @classmethod
    def assistant(cls, text: str, tool_calls: list[ToolCall] | None = None) -> Message:
        return cls("assistant", text, tool_calls=list(tool_calls or ()), timestamp=_now())

    @classmethod
    def tool_result(cls, results: list[ToolResult]) -> Message:
        return cls("user", "", tool_results=list(results), timestamp=_now())

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)

    @property
    def has_tool_results(self) -> bool:
        return bool(self.tool_results)


class Usage(msgspec.Struct):
    """Token counts of one provider call or a whole run."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )

    def to_json(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


# -- channel envelopes (seed vocabulary) -----------------------------------------------------


@dataclass
class RunSummary:
    """What a reply says about the run that produced it (not the runtime's whole result).

    ``instance`` names the daemon that ran the agent when it was not this one (a relay).
    """

    agent: str = ""
    total_usage: Usage = field(default_factory=Usage)
    turns: int = 0
    instance: str | None = None


@dataclass
class Receipt:
    """The pipeline's answer to a channel that waits before acknowledging a message.

    ``new`` is false for a ``delivery_id`` recorded before (then ``state`` and, once
    answered, ``reply`` tell what became of it); ``error`` is set when the message could
    not be recorded (the state store is unavailable) and must not be acknowledged.
    ``queued`` says the message will wait for an unavailable federation peer.
    """

    new: bool
    ledger_id: str = ""
    state: str = "received"
    reply: OutboundMessage | OutboundError | None = None
    error: OrradError | None = None
    queued: bool = False  # it will wait for an unavailable federation peer


@dataclass
class InboundMessage:
    """A message a channel received, addressed to ``namespace``.

    ``metadata`` is channel-specific context (thread id, author, ``agent``...) and comes back
    unchanged on the reply. A channel that can be asked again for the same message (a
    webhook retry, a gateway replay) sets ``delivery_id`` (the platform's id, unique per
    channel); the pipeline then records it durably before it counts as received, answers it
    exactly once, and calls ``on_recorded`` with the :class:`Receipt` (so the channel
    acknowledges only what is stored). ``reply_to`` is channel-private routing for the
    answer (a callback URL...): kept in the ledger and handed back on the reply, never
    shown to agents or peers.
    """

    namespace: Namespace
    message: Message
    metadata: dict[str, Any] = field(default_factory=dict)
    delivery_id: str | None = None
    reply_to: dict[str, Any] = field(default_factory=dict)
    on_recorded: Callable[[Receipt], None] | None = field(default=None, repr=False,
                                                          compare=False)
    # Federation: every daemon this message passed before this one, the first one first.
    hops: tuple[str, ...] = ()


@dataclass
class OutboundMessage:
    """The answer to an :class:`InboundMessage`: the final assistant message plus a summary
    of the run. ``delivery_id`` and ``reply_to`` are the inbound message's."""

    namespace: Namespace
    message: Message
    run_result: RunSummary = field(default_factory=RunSummary)
    metadata: dict[str, Any] = field(default_factory=dict)
    delivery_id: str | None = None
    reply_to: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutboundError:
    """A failed run, reported back through the channel that received the message.

    ``code`` is a stable machine-readable reason (``provider_error``, ``unknown_agent``...).
    """

    namespace: Namespace
    error: str
    metadata: dict[str, Any] = field(default_factory=dict)
    code: str = "agent_error"
    delivery_id: str | None = None
    reply_to: dict[str, Any] = field(default_factory=dict)
