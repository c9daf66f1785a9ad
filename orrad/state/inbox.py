"""The inbox: every accepted inbound message, keyed by its source's delivery id.

A row is written (and committed with ``synchronous=FULL``) before the sender is told the
message was accepted, so a retry of the same delivery id never runs the agent twice, even
across a restart, and messages accepted but unanswered when the process died can be found
again. States move ``received -> answered -> delivered`` (or ``failed`` when the answer could
not be delivered).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Literal

import msgspec

from orrad.state.db import Database, transaction

__all__ = ["Inbox", "InboxEntry", "InboxState"]

InboxState = Literal["received", "answered", "delivered", "failed"]
OPEN_STATES: tuple[InboxState, ...] = ("received", "answered")

_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class InboxEntry(msgspec.Struct):
    source: str
    delivery_id: str
    namespace: str
    state: InboxState
    payload: dict[str, Any]
    reply: dict[str, Any] | None
    created_at: float
    updated_at: float


def _row(row: tuple[Any, ...]) -> InboxEntry:
    source, delivery_id, namespace, state, payload, reply, created, updated = row
    return InboxEntry(source, delivery_id, namespace, state, _decode(payload),
                      None if reply is None else _decode(reply), created, updated)


_COLUMNS = "source, delivery_id, namespace, state, payload, reply, created_at, updated_at"


class Inbox:
    """Durable record of accepted messages, on the daemon's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, source: str, delivery_id: str, namespace: str, payload: dict[str, Any]
    ) -> tuple[bool, InboxEntry]:
        """Record a new delivery; returns ``(True, entry)``, or ``(False, existing)`` for a
        delivery id this source already used."""

        def run(conn: sqlite3.Connection) -> tuple[bool, InboxEntry]:
            now = time.time()
            with transaction(conn):
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM inbox WHERE source = ? AND delivery_id = ?",
                    (source, delivery_id),
                ).fetchone()
                if row is not None:
                    return False, _row(row)
                conn.execute(
                    f"INSERT INTO inbox ({_COLUMNS}) VALUES (?, ?, ?, 'received', ?, NULL, ?, ?)",
                    (source, delivery_id, namespace, _encode(payload), now, now),
                )
            return True, InboxEntry(source, delivery_id, namespace, "received", payload, None,
                                    now, now)

        return await self.db.run(run)

    async def record(
        self, source: str, delivery_id: str, state: InboxState,
        reply: dict[str, Any] | None = None,
    ) -> None:
        """Move a delivery to ``state``, storing ``reply`` when given."""

        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if reply is None:
                    conn.execute(
                        "UPDATE inbox SET state = ?, updated_at = ? WHERE source = ? AND "
                        "delivery_id = ?", (state, time.time(), source, delivery_id))
                else:
                    conn.execute(
                        "UPDATE inbox SET state = ?, reply = ?, updated_at = ? WHERE source = ? "
                        "AND delivery_id = ?",
                        (state, _encode(reply), time.time(), source, delivery_id))

        await self.db.run(run)

    async def get(self, source: str, delivery_id: str) -> InboxEntry | None:
        def run(conn: sqlite3.Connection) -> InboxEntry | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE source = ? AND delivery_id = ?",
                (source, delivery_id),
            ).fetchone()
            return None if row is None else _row(row)

        return await self.db.run(run)

    async def open_entries(self, source: str) -> list[InboxEntry]:
        """Deliveries of ``source`` not yet delivered or failed, oldest first."""

        def run(conn: sqlite3.Connection) -> list[InboxEntry]:
            return [_row(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE source = ? AND state IN (?, ?) "
                "ORDER BY created_at, delivery_id", (source, *OPEN_STATES))]

        return await self.db.run(run)

    async def purge(self, older_than_s: float) -> int:
        """Forget finished deliveries older than ``older_than_s`` seconds."""
        cutoff = time.time() - older_than_s

        def run(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                return conn.execute(
                    "DELETE FROM inbox WHERE created_at < ? AND state IN ('delivered', 'failed')",
                    (cutoff,)).rowcount

        return await self.db.run(run)
