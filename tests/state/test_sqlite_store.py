"""SQLite sessions: round trips, incremental saves, prefix listing, restart survival."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from orrad import Message, Namespace
from orrad.errors import StoreError
from orrad.model import ToolCall, ToolResult
from orrad.runtime.sessions import MemorySessionStore, Session, SessionStore
from orrad.state import Database, SqliteSessionStore


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database.in_state_dir(str(tmp_path / "state"))
    await database.open()
    return database


def stores(db: Database) -> list[SessionStore]:
    return [SqliteSessionStore(db), MemorySessionStore()]


async def test_round_trip_with_tool_messages(db: Database) -> None:
    for store in stores(db):
        ns = Namespace.parse("company:engineering:team:alice:support")
        assert await store.load(ns) is None
        session = Session(ns.key)
        session.push(Message.user("hi"))
        session.push(Message.assistant("", [ToolCall("c1", "f", {"a": [1, 2]})]))
        session.push(Message.tool_result([ToolResult("c1", "out", True)]))
        await store.save(session)
        loaded = await store.load(ns)
        assert loaded is not None
        assert loaded.messages == session.messages
        assert loaded.created_at == session.created_at


async def test_incremental_save_appends_and_overwrite_keeps_count(db: Database) -> None:
    store = SqliteSessionStore(db)
    ns = Namespace("acme")
    session = Session(ns.key)
    session.push(Message.user("1"))
    await store.save(session)
    session.push(Message.assistant("2"))
    await store.save(session)
    await store.save(session)
    loaded = await store.load(ns)
    assert loaded is not None and [m.content for m in loaded.messages] == ["1", "2"]


async def test_list_by_whole_segment_prefix_includes_prefix_itself(db: Database) -> None:
    for store in stores(db):
        for key in ["acme", "acme:alice", "acme:bob:x", "acmeother:bob", "acm_e:x"]:
            session = Session(key)
            session.push(Message.user("x"))
            await store.save(session)
        listed = [i.namespace for i in await store.list(Namespace("acme"))]
        assert listed == ["acme", "acme:alice", "acme:bob:x"]
        assert [i.namespace for i in await store.list(Namespace("acm_e"))] == ["acm_e:x"]
        assert len(await store.list()) == 5
        assert (await store.list(Namespace("acme")))[0].message_count == 1


async def test_delete(db: Database) -> None:
    for store in stores(db):
        ns = Namespace("gone")
        assert await store.delete(ns) is False
        await store.save(Session(ns.key, [Message.user("x")]))
        assert await store.delete(ns) is True
        assert await store.load(ns) is None


async def test_namespace_is_data_not_a_path(db: Database, tmp_path: Path) -> None:
    store = SqliteSessionStore(db)
    ns = Namespace.parse("a:b.c:d..e")
    await store.save(Session(ns.key, [Message.user("x")]))
    assert await store.load(ns) is not None
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if p.suffix == ".sqlite3") == [
        "orrad.sqlite3"]


async def test_survives_reopen(tmp_path: Path) -> None:
    first = Database.in_state_dir(str(tmp_path))
    await first.open()
    await SqliteSessionStore(first).save(Session("x", [Message.user("persist")]))
    await first.close()
    second = Database.in_state_dir(str(tmp_path))
    await second.open()
    loaded = await SqliteSessionStore(second).load(Namespace("x"))
    assert loaded is not None and loaded.messages[0].content == "persist"
    await second.close()


async def test_read_only_open_of_missing_database_fails_cleanly(tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path / "nothing"), read_only=True)
    with pytest.raises(StoreError, match="no state database"):
        await db.open()


async def test_closed_database_raises_store_error(tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path))
    with pytest.raises(StoreError):
        await SqliteSessionStore(db).load(Namespace("x"))


async def test_group_commit_isolates_a_failing_operation(db: Database) -> None:
    from orrad.state import KeyValueStore

    kv = KeyValueStore(db, "t")

    def explode(conn: Any) -> None:
        conn.execute("INSERT INTO kv (scope, key, value) VALUES ('t', 'doomed', x'00')")
        raise ValueError("boom")

    errors: list[BaseException] = []

    async def failing() -> None:
        try:
            await db.run(explode)
        except ValueError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(kv.put, f"k{i}", i)
        nursery.start_soon(failing)
    assert [await kv.get(f"k{i}") for i in range(20)] == list(range(20))
    assert await kv.get("doomed") is None
    assert len(errors) == 1


async def test_cancelled_caller_does_not_lose_other_operations(db: Database) -> None:
    from orrad.state import KeyValueStore

    kv = KeyValueStore(db, "c")
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(kv.put, f"k{i}", i)
        with trio.move_on_after(0):
            await kv.put("cancelled", 1)
    assert [await kv.get(f"k{i}") for i in range(10)] == list(range(10))
