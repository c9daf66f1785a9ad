"""The ledger: every message the daemon accepted, from intake to confirmed delivery.

One row per message, found by ``(source, delivery_id)`` — the channel (or ``api``, or a
federation origin) and the id the sender gave it. A row is committed (``synchronous=FULL``)
before the sender is told the message was accepted, so a repeated delivery id never runs
the agent twice, even across a restart, and what was accepted but not answered when the
process died is found again. (A sender told of its message only by the answer, a caller
of ``Router.call``, is not told before the answer's own durable commit, which syncs the
row as well: such rows are committed without an fsync of their own.)

The row's integer ``id`` is the message's *ledger id*: its run tags the session entries it
writes with it, so a re-run never appends a second copy. Ids only grow (the next one
follows the largest ever stored), and rows are stored in id order (schema 4): a message's
row, its later updates and its entries in the other indexes land on the last pages, which
every batch writes anyway; only the unique index on ``(source, delivery_id)`` takes one
page of its own per message.

States move ``received -> answered -> delivered``; ``failed`` when the answer was refused
for good. ``answered`` rows hold the reply, so it is delivered again (the same reply) until
the channel confirms it.

A row whose stored JSON no longer decodes (damaged bytes SQLite cannot notice) is read with
an empty payload and no reply, and logged: the router then reports and drops that one
message instead of every read of its source failing.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal

import msgspec

from orrad.state.db import Committed, Database, transaction

__all__ = ["OPEN_STATES", "Key", "Ledger", "LedgerEntry", "LedgerState"]

LedgerState = Literal["received", "answered", "delivered", "failed"]
OPEN_STATES: tuple[LedgerState, ...] = ("received", "answered")

log = logging.getLogger(__name__)

_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class LedgerEntry(msgspec.Struct):
    id: int
    source: str
    delivery_id: str
    namespace: str
    state: LedgerState
    payload: dict[str, Any]
    reply: dict[str, Any] | None
    created_at: float
    updated_at: float


_COLUMNS = ("id, source, delivery_id, namespace, state, payload, reply, created_at, "
            "updated_at")


def _row(row: tuple[Any, ...]) -> LedgerEntry:
    id_, source, delivery_id, namespace, state, payload, reply, created, updated = row
    where = f"{source}/{delivery_id}"
    stored_reply = None if reply is None else _stored_json(reply, where, "reply")
    return LedgerEntry(id_, source, delivery_id, namespace, state,
                       _stored_json(payload, where, "payload") or {}, stored_reply,
                       created, updated)


def _stored_json(blob: Any, where: str, what: str) -> dict[str, Any] | None:
    try:
        return _decode(blob)
    except (msgspec.DecodeError, RecursionError, TypeError) as exc:
        log.error("ledger entry %s: the stored %s is unreadable (%s); the state database "
                  "is damaged", where, what, exc)
        return None


Key = tuple[str, str]  # (source, delivery_id)
# A batch of up to this many rows runs its statements on the event loop (Database.run's
# ``inline``); a larger one (a backlog after an outage) in the worker, so the loop never
# stalls on it.
INLINE_ROWS = 1024  # ~5 ms of statements at most


class Ledger:
    """The durable record of accepted messages, on the daemon's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_id: int | None = None  # only touched in the database's worker thread

    def _next_id(self, conn: sqlite3.Connection) -> int:
        if self._last_id is None:
            # The high-water mark survives purges that empty the table: ids never repeat.
            (largest,) = conn.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()
            row = conn.execute("SELECT value FROM kv WHERE scope = 'orrad' AND "
                               "key = 'ledger_last_id'").fetchone()
            self._last_id = max(int(largest), int(msgspec.json.decode(row[0])) if row else 0)
        self._last_id += 1
        return self._last_id

    def _save_high_water(self, conn: sqlite3.Connection) -> None:
        if self._last_id is not None:
            conn.execute("INSERT OR REPLACE INTO kv (scope, key, value) VALUES "
                         "('orrad', 'ledger_last_id', ?)", (_encode(self._last_id),))

    async def record(self, source: str, delivery_id: str, namespace: str,
                     payload: dict[str, Any]) -> tuple[bool, LedgerEntry]:
        """Record a new message: ``(True, entry)``, or ``(False, existing)`` when
        ``source`` used ``delivery_id`` before. ``payload`` values may be msgspec Structs
        (a new entry's payload is returned as given; stored ones come back as JSON)."""
        [result] = await self.record_many([(source, delivery_id, namespace, payload)])
        return result

    async def record_many(
        self, items: list[tuple[str, str, str, dict[str, Any] | bytes]], *,
        durable: bool = True,
        on_executed: Callable[[list[tuple[bool, LedgerEntry]], Committed], None] | None = None,
    ) -> list[tuple[bool, LedgerEntry]]:
        """:meth:`record` for several messages in one operation (all or none stored); a
        payload may be given already encoded (JSON bytes).

        ``durable=False`` when no sender is told of these messages before their answers,
        each written by a durable commit that then syncs these rows too
        (:class:`~orrad.state.db.Database`): the rows skip an fsync of their own.
        ``on_executed`` learns the results before the commit, as
        :meth:`~orrad.state.db.Database.run` says; see :meth:`after`."""
        encoded = [payload if isinstance(payload, bytes) else _encode(payload)
                   for *_, payload in items]

        def run(conn: sqlite3.Connection) -> list[tuple[bool, LedgerEntry]]:
            now = time.time()
            with transaction(conn):
                # Every item gets the next id and one batched INSERT that skips repeats;
                # only when some were skipped are the items looked up (a stored row with
                # another id than the one just given is a repeat; that id stays unused).
                ids = [self._next_id(conn) for _ in items]
                before = conn.total_changes
                conn.executemany(
                    "INSERT INTO ledger (source, delivery_id, id, namespace, state, "
                    "payload, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, 'received', ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(source, delivery_id, ledger_id, namespace, blob, now, now)
                     for (source, delivery_id, namespace, _), ledger_id, blob
                     in zip(items, ids, encoded, strict=True)])
                all_new = conn.total_changes - before == len(items)
                results: list[tuple[bool, LedgerEntry]] = []
                for (source, delivery_id, namespace, payload), ledger_id in zip(
                        items, ids, strict=True):
                    if not all_new:
                        row = conn.execute(
                            f"SELECT {_COLUMNS} FROM ledger WHERE source = ? AND "
                            "delivery_id = ?", (source, delivery_id)).fetchone()
                        entry = _row(row)
                        if entry.id != ledger_id:
                            results.append((False, entry))
                            continue
                    results.append((True, LedgerEntry(
                        ledger_id, source, delivery_id, namespace, "received",
                        {} if isinstance(payload, bytes) else payload, None, now, now)))
                self._save_high_water(conn)
            return results

        return await self.db.run(run, inline=len(items) <= INLINE_ROWS, durable=durable,
                                 on_executed=on_executed)

    def after(self, recorded: Committed) -> AbstractContextManager[None]:
        """Writes in this context happen only if ``recorded`` (a :meth:`record_many`
        seen by its ``on_executed``) committed (:meth:`~orrad.state.db.Database.after`)."""
        return self.db.after(recorded)

    async def answer(self, key: Key, reply: Any) -> None:
        """Store the reply (anything msgspec encodes as a JSON object): the message is
        ``answered``, awaiting delivery."""
        encoded = _encode(reply)

        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "UPDATE ledger SET state = 'answered', reply = ?, updated_at = ? "
                    "WHERE source = ? AND delivery_id = ?", (encoded, time.time(), *key))

        await self.db.run(run, inline=True)

    async def settle_many(self, outcomes: list[tuple[Key, LedgerState, Any]]) -> None:
        """Record several deliveries' outcomes in one operation; an outcome with a reply
        (not ``None``) stores it too (an answer whose delivery needed nothing stored
        beforehand: a caller waiting in this process)."""
        rows = [(state, None if reply is None else _encode(reply), key)
                for key, state, reply in outcomes]

        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            with transaction(conn):
                # One statement for the whole batch, in order: a NULL reply keeps the
                # stored one.
                conn.executemany(
                    "UPDATE ledger SET state = ?, reply = coalesce(?, reply), updated_at = ? "
                    "WHERE source = ? AND delivery_id = ?",
                    [(state, blob, now, source, delivery_id)
                     for state, blob, (source, delivery_id) in rows])

        await self.db.run(run, inline=len(outcomes) <= INLINE_ROWS)

    async def mark(self, key: Key, state: LedgerState) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("UPDATE ledger SET state = ?, updated_at = ? WHERE source = ? "
                             "AND delivery_id = ?", (state, time.time(), *key))

        await self.db.run(run, inline=True)

    async def get(self, source: str, delivery_id: str) -> LedgerEntry | None:
        def run(conn: sqlite3.Connection) -> LedgerEntry | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM ledger WHERE source = ? AND delivery_id = ?",
                (source, delivery_id)).fetchone()
            return None if row is None else _row(row)

        return await self.db.run(run)

    async def open_entries(self, source: str) -> list[LedgerEntry]:
        """Messages of ``source`` not yet delivered or failed, in the order received."""

        def run(conn: sqlite3.Connection) -> list[LedgerEntry]:
            return [_row(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM ledger WHERE source = ? AND state IN (?, ?) "
                "ORDER BY id", (source, *OPEN_STATES))]

        return await self.db.run(run)

    async def epoch(self) -> str:
        """A random token made when the ledger was first used: ids are only unique within
        it (a reset or restored state directory starts another epoch)."""
        candidate = secrets.token_hex(6)

        def run(conn: sqlite3.Connection) -> str:
            with transaction(conn):
                conn.execute("INSERT OR IGNORE INTO kv (scope, key, value) VALUES "
                             "('orrad', 'ledger_epoch', ?)", (_encode(candidate),))
                (value,) = conn.execute("SELECT value FROM kv WHERE scope = 'orrad' AND "
                                        "key = 'ledger_epoch'").fetchone()
            return str(msgspec.json.decode(value))

        return await self.db.run(run)

    async def probe(self) -> None:
        """A tiny write, to learn whether the store can be written again."""

        def run(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("INSERT OR REPLACE INTO kv (scope, key, value) VALUES "
                             "('orrad', 'probe', ?)", (_encode(time.time()),))

        await self.db.run(run, inline=True)

    async def purge(self, older_than_s: float) -> int:
        """Forget finished messages older than ``older_than_s`` seconds."""
        cutoff = time.time() - older_than_s

        def run(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                return conn.execute(
                    "DELETE FROM ledger WHERE created_at < ? AND state IN "
                    "('delivered', 'failed')", (cutoff,)).rowcount

        return await self.db.run(run)
