"""Conversation sessions and the stores that keep them.

A session is the ordered history of one namespace. Stores key sessions by the namespace's
key string: a namespace is data, never a path. The runtime only ever appends to a session,
so stores may persist just the new tail on ``save``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from orrad.model import Message, Namespace, key_matches_prefix

__all__ = ["MemorySessionStore", "Session", "SessionInfo", "SessionStore"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Session(msgspec.Struct):
    """The stored history of one namespace."""

    namespace: str
    messages: list[Message] = msgspec.field(default_factory=list)
    created_at: datetime = msgspec.field(default_factory=utcnow)
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    def push(self, message: Message) -> None:
        self.messages.append(message)
        self.updated_at = utcnow()


class SessionInfo(msgspec.Struct):
    """One line of a session listing."""

    namespace: str
    message_count: int
    created_at: datetime
    updated_at: datetime


class SessionStore(Protocol):
    """Where sessions live between runs.

    ``save`` is called after every change the runtime makes; implementations must make it
    durable before returning. ``list`` matches ``prefix`` by whole segments and includes the
    prefix's own session.
    """

    async def load(self, namespace: Namespace) -> Session | None: ...

    async def save(self, session: Session) -> None: ...

    async def delete(self, namespace: Namespace) -> bool: ...

    async def list(self, prefix: Namespace | None = None) -> list[SessionInfo]: ...


class MemorySessionStore:
    """A process-local store for tests and embedders; sessions are copied in and out."""

    def __init__(self) -> None:
        self._sessions: dict[str, bytes] = {}

    async def load(self, namespace: Namespace) -> Session | None:
        raw = self._sessions.get(namespace.key)
        return None if raw is None else msgspec.json.decode(raw, type=Session)

    async def save(self, session: Session) -> None:
        self._sessions[session.namespace] = msgspec.json.encode(session)

    async def delete(self, namespace: Namespace) -> bool:
        return self._sessions.pop(namespace.key, None) is not None

    async def list(self, prefix: Namespace | None = None) -> list[SessionInfo]:
        infos = []
        for key in sorted(self._sessions):
            if prefix is None or key_matches_prefix(key, prefix.key):
                session = msgspec.json.decode(self._sessions[key], type=Session)
                infos.append(
                    SessionInfo(key, len(session.messages), session.created_at, session.updated_at)
                )
        return infos
