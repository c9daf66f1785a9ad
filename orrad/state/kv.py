"""Small durable values per scope (a channel's resume state, cursors), stored as JSON."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from orrad.state.db import Database, transaction

__all__ = ["KeyValueStore"]


class KeyValueStore:
    """``get``/``put``/``delete`` of JSON values under one ``scope`` (e.g. ``discord:bot``)."""

    def __init__(self, db: Database, scope: str) -> None:
        self.db = db
        self.scope = scope

    async def get(self, key: str) -> Any:
        def run(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT value FROM kv WHERE scope = ? AND key = ?",
                               (self.scope, key)).fetchone()
            return None if row is None else msgspec.json.decode(row[0])

        return await self.db.run(run)

    async def put(self, key: str, value: Any) -> None:
        encoded = msgspec.json.encode(value)

        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("INSERT OR REPLACE INTO kv (scope, key, value) VALUES (?, ?, ?)",
                             (self.scope, key, encoded))

        await self.db.run(run)

    async def delete(self, key: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM kv WHERE scope = ? AND key = ?", (self.scope, key))

        await self.db.run(run)
