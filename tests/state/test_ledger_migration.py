"""Schema 4: the ledger, kept by (source, delivery_id) until schema 3, moves to id order
with every row, state and reply kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from orrad.state import Database, Ledger
from orrad.state.db import DB_FILENAME, MIGRATIONS

ROWS = [  # id, source, delivery_id, state, reply: ids not in key order, as senders choose ids
    (1, "hooks", "zz-first", "delivered", {"content": "one"}),
    (2, "hooks", "aa-second", "received", None),
    (3, "api", "mm-third", "answered", {"content": "three"}),
    (5, "hooks", "bb-fifth", "received", None),  # 4 was given to a repeat: never stored
    (6, "hooks", "cc-sixth", "failed", None),
]


def schema_3_database(state_dir: Path) -> Path:
    """A database as orrad left it at schema 3, written with plain sqlite3."""
    path = state_dir / DB_FILENAME
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for step in MIGRATIONS[:3]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 3")
        for id_, source, delivery_id, state, reply in ROWS:
            conn.execute(
                "INSERT INTO ledger (source, delivery_id, id, namespace, state, payload, reply,"
                " created_at, updated_at) VALUES (?, ?, ?, 'webhook:hooks:a', ?, ?, ?, ?, ?)",
                (source, delivery_id, id_, state,
                 msgspec.json.encode({"message": {"role": "user", "content": delivery_id}}),
                 None if reply is None else msgspec.json.encode(reply),
                 1000.0 + id_, 2000.0 + id_))
        conn.execute("INSERT INTO kv (scope, key, value) VALUES ('orrad', 'ledger_last_id', "
                     "'9')")
    finally:
        conn.close()
    return path


async def test_every_row_survives_the_move_to_id_order(tmp_path: Path) -> None:
    path = schema_3_database(tmp_path)
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    try:
        ledger = Ledger(db)
        stored = [await ledger.get(source, delivery_id)
                  for _, source, delivery_id, _, _ in ROWS]
        assert [(e.id, e.source, e.delivery_id, e.state, e.reply) for e in stored if e] == ROWS
        for entry in stored:
            assert entry is not None
            assert entry.payload == {"message": {"role": "user", "content": entry.delivery_id}}
            assert (entry.created_at, entry.updated_at) == (1000.0 + entry.id,
                                                            2000.0 + entry.id)
        assert [e.delivery_id for e in await ledger.open_entries("hooks")] == [
            "aa-second", "bb-fifth"]
        assert [e.delivery_id for e in await ledger.open_entries("api")] == ["mm-third"]

        # A repeat is still known by its key; a new message follows the high-water mark.
        new, existing = await ledger.record("hooks", "zz-first", "webhook:hooks:a", {})
        assert not new and existing.id == 1 and existing.state == "delivered"
        new, entry = await ledger.record("hooks", "dd-new", "webhook:hooks:a", {})
        assert new and entry.id == 11  # 10 went to the repeat just refused
        await ledger.settle_many([(("hooks", "aa-second"), "delivered", {"content": "two"})])
        settled = await ledger.get("hooks", "aa-second")
        assert settled is not None and settled.state == "delivered"
        assert settled.reply == {"content": "two"}
    finally:
        await db.close()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(ledger)")}
        assert {"ledger_open", "ledger_age"} <= indexes
        # Rows are stored in id order (the point of the move): a rowid table keyed by id.
        assert [row[0] for row in conn.execute("SELECT rowid FROM ledger")] == [
            1, 2, 3, 5, 6, 11]
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'ledger_by_id'"
                            ).fetchone() is None
    finally:
        conn.close()
