"""A state database that cannot be written: the Discord channel stops acknowledging (the
resume point stays before the unstored message), then answers it once the store works.

The state directory is a real 16 MiB tmpfs filled to the last block (the fixture and the
filler of tests/test_storage_full.py; skipped where a tmpfs cannot be mounted).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import trio

from orrad.state import Database
from tests.channels.discord.harness import (
    assert_answered_once,
    fake_discord,
    open_db,
    run_bot,
    until,
)
from tests.channels.discord.test_gateway import posts, send
from tests.test_storage_full import fill, full_disk_dir

__all__ = ["full_disk_dir"]  # the fixture


def saved_seq(db: Database) -> Any:
    """The resume point as stored, read like an outside reader (WAL: not blocked)."""
    conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM kv WHERE scope = 'discord:bot' AND "
                           "key = 'gateway_session'").fetchone()
    finally:
        conn.close()
    return None if row is None else msgspec.json.decode(row[0])["seq"]


async def test_full_store_stops_acknowledging_then_answers_once(full_disk_dir: Path) -> None:
    async with fake_discord() as fake, open_db(full_disk_dir) as db:
        async with run_bot(fake, db) as bot:
            before = await send(fake, "before")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            # The resume point is saved within seq_save_interval_s of the dispatch, not with
            # the answer: wait for it (re-checked at each heartbeat the fake records).
            await until(fake, lambda: saved_seq(db) is not None)
            seq_before = saved_seq(db)
            filler = fill(full_disk_dir)
            during = await send(fake, "during")
            await until(fake, lambda: bot.router.store_error is not None)
            await trio.sleep(0.5)  # several retries of the same message
            assert posts(fake) == ["echo: before"]  # not answered: not stored
            assert saved_seq(db) == seq_before  # and not acknowledged
            filler.unlink()
            await until(fake, lambda: len(fake.messages_posted) == 2, timeout=10)
            await until(fake, lambda: bot.router.store_error is None, timeout=5)
            await trio.sleep(0.2)
            await bot.stop()
        assert posts(fake) == ["echo: before", "echo: during"]
        assert_answered_once(fake, [before, during])
        assert saved_seq(db) > seq_before
