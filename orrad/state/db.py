"""One SQLite database per daemon: WAL, one writer, all work off the event loop.

Operations are **group-committed**: every :meth:`Database.run` call joins a queue; one
caller at a time takes the whole queue to the database's worker thread
(:class:`~orrad.state.worker.WorkerThread`) and runs it as one transaction with a single
``COMMIT`` (and so a single fsync under ``synchronous=FULL``). An operation that fails has
its changes undone alone: the transaction is rolled back and the others run again without
it (failures are rare; a savepoint per operation cost two statements each). Under
load, many messages share one thread hop and one fsync instead of paying for their own.
The worker is never abandoned on cancellation: an operation is either committed or not
started, never in an unknown state. WAL keeps outside readers (the ``orrad sessions`` CLI)
unblocked.

Small operations (``inline=True``: a few indexed statements, nothing unbounded) run their
statements on the event loop's thread, and only the ``COMMIT`` (the fsync) goes to the
worker. In a worker, every sqlite3 call gives the GIL up and must win it back from the busy
event loop: a dozen small operations took milliseconds that way, on the loop they take
microseconds. The loop never waits for a lock there: a write lock held by another process
(the ``orrad`` CLI, an operator's ``sqlite3``) sends the batch to the worker, which waits
for it within ``busy_timeout``.

An operation may say its changes need no fsync of their own (``durable=False``): the
record of a message whose sender learns of it only from its answer, which reaches the
sender after a durable commit. A batch made only of such operations commits with
``synchronous = NORMAL`` on the event loop's thread (writing the WAL, ~0.1 ms, against ~1 ms
for the worker's round trip and the fsync on this kind of disk), with SQLite's automatic
checkpoint off for that commit so the loop never copies the WAL. What it wrote survives the
process being killed (it is in the OS's cache), and the next durable commit's fsync of the
WAL covers it, since the WAL is written in order; only a power failure before that commit
can lose it, and then nobody was told of it. One durable operation makes its whole batch
durable.

A caller may act on an operation's result before its commit (``on_executed``): the
statements of an inline batch run on the event loop's thread, and the ``COMMIT`` then takes
a round trip to the worker. The caller learns the result once every statement of the batch
ran (the batch will commit unless the ``COMMIT`` itself fails) and gets a handle to the
operation (:class:`Committed`). Writes that must not outlive a failed commit of that
operation run under :meth:`Database.after`: each is refused (``StoreError``) unless the
operation committed, which is known when it runs, since batches run one after another. The
pipeline starts a message's run this way once its ledger row is written, not once it is
committed (orrad/router.py).

A database this orrad must not use is refused when it is opened: one written by a newer
orrad (its ``user_version`` is past the last migration here), or, for the daemon, one that
fails ``PRAGMA quick_check`` (run on a connection of its own, so the check does not fill
the daemon's page cache). Damage found later, while running (SQLite's ``SQLITE_CORRUPT`` /
``SQLITE_NOTADB``, a stored record that no longer decodes), fails the operation that met
it with :class:`~orrad.errors.StoreCorrupt`, a :class:`~orrad.errors.StoreError`: callers
answer it like any store failure (503), and the other operations of its batch still run.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import trio

from orrad.errors import StoreCorrupt, StoreError
from orrad.state.checkpoints import BACKSTOP_FRAMES, Checkpointer
from orrad.state.worker import WorkerThread
from orrad.version import __version__

__all__ = ["DB_FILENAME", "Committed", "Database", "is_corruption", "store_error"]

log = logging.getLogger(__name__)

DB_FILENAME = "orrad.sqlite3"
CACHE_KIB = 64 * 1024
BUSY_TIMEOUT_MS = 5000
T = TypeVar("T")
# SQLite's primary result codes (extended codes keep them in the low byte): a lock held
# elsewhere, and a damaged file.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
MOVE_IT_AWAY = ("refusing to use it: restore it from a backup, or move it away to start with an "
                "empty state")

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
    # The ledger in id order (ids only grow): a message's row, its open-index entry and its
    # later updates land on the last pages, which the batch writes anyway, instead of one
    # random page each by (source, delivery_id). That key keeps a unique index, touched
    # once per message. A commit of ten messages wrote ~54 pages to the WAL, now ~36.
    """
    CREATE TABLE ledger_by_id (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        state TEXT NOT NULL,
        payload BLOB NOT NULL,
        reply BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (source, delivery_id)
    );
    INSERT INTO ledger_by_id (id, source, delivery_id, namespace, state, payload, reply,
                              created_at, updated_at)
        SELECT id, source, delivery_id, namespace, state, payload, reply, created_at,
               updated_at FROM ledger ORDER BY id;
    DROP TABLE ledger;
    ALTER TABLE ledger_by_id RENAME TO ledger;
    CREATE INDEX ledger_open ON ledger (source, state) WHERE state IN ('received', 'answered');
    CREATE INDEX ledger_age ON ledger (created_at);
    """,
]


class Committed(Protocol):
    """An operation given to :meth:`Database.run`, as its ``on_executed`` callback sees it."""

    def committed(self) -> bool:
        """Whether the operation's changes were committed (so far)."""
        ...


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
        self._worker = WorkerThread(f"orrad-db:{os.path.basename(path)}")
        self._checkpointer: Checkpointer | None = None
        # The operation that writes in this context depend on (Database.after).
        self._after: contextvars.ContextVar[Committed | None] = contextvars.ContextVar(
            f"orrad-db-after-{id(self)}", default=None)

    @classmethod
    def in_state_dir(cls, state_dir: str, *, read_only: bool = False) -> Database:
        return cls(os.path.join(state_dir, DB_FILENAME), read_only=read_only)

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync)
        if not self.read_only and self._conn is not None:
            # Checkpoints beside the writer (orrad/state/checkpoints.py); SQLite's own
            # automatic one stays as the backstop.
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_FRAMES}")
            # The event loop never waits for a lock, and a batch's statements start without
            # setting one: a batch that finds the write lock taken goes to the worker, which
            # waits up to BUSY_TIMEOUT_MS (_run_batch). Setting it around every BEGIN took two
            # statements per batch, 10-60 µs each here.
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._checkpointer = Checkpointer(self.path)
            self._checkpointer.start()

    def _open_sync(self) -> None:
        try:
            if self.read_only:
                if not os.path.exists(self.path):
                    raise StoreError(f"no state database at {self.path}")
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                    check_same_thread=False,
                )
                try:
                    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    self._check_schema(conn)
                except BaseException:
                    conn.close()
                    raise
            else:
                os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
                if os.path.exists(self.path):
                    self._check_sync()
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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
            if is_corruption(exc):
                raise StoreCorrupt(str(exc), self.path, hint=MOVE_IT_AWAY) from exc
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn

    def _check_sync(self) -> None:
        """Refuse a newer schema or a damaged file before the daemon uses it (own
        connection: what the check reads does not stay in the daemon's page cache)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._check_schema(conn)
            rows = conn.execute("PRAGMA quick_check(1)").fetchall()
        finally:
            conn.close()
        if [row[0] for row in rows] != ["ok"]:
            lines = [line for row in rows for line in str(row[0]).splitlines()
                     if line.strip() and not line.startswith("*** in database")]
            detail = "; ".join(lines)[:300] or "no detail"
            raise StoreCorrupt(f"quick_check: {detail}", self.path, hint=MOVE_IT_AWAY)

    def _check_schema(self, conn: sqlite3.Connection) -> int:
        """The file's schema version; a version this orrad does not know is refused."""
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        newest = len(MIGRATIONS)
        if version > newest:
            raise StoreError(
                f"the state database {self.path} has schema version {version}, newer than "
                f"the newest this orrad {__version__} knows ({newest}): it was written by a "
                "newer orrad; run that version, or restore a backup made for this one")
        return int(version)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = self._check_schema(conn)
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
            self._worker.stop()
            self._stop_checkpointer()
            await trio.to_thread.run_sync(conn.close)

    def _stop_checkpointer(self) -> None:
        # Before the writer closes: its close checkpoints what is left and removes the WAL.
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False,
                  durable: bool = True,
                  on_executed: Callable[[T, Committed], None] | None = None) -> T:
        """Run ``fn(connection)`` in a worker thread, inside the batch's transaction.

        If ``fn`` raises, its changes are rolled back and the error is raised here; the
        others in the batch still commit (they run again in a new transaction, so ``fn``
        must not depend on running only once). :func:`transaction` inside
        ``fn`` is a no-op under a batch. sqlite3 errors become
        :class:`~orrad.errors.StoreError`. ``inline``: ``fn`` is small (a few indexed
        statements, nothing that grows with the data) and may run on the event loop's
        thread (module docstring). ``durable=False``: the operation's changes need no
        fsync of their own (a later durable commit syncs them; module docstring).

        ``on_executed(value, operation)`` is called on the event loop's thread, at most once,
        when every statement of ``fn``'s batch ran and only its ``COMMIT`` is left (an
        inline batch committed by the worker); it must not raise, and it is not called when
        the batch runs otherwise (the result then comes with the commit). Under
        :meth:`after`, ``fn`` runs only if that operation committed.
        """
        after = self._after.get()
        if after is not None and not after.committed():
            fn = _only_after(fn, after)
        op: _Op[T] = _Op(fn, inline, durable, on_executed)
        self._queue.append(op)
        while not op.finished:
            if self._flushing:
                await self._batch_done.wait()
                continue
            await self._flush()
        return op.result()

    async def _flush(self) -> None:
        self._flushing = True
        batch: list[_Op[Any]] = []
        try:
            # One scheduling round first: every task that can run now adds its operation
            # to this batch instead of waiting for the next commit.
            await trio.lowlevel.checkpoint()
            batch, self._queue = self._queue, []
            conn = self._conn
            if conn is None:
                for op in batch:
                    op.fail(StoreError("state database is not open"))
                return
            durable = any(op.durable for op in batch)
            try:
                if not durable:
                    _lazy_commits(conn)
                if all(op.inline for op in batch):
                    await _run_batch_inline(conn, batch, self.path, self._worker,
                                            commit_here=not durable)
                else:
                    await self._worker.run_sync(_run_batch, conn, batch, self.path)
            finally:
                if not durable:
                    _durable_commits(conn)  # no call runs now: the worker was waited for
            if self._checkpointer is not None:
                self._checkpointer.poke()
        finally:
            # Operations a cancellation kept from running go back to the front of the queue
            # for the next flusher.
            self._queue[:0] = [op for op in batch if not op.finished]
            self._flushing = False
            done, self._batch_done = self._batch_done, trio.Event()
            done.set()

    @contextlib.contextmanager
    def after(self, operation: Committed) -> Iterator[None]:
        """Operations run in this context (this task, and tasks it starts) write only if
        ``operation`` committed; else they fail with :class:`~orrad.errors.StoreError`.

        Meant for an operation whose result was acted on before its commit
        (``on_executed``): whatever follows from it is never stored without it. Batches
        run one after another, so when a later operation runs, the earlier one's fate is
        known.
        """
        token = self._after.set(operation)
        try:
            yield
        finally:
            self._after.reset(token)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking variant for code outside trio (CLI readers)."""
        if self._conn is None:
            self._open_sync()
        assert self._conn is not None
        try:
            return fn(self._conn)
        except (sqlite3.Error, msgspec.DecodeError, StoreCorrupt) as exc:
            raise store_error(exc, self.path) from exc

    def close_sync(self) -> None:
        self._worker.stop()
        self._stop_checkpointer()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection.

    Inside an open transaction (a :meth:`Database.run` batch) it does nothing: the batch
    gives the operation its all-or-nothing behaviour.
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

    __slots__ = ("durable", "error", "finished", "fn", "inline", "on_executed", "value")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], inline: bool = False,
                 durable: bool = True,
                 on_executed: Callable[[T, Committed], None] | None = None) -> None:
        self.fn = fn
        self.inline = inline
        self.durable = durable
        self.on_executed = on_executed
        self.finished = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def committed(self) -> bool:
        return self.finished and self.error is None

    def executed(self) -> None:
        """Tell the caller its statements ran (once; only the COMMIT is left)."""
        callback, self.on_executed = self.on_executed, None
        if callback is None:
            return
        try:
            callback(self.value, self)  # type: ignore[arg-type]
        except Exception:
            log.exception("state database: an on_executed callback failed")

    def fail(self, error: BaseException) -> None:
        self.error, self.finished = error, True

    def reset(self) -> None:
        self.value, self.error, self.finished = None, None, False

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def is_corruption(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite reporting a damaged database file."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    text = str(exc)
    # TEXT that is not UTF-8: orrad only ever writes UTF-8, so the bytes were damaged.
    return ("malformed" in text or "not a database" in text
            or text.startswith("Could not decode to UTF-8"))


def store_error(exc: BaseException, path: str) -> StoreError:
    """The :class:`StoreError` for a failure inside an operation: damage (a malformed
    file, a stored record that does not decode) is a :class:`StoreCorrupt` naming ``path``."""
    if isinstance(exc, StoreCorrupt):
        return exc if exc.path is not None else StoreCorrupt(exc.detail, path)
    if isinstance(exc, msgspec.DecodeError):  # only stored records are decoded in here
        return StoreCorrupt(f"unreadable record: {exc}", path)
    if is_corruption(exc):
        return StoreCorrupt(str(exc), path)
    if isinstance(exc, StoreError):
        return exc
    return StoreError(str(exc))


def _run_batch(conn: sqlite3.Connection, batch: list[_Op[Any]], path: str) -> None:
    """Worker thread: the whole batch in one transaction (see :func:`_execute`).

    Any SQLite failure of the batch machinery itself (a full disk at COMMIT, an I/O error
    that rolled the transaction back) fails every operation of the batch with a StoreError
    and always leaves the connection outside a transaction, so the next batch starts
    clean. An operation that fails otherwise (a damaged page included) fails alone: the
    transaction is rolled back and the others run again without it.
    """
    # Only here, in the worker, does the writer wait for a lock (see Database.open).
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        while batch:
            batch = _attempt_batch(conn, batch, path)
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


def _attempt_batch(conn: sqlite3.Connection, batch: list[_Op[Any]],
                   path: str) -> list[_Op[Any]]:
    """One transaction over ``batch``; returns the operations to run again (none, unless
    one of them met a damaged page)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        rest = _execute(conn, batch, path)
        if rest is not None:
            return rest
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _fail_all(conn, batch, exc, path)
        return []
    for op in batch:
        op.finished = True
    return []


async def _run_batch_inline(conn: sqlite3.Connection, batch: list[_Op[Any]],
                            path: str, worker: WorkerThread, *,
                            commit_here: bool = False) -> None:
    """:func:`_run_batch` with the statements on the event loop's thread and the COMMIT in
    a worker; a write lock held elsewhere sends the batch to the worker instead."""
    while batch:
        try:
            if not _begin_without_waiting(conn):
                await worker.run_sync(_run_batch, conn, batch, path)
                return
            rest = _execute(conn, batch, path)
        except sqlite3.Error as exc:
            _fail_all(conn, batch, exc, path)
            return
        if rest is None and commit_here:
            _commit(conn, batch, path)
            return
        if rest is None:
            for op in batch:
                if op.on_executed is not None:
                    op.executed()
            # Shielded: a transaction left open would refuse the next batch's BEGIN (the
            # commit itself is bounded: the WAL write and its fsync).
            with trio.CancelScope(shield=True):
                await worker.run_sync(_commit, conn, batch, path)
            return
        batch = rest


def _only_after(fn: Callable[[sqlite3.Connection], T],
                after: Committed) -> Callable[[sqlite3.Connection], T]:
    """``fn``, refused unless ``after`` committed (checked when it runs: see Database.after)."""
    def run(conn: sqlite3.Connection) -> T:
        if not after.committed():
            raise StoreError("not stored: a write it depends on was not committed")
        return fn(conn)
    return run


def _lazy_commits(conn: sqlite3.Connection) -> None:
    """The next commit writes the WAL without syncing it and without checkpointing (it runs
    on the event loop's thread); set outside a transaction, where SQLite allows it."""
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def _durable_commits(conn: sqlite3.Connection) -> None:
    """Back to every commit synced (FULL) and the backstop checkpoint."""
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_FRAMES}")


def _begin_without_waiting(conn: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` unless another connection holds the write lock (False): the
    daemon's writer has no busy timeout on the event loop (see :meth:`Database.open`)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            return False
        raise
    return True


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


def _execute(conn: sqlite3.Connection, batch: list[_Op[Any]],
             path: str) -> list[_Op[Any]] | None:
    """Run the operations in the open transaction: ``None`` when the batch can be
    committed, else the operations to run again in a new transaction.

    Operations fail rarely, so none gets a savepoint of its own (two statements each, on
    every message's path): one that raises has its changes undone by rolling back the
    whole transaction, and fails alone; the others start over without it. A failure of the
    machinery itself raises (the caller fails the whole batch).
    """
    for op in batch:
        try:
            op.value = op.fn(conn)
        except Exception as exc:
            if (isinstance(exc, sqlite3.Error) and not conn.in_transaction
                    and not is_corruption(exc)):
                # SQLite rolled the whole transaction back itself (a full disk, an I/O
                # error): every operation of the batch is lost, not just this one.
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            op.fail(store_error(exc, path)
                    if isinstance(exc, (sqlite3.Error, msgspec.DecodeError, StoreError))
                    else exc)
            rest = [other for other in batch if other is not op]
            for other in rest:
                other.reset()
            return rest
    return None


def _commit(conn: sqlite3.Connection, batch: list[_Op[Any]], path: str) -> None:
    """Worker thread: commit the transaction ``batch`` ran in."""
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _fail_all(conn, batch, exc, path)
        return
    for op in batch:
        op.finished = True


def _fail_all(conn: sqlite3.Connection, batch: list[_Op[Any]], exc: sqlite3.Error,
              path: str) -> None:
    """The batch's transaction failed: roll back what is left of it and fail every
    operation (leaving the connection outside a transaction)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("state database: rollback failed")
    damaged = is_corruption(exc)
    for op in batch:
        op.fail(StoreCorrupt(f"batch failed: {exc}", path) if damaged
                else StoreError(f"batch failed: {exc}"))
