"""Sessions in SQLite: one row per session, one row per message, appended on save."""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from datetime import datetime

import msgspec

from orrad.errors import StoreCorrupt
from orrad.model import Message, Namespace
from orrad.runtime.sessions import Session, SessionInfo
from orrad.state.db import Database, transaction

__all__ = ["SqliteSessionStore", "delete_session", "list_sessions", "load_session"]

_encode = msgspec.json.encode
_decode_message = msgspec.json.Decoder(Message).decode
_decode_metadata = msgspec.json.Decoder(dict).decode


class SqliteSessionStore:
    """A :class:`~orrad.runtime.sessions.SessionStore` in the daemon's database.

    ``save`` writes only the messages the database does not have yet (the runtime only
    appends), so a turn costs O(new messages), not O(history). The most recently used
    ``cache_size`` sessions also stay decoded in memory (write-through: the cache only ever
    holds what was committed), so an active conversation is not decoded from the database
    for every message. This process is the database's only writer, and runs on one
    namespace are serialised, so the cached object is always current.
    """

    def __init__(self, db: Database, *, cache_size: int = 1024) -> None:
        self.db = db
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Session] = OrderedDict()

    async def load(self, namespace: Namespace) -> Session | None:
        key = namespace.key
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        session = await self.db.run(lambda conn: load_session(conn, key))
        if session is not None:
            self._remember(session)
        return session

    async def save(self, session: Session) -> None:
        try:
            # Inline: only the new tail is written (a few rows); see Database.run.
            await self.db.run(lambda conn: _save(conn, session), inline=True)
        except BaseException:
            # The object may now differ from the database: drop it, reload next time.
            self._cache.pop(session.namespace, None)
            raise
        self._remember(session)

    async def replace(self, session: Session) -> None:
        """Save ``session`` whole: its history was rewritten, not only appended to."""
        try:
            await self.db.run(lambda conn: _save(conn, session, rewrite=True))
        except BaseException:
            self._cache.pop(session.namespace, None)
            raise
        self._remember(session)

    def _remember(self, session: Session) -> None:
        self._cache[session.namespace] = session
        self._cache.move_to_end(session.namespace)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def delete(self, namespace: Namespace) -> bool:
        self._cache.pop(namespace.key, None)
        return await self.db.run(lambda conn: delete_session(conn, namespace.key))

    async def list(self, prefix: Namespace | None = None) -> list[SessionInfo]:
        return await self.db.run(lambda conn: list_sessions(conn, prefix))


def load_session(conn: sqlite3.Connection, key: str) -> Session | None:
    row = conn.execute(
        "SELECT created_at, updated_at, metadata FROM sessions WHERE namespace = ?", (key,)
    ).fetchone()
    if row is None:
        return None
    messages = [
        _decode_message(body)
        for (body,) in conn.execute(
            "SELECT body FROM session_messages WHERE namespace = ? ORDER BY seq", (key,)
        )
    ]
    return Session(
        namespace=key,
        messages=messages,
        created_at=_timestamp(row[0]),
        updated_at=_timestamp(row[1]),
        metadata=_decode_metadata(row[2]),
    )


def _timestamp(text: object) -> datetime:
    """A stored ISO timestamp; one that does not parse is a damaged record."""
    try:
        return datetime.fromisoformat(str(text))
    except ValueError as exc:
        raise StoreCorrupt(f"unreadable timestamp {str(text)[:40]!r}") from exc


def _save(conn: sqlite3.Connection, session: Session, *, rewrite: bool = False) -> None:
    key = session.namespace
    with transaction(conn):
        row = conn.execute(
            "SELECT message_count FROM sessions WHERE namespace = ?", (key,)
        ).fetchone()
        stored = 0 if row is None else int(row[0])
        if rewrite or stored > len(session.messages):
            # The history was rewritten (shorter than what is stored): start over.
            conn.execute("DELETE FROM session_messages WHERE namespace = ?", (key,))
            stored = 0
        conn.executemany(
            "INSERT OR REPLACE INTO session_messages (namespace, seq, body) VALUES (?, ?, ?)",
            [(key, seq, _encode(m)) for seq, m in enumerate(session.messages[stored:], stored)],
        )
        # The row's existence is known from the count just read: an UPDATE costs less than
        # an upsert (~5 µs of every message's save).
        if row is None:
            conn.execute(
                "INSERT INTO sessions (namespace, created_at, updated_at, metadata,"
                " message_count) VALUES (?, ?, ?, ?, ?)",
                (key, session.created_at.isoformat(), session.updated_at.isoformat(),
                 _encode(session.metadata), len(session.messages)),
            )
        else:
            conn.execute(
                "UPDATE sessions SET updated_at = ?, metadata = ?, message_count = ?"
                " WHERE namespace = ?",
                (session.updated_at.isoformat(), _encode(session.metadata),
                 len(session.messages), key),
            )


def delete_session(conn: sqlite3.Connection, key: str) -> bool:
    """Remove session ``key`` and its messages; False when there was none."""
    with transaction(conn):
        conn.execute("DELETE FROM session_messages WHERE namespace = ?", (key,))
        return conn.execute("DELETE FROM sessions WHERE namespace = ?", (key,)).rowcount > 0


def list_sessions(conn: sqlite3.Connection, prefix: Namespace | None) -> list[SessionInfo]:
    sql = "SELECT namespace, message_count, created_at, updated_at FROM sessions"
    params: tuple[str, ...] = ()
    if prefix is not None:
        # Whole segments, case-sensitive (LIKE ignores ASCII case): the key itself, or a
        # key starting with "<prefix>:", i.e. in ["<prefix>:", "<prefix>;") since ";"
        # follows ":" in every collation-free (BINARY) comparison. Uses the primary key.
        sql += " WHERE namespace = ? OR (namespace >= ? AND namespace < ?)"
        params = (prefix.key, prefix.key + ":", prefix.key + ";")
    sql += " ORDER BY namespace"
    return [
        SessionInfo(ns, count, _timestamp(c), _timestamp(u))
        for ns, count, c, u in conn.execute(sql, params)
    ]
