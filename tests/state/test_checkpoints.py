"""WAL checkpoints beside the writer: pages reach the database file without a commit
waiting for them; the thread ends with the database; a failure is logged once."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from orrad.state import Database
from orrad.state.checkpoints import BACKSTOP_FRAMES, START_FRAMES, Checkpointer

BLOB = b"x" * 4000


async def write_blobs(db: Database, start: int, count: int) -> None:
    """One commit of ``count`` rows of 4 KB (two pages each with its overflow)."""
    def write(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO kv (scope, key, value) VALUES ('t', ?, ?)",
                         [(str(i), BLOB) for i in range(start, start + count)])

    await db.run(write, inline=True)


def count_blobs(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM kv WHERE scope = 't'").fetchone()[0])


def _size(path: str) -> int:
    return os.path.getsize(path)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _checkpoint_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("orrad-checkpoint")]


async def test_pages_reach_the_database_file_long_before_the_writers_own_checkpoint(
        tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    try:
        checkpointer = db._checkpointer
        assert checkpointer is not None
        with sqlite3.connect(db.path) as reader:  # the writer's backstop is far away
            assert reader.execute("PRAGMA page_size").fetchone()[0] * BACKSTOP_FRAMES > 30e6
        empty = _size(db.path)
        commits = 0
        while _size(db.path + "-wal") < START_FRAMES * 4200:  # ~60 commits of 80 KB
            await write_blobs(db, commits * 20, 20)
            commits += 1
            assert commits < 500
        for _ in range(20):
            if _size(db.path) >= empty + 2_000_000:
                break
            checkpointer.caught_up.clear()
            checkpointer.poke()
            assert await trio.to_thread.run_sync(checkpointer.caught_up.wait, 10)
        assert _size(db.path) >= empty + 2_000_000
        assert checkpointer.checkpoints >= 1
        assert await db.run(count_blobs) == commits * 20
    finally:
        await db.close()
    assert _checkpoint_threads() == []
    assert not _exists(db.path + "-wal")  # the writer's close checkpointed the rest


async def test_a_wal_below_start_frames_is_left_as_the_writer_wrote_it(tmp_path: Path) -> None:
    """What a lightly used daemon writes stays in its WAL as before (its space is not
    reused early: a full disk shows as soon as the WAL needs a block more)."""
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    try:
        checkpointer = db._checkpointer
        assert checkpointer is not None
        empty = _size(db.path)
        for batch in range(5):
            await write_blobs(db, batch * 10, 10)
            checkpointer.caught_up.clear()
            checkpointer.poke()
            assert await trio.to_thread.run_sync(checkpointer.caught_up.wait, 10)
        assert checkpointer.checkpoints == 0
        assert _size(db.path) == empty
        assert await db.run(count_blobs) == 50
    finally:
        await db.close()


async def test_a_read_only_database_has_no_checkpoint_thread(tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path))
    await db.open()
    await db.close()
    reader = Database.in_state_dir(str(tmp_path), read_only=True)
    await reader.open()
    try:
        assert reader._checkpointer is None and _checkpoint_threads() == []
    finally:
        await reader.close()


async def test_a_failing_checkpoint_is_logged_once(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    junk = tmp_path / "not-a-database"
    junk.write_bytes(b"this is not an SQLite file, whatever its name says" * 100)
    checkpointer = Checkpointer(str(junk), interval_s=0)
    checkpointer.start_frames = 0
    checkpointer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="orrad.state.checkpoints"):
            for _ in range(3):
                checkpointer.caught_up.clear()
                checkpointer.poke()
                assert await trio.to_thread.run_sync(checkpointer.caught_up.wait, 10)
    finally:
        checkpointer.stop()
    failures = [r for r in caplog.records if "checkpoint failed" in r.getMessage()]
    assert len(failures) == 1
    assert checkpointer.checkpoints == 0
    assert _checkpoint_threads() == []
