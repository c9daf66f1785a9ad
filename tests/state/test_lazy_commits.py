"""Operations that need no fsync of their own (``Database.run(..., durable=False)``).

A batch made only of them commits with ``synchronous = NORMAL`` on the event loop's thread,
with SQLite's automatic checkpoint off for that commit (so the loop never copies the WAL).
One durable operation makes its whole batch durable. Afterwards the connection is back to
``synchronous = FULL`` and the backstop checkpoint, whichever way the batch went. What a
lazy commit wrote survives the process being killed (it is in the WAL, in the OS), and the
next durable commit syncs it with its own frames.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from orrad.state import Database
from orrad.state.checkpoints import BACKSTOP_FRAMES

SYNC_NORMAL, SYNC_FULL = 1, 2


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database.in_state_dir(str(tmp_path / "state"))
    await database.open()
    return database


def put_and_read_sync(key: str) -> Callable[[sqlite3.Connection], int]:
    """An operation that writes ``key`` and returns the connection's ``synchronous``."""

    def run(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO kv (scope, key, value) VALUES ('lazy', ?, x'01')", (key,))
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    return run


def settings(db: Database) -> tuple[int, int]:
    def run(conn: sqlite3.Connection) -> tuple[int, int]:
        return (int(conn.execute("PRAGMA synchronous").fetchone()[0]),
                int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))

    return db.run_sync(run)


def stored_keys(db: Database) -> list[str]:
    conn = sqlite3.connect(db.path)
    try:
        return [row[0] for row in conn.execute(
            "SELECT key FROM kv WHERE scope = 'lazy' ORDER BY key")]
    finally:
        conn.close()


async def test_a_lazy_batch_commits_without_fsync_and_without_the_worker(db: Database) -> None:
    level = await db.run(put_and_read_sync("a"), inline=True, durable=False)
    assert level == SYNC_NORMAL
    assert stored_keys(db) == ["a"]  # committed: another connection sees it
    assert db._worker._thread is None  # the COMMIT ran on the loop's thread
    assert settings(db) == (SYNC_FULL, BACKSTOP_FRAMES)
    level = await db.run(put_and_read_sync("b"), inline=True)
    assert level == SYNC_FULL
    assert db._worker._thread is not None  # a durable COMMIT goes to the worker
    await db.close()


async def test_one_durable_operation_makes_its_batch_durable(db: Database) -> None:
    levels: dict[str, int] = {}

    async def put(key: str, durable: bool) -> None:
        levels[key] = await db.run(put_and_read_sync(key), inline=True,
                                   durable=durable)

    async with trio.open_nursery() as nursery:  # started together: one batch
        nursery.start_soon(put, "lazy-1", False)
        nursery.start_soon(put, "durable", True)
        nursery.start_soon(put, "lazy-2", False)
    assert levels == {"lazy-1": SYNC_FULL, "durable": SYNC_FULL, "lazy-2": SYNC_FULL}
    assert stored_keys(db) == ["durable", "lazy-1", "lazy-2"]
    await db.close()


async def test_a_lazy_batch_sent_to_the_worker_by_a_lock_restores_the_settings(
    db: Database,
) -> None:
    holder = sqlite3.connect(db.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, say the CLI's
    levels: list[int] = []

    async def put() -> None:
        levels.append(await db.run(put_and_read_sync("after-lock"), inline=True,
                                   durable=False))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        with trio.fail_after(5):
            while db._worker._thread is None:  # the batch went to the worker, to wait there
                await trio.lowlevel.checkpoint()
        assert levels == []
        holder.execute("ROLLBACK")
    holder.close()
    assert levels == [SYNC_NORMAL]
    assert stored_keys(db) == ["after-lock"]
    assert settings(db) == (SYNC_FULL, BACKSTOP_FRAMES)
    await db.close()


def test_a_lazy_commit_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = textwrap.dedent(f"""
        import os, signal, sqlite3, trio
        from orrad.state import Database

        def put(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO kv (scope, key, value) VALUES ('lazy', 'k', x'01')")

        async def main() -> None:
            db = Database.in_state_dir({str(state)!r})
            await db.open()
            await db.run(put, inline=True, durable=False)
            os.kill(os.getpid(), signal.SIGKILL)

        trio.run(main)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.returncode == -9, done.stderr.decode()
    assert stored_keys(Database.in_state_dir(str(state))) == ["k"]
