"""Real state databases, then damaged the way disks and bad copies damage them.

The data is written by orrad's own store code (sessions through ``SqliteSessionStore``,
delivered messages through ``Ledger``); the damage is random bytes from a fixed-seed RNG
over whole pages past page 1, so every run damages the same bytes.
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

from orrad.model import Message
from orrad.runtime.sessions import Session
from orrad.state import Database, Ledger, SqliteSessionStore
from orrad.state.db import DB_FILENAME

SEED = 20240601


def namespace(i: int, prefix: str = "webhook:hooks") -> str:
    return f"{prefix}:s{i:03d}"


async def build_state(state_dir: Path, *, sessions: int = 60, messages: int = 6,
                      ledger_entries: int = 0, prefix: str = "webhook:hooks") -> Path:
    """A closed database in ``state_dir`` (closing checkpoints the WAL into the file, so
    every page is where :func:`overwrite_pages` writes); its path."""
    db = Database.in_state_dir(str(state_dir))
    await db.open()
    try:
        store = SqliteSessionStore(db)
        for i in range(sessions):
            session = Session(namespace(i, prefix))
            for j in range(messages):
                session.push(Message.user(f"message {i:03d}.{j} " + "x" * 300))
            await store.save(session)
        ledger = Ledger(db)
        for start in range(0, ledger_entries, 50):
            ids = [f"id-{n:04d}" for n in range(start, min(start + 50, ledger_entries))]
            await ledger.record_many([("hooks", i, namespace(0, prefix),
                                       {"message": {"role": "user", "content": i}})
                                      for i in ids])
            await ledger.settle_many([(("hooks", i), "delivered", None) for i in ids])
    finally:
        await db.close()
    return state_dir / DB_FILENAME


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def table_pages(path: Path, *tables: str) -> list[int]:
    """The (1-based) page numbers of ``tables`` and their indexes, from SQLite's dbstat."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = {name for name, table in conn.execute("SELECT name, tbl_name FROM sqlite_schema")
                 if table in tables}
        pages = sorted({p for name, p in conn.execute("SELECT name, pageno FROM dbstat")
                        if name in names})
    finally:
        conn.close()
    assert pages and 1 not in pages
    return pages


def all_pages(path: Path) -> int:
    return os.path.getsize(path) // page_size(path)


def overwrite_pages(path: Path, pages: list[int], *, seed: int = SEED) -> None:
    """Random bytes over each of ``pages`` (1-based, never page 1: the header survives)."""
    size = page_size(path)
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for page in pages:
            assert page > 1
            f.seek((page - 1) * size)
            f.write(rng.randbytes(size))
        f.flush()
        os.fsync(f.fileno())


def damage_interior(path: Path, *, seed: int = SEED) -> list[int]:
    """Random bytes over one page in four past the first (as a failing disk might)."""
    pages = list(range(2, all_pages(path) + 1, 4))
    overwrite_pages(path, pages, seed=seed)
    return pages


def quick_check(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
