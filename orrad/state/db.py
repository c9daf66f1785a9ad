"""One SQLite database per daemon: WAL, one writer, all work off the event loop.

Operations are **group-committed**: every :meth:`Database.run` call joins a queue; one
caller at a time takes the whole queue to a worker thread and runs it as one transaction,
each operation inside its own savepoint (so one failing operation rolls back alone), with a
single ``COMMIT`` (and so a single fsync under ``synchronous=FULL``) for the batch. Under
load, many messages share one thread hop and one fsync instead of paying for their own.
The worker is never abandoned on cancellation: an operation is either committed or not
started, never in an unknown state. WAL keeps outside readers (the ``orrad sessions`` CLI)
unblocked.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from orrad.errors import StoreError

__all__ = ["DB_FILENAME", "Database"]

log = logging.getLogger(__name__)

DB_FILENAME = "orrad.sqlite3"
CACHE_KIB = 64 * 1024
T = TypeVar("T")

# Each entry moves the schema from version i to i+1. Append only; never edit a shipped step.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE sessions (
        namespace TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        metadata BLOB NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE session_messages (
        namespace TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (namespace, seq)
    ) WITHOUT ROWID;
    CREATE TABLE kv (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID;
    """,
    """
    CREATE TABLE inbox (
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        state TEXT NOT NULL,
        payload BLOB NOT NULL,
        reply BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (source, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX inbox_open ON inbox (source, state) WHERE state NOT IN ('delivered', 'failed');
    CREATE INDEX inbox_age ON inbox (created_at);
    """,
    # The ledger replaces the per-channel inbox (one pipeline for every channel).
    """
    DROP TABLE inbox;
    CREATE TABLE ledger (
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        namespace TEXT NOT NULL,
        state TEXT NOT NULL,
        payload BLOB NOT NULL,
        reply BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (source, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX ledger_open ON ledger (source, state) WHERE state IN ('received', 'answered');
    CREATE INDEX ledger_age ON ledger (created_at);
    """,
]


class Database:
    """The daemon's SQLite file, opened with :meth:`open` and closed with :meth:`close`.

    ``read_only`` opens an existing file without creating or migrating it (CLI readers).
    """

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._conn: sqlite3.Connection | None = None
        self._queue: list[_Op[Any]] = []
        self._flushing = False
        self._batch_done = trio.Event()

    @classmethod
    def in_state_dir(cls, state_dir: str, *, read_only: bool = False) -> Database:
        return cls(os.path.join(state_dir, DB_FILENAME), read_only=read_only)

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        try:
            if self.read_only:
                if not os.path.exists(self.path):
                    raise StoreError(f"no state database at {self.path}")
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA busy_timeout = 5000")
            else:
                os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: an acknowledged message must survive power loss, not only a crash.
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
                # The ledger, sessions and their indexes are written for every message: a
                # page cache of 2 MiB (the default) would send most B-tree lookups of a
                # busy daemon to the OS.
                conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                self._migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        for target in range(version + 1, len(MIGRATIONS) + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("state database %s migrated to schema %d", self.path, target)

    async def close(self) -> None:
        while self._flushing:
            await self._batch_done.wait()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await trio.to_thread.run_sync(conn.close)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a worker thread, inside the batch's transaction.

        ``fn`` runs in its own savepoint: if it raises, its changes are rolled back and the
        error is raised here; the others in the batch still commit. :func:`transaction` inside
        ``fn`` is a no-op under a batch. sqlite3 errors become
        :class:`~orrad.errors.StoreError`.
        """
        op: _Op[T] = _Op(fn)
        self._queue.append(op)
        while not op.finished:
            if self._flushing:
                await self._batch_done.wait()
                continue
            await self._flush()
        return op.result()

    async def _flush(self) -> None:
        self._flushing = True
        batch, self._queue = self._queue, []
        try:
            conn = self._conn
            if conn is None:
                for op in batch:
                    op.fail(StoreError("state database is not open"))
                return
            await trio.to_thread.run_sync(_run_batch, conn, batch)
        finally:
            # Operations a cancellation kept from running go back to the front of the queue
            # for the next flusher.
            self._queue[:0] = [op for op in batch if not op.finished]
            self._flushing = False
            done, self._batch_done = self._batch_done, trio.Event()
            done.set()

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking variant for code outside trio (CLI readers)."""
        if self._conn is None:
            self._open_sync()
        assert self._conn is not None
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection.

    Inside an open transaction (a :meth:`Database.run` batch) it does nothing: the batch's
    savepoint gives the operation its all-or-nothing behaviour.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.owner = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.owner = True
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.owner:
            self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


class _Op(Generic[T]):
    """One queued operation and, once run, its outcome."""

    __slots__ = ("error", "finished", "fn", "value")

    def __init__(self, fn: Callable[[sqlite3.Connection], T]) -> None:
        self.fn = fn
        self.finished = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error, self.finished = error, True

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def _run_batch(conn: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
    """Worker thread: the whole batch in one transaction, each op in a savepoint.

    Any SQLite failure of the batch machinery itself (a full disk at COMMIT, an I/O error
    in a savepoint) fails every operation of the batch with a StoreError and always leaves
    the connection outside a transaction, so the next batch starts clean.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                op.value = op.fn(conn)
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                    # SQLite rolled the whole transaction back itself (a full disk, an
                    # I/O error): every operation of the batch is lost, not just this one.
                    raise
                conn.execute("ROLLBACK TO op")
                op.error = StoreError(str(exc)) if isinstance(exc, sqlite3.Error) else exc
            conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("state database: rollback failed")
        for op in batch:
            op.fail(StoreError(f"batch failed: {exc}"))
        return
    for op in batch:
        op.finished = True
