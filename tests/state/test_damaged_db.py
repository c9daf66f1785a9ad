"""A damaged or newer state database (issue 10, item 4), at the store level.

Opening refuses a file that fails ``PRAGMA quick_check`` or whose schema is newer than this
orrad's; damage met while running fails the one operation that met it with StoreCorrupt (a
StoreError), never a foreign sqlite3/msgspec error, and never the rest of its batch.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from orrad.errors import StoreCorrupt, StoreError
from orrad.model import Namespace
from orrad.state import Database, KeyValueStore, Ledger, SqliteSessionStore
from orrad.state.db import MIGRATIONS
from orrad.state.sessions import list_sessions, load_session
from tests.state.damage import (
    build_state,
    damage_interior,
    namespace,
    overwrite_pages,
    quick_check,
    table_pages,
)


async def test_a_damaged_file_is_refused_at_open(tmp_path: Path) -> None:
    path = await build_state(tmp_path)
    damage_interior(path)
    assert quick_check(path) != "ok"
    before = path.read_bytes()
    db = Database.in_state_dir(str(tmp_path))
    with pytest.raises(StoreCorrupt) as info:
        await db.open()
    message = str(info.value)
    assert message.startswith(f"storage error: the state database {path} is damaged "
                              "(quick_check: ")
    assert message.endswith("restore it from a backup, or move it away to start with an "
                            "empty state")
    assert "\n" not in message and message.isprintable()
    assert path.read_bytes() == before  # refused, not migrated or written


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = await build_state(tmp_path, sessions=2)
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StoreCorrupt, match="not a database"):
        await Database.in_state_dir(str(tmp_path)).open()
    with pytest.raises(StoreCorrupt, match="not a database"):
        Database.in_state_dir(str(tmp_path), read_only=True).run_sync(
            lambda conn: list_sessions(conn, None))


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_newer_schema_is_refused_naming_both_versions(
    tmp_path: Path, read_only: bool
) -> None:
    path = await build_state(tmp_path, sessions=1)
    newer = len(MIGRATIONS) + 3
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    db = Database.in_state_dir(str(tmp_path), read_only=read_only)
    with pytest.raises(StoreError) as info:
        await db.open()
    assert f"schema version {newer}" in str(info.value)
    assert f"knows ({len(MIGRATIONS)})" in str(info.value)
    with sqlite3.connect(path) as conn:  # left as it was
        assert conn.execute("PRAGMA user_version").fetchone() == (newer,)


async def test_the_current_schema_opens_and_an_older_one_migrates(tmp_path: Path) -> None:
    path = await build_state(tmp_path, sessions=1)
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


async def test_damage_met_while_running_fails_only_that_operation(tmp_path: Path) -> None:
    """A read of a damaged page poisons SQLite's whole transaction (its COMMIT fails with
    'database disk image is malformed'): the write batched with it must still commit."""
    path = await build_state(tmp_path)
    db = Database.in_state_dir(str(tmp_path))
    await db.open()  # passes quick_check: the damage comes after
    try:
        overwrite_pages(path, table_pages(path, "session_messages"))
        store, kv = SqliteSessionStore(db), KeyValueStore(db, "t")
        gate = threading.Event()
        outcomes: dict[str, BaseException | None] = {}

        async def attempt(name: str, fn: Callable[[], Awaitable[object]]) -> None:
            try:
                await fn()
                outcomes[name] = None
            except Exception as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            # Hold the worker so the next two operations are batched together.
            nursery.start_soon(db.run, lambda conn: gate.wait(5))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(attempt, "load", lambda: store.load(Namespace.parse(namespace(3))))
            nursery.start_soon(attempt, "put", lambda: kv.put("after", 1))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert outcomes["put"] is None
        assert isinstance(outcomes["load"], StoreCorrupt)
        assert "database disk image is malformed" in str(outcomes["load"])
        assert await kv.get("after") == 1
        assert len(await store.list()) == 60  # the sessions table is intact
    finally:
        await db.close()


async def test_an_unreadable_record_is_store_corrupt(tmp_path: Path) -> None:
    """Damaged bytes inside a record pass quick_check (SQLite cannot know JSON)."""
    path = await build_state(tmp_path, sessions=3)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE session_messages SET body = x'7b22726f6c65223a' "
                     "WHERE namespace = ? AND seq = 2", (namespace(1),))
        conn.execute("UPDATE sessions SET updated_at = 'yesterday' WHERE namespace = ?",
                     (namespace(2),))
    assert quick_check(path) == "ok"
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    try:
        store = SqliteSessionStore(db)
        with pytest.raises(StoreCorrupt, match="unreadable record"):
            await store.load(Namespace.parse(namespace(1)))
        with pytest.raises(StoreCorrupt, match="unreadable timestamp"):
            await store.list()
        assert await store.load(Namespace.parse(namespace(0))) is not None
    finally:
        await db.close()
    reader = Database.in_state_dir(str(tmp_path), read_only=True)  # the CLI's path
    with pytest.raises(StoreCorrupt, match=f"{path} is damaged"):
        reader.run_sync(lambda conn: load_session(conn, namespace(1)))
    reader.close_sync()


async def test_an_unreadable_ledger_row_is_read_empty_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One damaged ledger row must not make every read of its source fail (recovery would
    never finish): it reads with no payload, and the router drops that message."""
    path = await build_state(tmp_path, sessions=0, ledger_entries=3)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE ledger SET state = 'received', payload = x'00ff' "
                     "WHERE delivery_id = 'id-0001'")
        conn.execute("UPDATE ledger SET state = 'received' WHERE delivery_id = 'id-0002'")
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    try:
        entries = await Ledger(db).open_entries("hooks")
    finally:
        await db.close()
    assert [(e.delivery_id, e.payload == {}) for e in entries] == [
        ("id-0001", True), ("id-0002", False)]
    [record] = [r for r in caplog.records if "id-0001" in r.getMessage()]
    assert record.levelno == logging.ERROR and "damaged" in record.getMessage()
