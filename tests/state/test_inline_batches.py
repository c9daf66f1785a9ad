"""Small operations run their statements on the event loop's thread and commit in a worker.

What must hold as before: an operation that fails rolls back alone; a cancelled caller loses
nothing of the others; and the loop never waits for a lock: while another process holds
the write lock, other tasks keep running and the batch commits once the lock is free.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from orrad.errors import StoreError
from orrad.state import Database
from orrad.state.db import DB_FILENAME, _Op, _run_batch, _run_batch_inline


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database.in_state_dir(str(tmp_path / "state"))
    await database.open()
    return database


def put(scope: str, key: str) -> Any:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO kv (scope, key, value) VALUES (?, ?, x'01')", (scope, key))

    return write


async def put_inline(db: Database, scope: str, key: str) -> None:
    await db.run(put(scope, key), inline=True)


def keys(db: Database, scope: str) -> list[str]:
    conn = sqlite3.connect(db.path)
    try:
        return [row[0] for row in conn.execute(
            "SELECT key FROM kv WHERE scope = ? ORDER BY key", (scope,))]
    finally:
        conn.close()


async def test_inline_operations_commit_together_and_one_fails_alone(db: Database) -> None:
    def explode(conn: sqlite3.Connection) -> None:
        put("t", "doomed")(conn)
        raise ValueError("boom")

    errors: list[BaseException] = []

    async def failing() -> None:
        try:
            await db.run(explode, inline=True)
        except ValueError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(put_inline, db, "t", f"k{i:02}")
        nursery.start_soon(failing)
    assert keys(db, "t") == [f"k{i:02}" for i in range(20)]
    assert len(errors) == 1
    await db.close()


@pytest.mark.parametrize("inline", [True, False])
async def test_a_constraint_failure_amid_a_batch_fails_alone(db: Database,
                                                             inline: bool) -> None:
    """No savepoint per operation: the failing one's writes go with the rolled-back
    transaction, the operations before it run again (once more, not twice over) and
    commit with those after it."""
    await db.run(put("u", "taken"))
    runs: list[str] = []

    def counted(key: str) -> Any:
        def write(conn: sqlite3.Connection) -> str:
            runs.append(key)
            put("u", key)(conn)
            return key
        return write

    def clash(conn: sqlite3.Connection) -> None:
        runs.append("clash")
        put("u", "half")(conn)
        put("u", "taken")(conn)  # UNIQUE (scope, key): IntegrityError

    # The batch built by hand, so its order is known (tasks queue in scheduling order).
    batch: list[_Op[Any]] = [_Op(counted("a"), inline), _Op(clash, inline),
                             _Op(counted("b"), inline)]
    conn = db._conn
    assert conn is not None
    if inline:
        await _run_batch_inline(conn, batch, db.path, db._worker)
    else:
        await db._worker.run_sync(_run_batch, conn, batch, db.path)
    a, failed, b = batch
    assert (a.result(), b.result()) == ("a", "b")
    with pytest.raises(StoreError, match="UNIQUE"):
        failed.result()
    assert keys(db, "u") == ["a", "b", "taken"]
    assert runs == ["a", "clash", "a", "b"]  # "a" ran again, without the clash
    assert not conn.in_transaction
    await db.close()


async def test_a_cancelled_inline_caller_does_not_lose_the_others(db: Database) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(put_inline, db, "c", f"k{i}")
        with trio.move_on_after(0):
            await db.run(put("c", "cancelled"), inline=True)
    assert [k for k in keys(db, "c") if k != "cancelled"] == [f"k{i}" for i in range(10)]
    # The database still takes writes (no transaction was left open).
    await db.run(put("c", "after"), inline=True)
    assert "after" in keys(db, "c")
    await db.close()


async def test_a_write_lock_held_elsewhere_never_blocks_the_loop(tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path / "state"))
    await db.open()
    locked, release = threading.Event(), threading.Event()

    def other_process() -> None:  # an operator's sqlite3 holding the write lock
        conn = sqlite3.connect(tmp_path / "state" / DB_FILENAME, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    ticks = 0
    written = trio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async def write() -> None:
        await db.run(put("w", "waited"), inline=True)
        written.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, other_process)
        await trio.to_thread.run_sync(locked.wait)
        nursery.start_soon(ticker)
        nursery.start_soon(write)
        # The write waits for the lock, and the loop goes on meanwhile: the ticker counts
        # on (a loop held by busy_timeout would stop it for 5 s and fail this wait).
        with trio.fail_after(3):
            start = ticks
            while ticks < start + 10:
                await trio.sleep(0.01)
        assert not written.is_set()
        release.set()
        with trio.fail_after(5):
            await written.wait()
        nursery.cancel_scope.cancel()
    assert keys(db, "w") == ["waited"]
    await db.close()


async def test_operations_issued_in_one_scheduling_round_share_one_commit(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first caller lets every task that can run now add its operation before it takes
    the queue: twenty writers started together make one batch (one COMMIT, one fsync),
    not the first alone and the other nineteen after it."""
    import orrad.state.db as db_module

    commits: list[int] = []
    real_commit = db_module._commit

    def counting_commit(conn: sqlite3.Connection, batch: list[Any], path: str) -> None:
        commits.append(len(batch))
        real_commit(conn, batch, path)

    monkeypatch.setattr(db_module, "_commit", counting_commit)
    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(put_inline, db, "round", f"k{index:02d}")
    assert commits == [20]
    assert keys(db, "round") == [f"k{index:02d}" for index in range(20)]
