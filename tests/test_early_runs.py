"""A message runs once its ledger row is written, before that row is committed.

What must hold: the caller learns the result of an operation only when every statement of
its batch ran (``on_executed``); writes that follow from it (``Database.after``) are refused
when its commit fails; and in the pipeline, a message whose row then does not commit is
neither answered nor stored, so a retry runs it once. Commits are made to fail for real: a
deferred foreign key is checked by SQLite at ``COMMIT``, after every statement succeeded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from orrad import MemorySessionStore, Message, Namespace, Runtime
from orrad.errors import ProviderError, StoreError
from orrad.model import InboundMessage, OutboundError, OutboundMessage, Receipt
from orrad.router import STORE_PROBE_S, AgentSet, Router
from orrad.runtime.provider import CompletionRequest, CompletionResponse
from orrad.state import Database, Ledger, SqliteSessionStore
from orrad.state.db import Committed
from tests.scripted import QueueChannel
from tests.test_router import SlowEcho

T = TypeVar("T")

DEFERRED_FK = [
    "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, "
    "parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
]


def create_tables(conn: sqlite3.Connection) -> None:
    for statement in DEFERRED_FK:
        conn.execute(statement)


def orphan(conn: sqlite3.Connection) -> None:
    """A row whose statement succeeds and whose transaction cannot commit."""
    conn.execute("INSERT INTO child (parent) VALUES (424242)")


def put(key: str) -> Callable[[sqlite3.Connection], str]:
    def write(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO kv (scope, key, value) VALUES ('t', ?, x'01')", (key,))
        return key

    return write


def kv_keys(db: Database) -> list[str]:
    conn = sqlite3.connect(db.path)
    try:
        return [row[0] for row in conn.execute("SELECT key FROM kv WHERE scope = 't' "
                                               "ORDER BY key")]
    finally:
        conn.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(str(tmp_path / "orrad.sqlite3"))
    await database.open()
    await database.run(create_tables)
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.parametrize("commits", [True, False])
async def test_writes_after_an_operation_wait_for_its_fate(db: Database, commits: bool) -> None:
    executed: list[tuple[str, Committed]] = []
    seen = trio.Event()

    def on_executed(value: str, operation: Committed) -> None:
        executed.append((value, operation))
        seen.set()

    def first(conn: sqlite3.Connection) -> str:
        key = put("first")(conn)
        if not commits:
            orphan(conn)
        return key

    outcome: dict[str, Any] = {}

    async def dependent() -> None:
        await seen.wait()  # its result is known: its COMMIT is on its way
        [(_, operation)] = executed
        with db.after(operation):
            try:
                outcome["dependent"] = await db.run(put("dependent"), inline=True)
            except StoreError as exc:
                outcome["dependent"] = exc
        outcome["free"] = await db.run(put("free"), inline=True)  # outside: unaffected

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dependent)
        try:
            outcome["first"] = await db.run(first, inline=True, on_executed=on_executed)
        except StoreError as exc:
            outcome["first"] = exc
    assert [value for value, _ in executed] == ["first"]
    assert executed[0][1].committed() is commits
    if commits:
        assert outcome == {"first": "first", "dependent": "dependent", "free": "free"}
        assert kv_keys(db) == ["dependent", "first", "free"]
    else:
        assert isinstance(outcome["first"], StoreError)
        assert isinstance(outcome["dependent"], StoreError)
        assert outcome["free"] == "free"
        assert kv_keys(db) == ["free"]


async def test_no_early_result_for_an_operation_that_fails(db: Database) -> None:
    def explode(conn: sqlite3.Connection) -> str:
        raise ValueError("boom")

    called: list[object] = []
    with pytest.raises(ValueError):
        await db.run(explode, inline=True, on_executed=lambda value, op: called.append(value))
    assert called == []


class RecordCommitFails(Database):
    """The daemon's database, whose next ``fail_records`` ledger records cannot commit
    (their transaction also holds an orphan row)."""

    fail_records = 0

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False,
                  durable: bool = True,
                  on_executed: Callable[[T, Committed], None] | None = None) -> T:
        if self.fail_records and "record_many" in fn.__qualname__:
            self.fail_records -= 1
            inner = fn

            def fn(conn: sqlite3.Connection) -> T:
                result = inner(conn)
                orphan(conn)
                return result

        return await super().run(fn, inline=inline, durable=durable, on_executed=on_executed)


async def test_a_message_whose_row_does_not_commit_is_neither_answered_nor_kept(
    tmp_path: Path, autojump_clock: trio.testing.MockClock,
) -> None:
    db = RecordCommitFails(str(tmp_path / "orrad.sqlite3"))
    await db.open()
    await db.run(create_tables)
    store = SqliteSessionStore(db)
    provider = SlowEcho("a")
    router = Router(AgentSet({"a": Runtime(provider, store, name="a")}, "a"),
                    ledger=Ledger(db))
    channel = QueueChannel()  # acknowledges on the receipt: its records are durable
    namespace = Namespace.parse("chat:early")
    receipts: list[Receipt] = []

    def inbound() -> InboundMessage:
        message = InboundMessage(namespace, Message.user("hello"), {}, delivery_id="m-1")
        message.on_recorded = receipts.append
        return message

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(router.serve)
            db.fail_records = 1
            await router.submit(inbound(), channel, source="chat")
            await router.wait_idle()
            [refused] = receipts
            assert isinstance(refused.error, StoreError)
            assert channel.replies == []
            assert await Ledger(db).get("chat", "m-1") is None
            session = await store.load(namespace)
            assert session is None or session.messages == []
            # The channel delivers it again once the store works: answered once, kept once.
            while router.store_error is not None:  # until the router's probe wrote
                await trio.sleep(STORE_PROBE_S / 2)
            await router.submit(inbound(), channel, source="chat")
            await router.wait_idle()
            nursery.cancel_scope.cancel()
        assert receipts[1].new and receipts[1].error is None
        assert [type(reply) for reply in channel.replies] == [OutboundMessage]
        conn = sqlite3.connect(db.path)
        try:
            rows = conn.execute("SELECT body FROM session_messages WHERE namespace = ? "
                                "ORDER BY seq", (namespace.key,)).fetchall()
        finally:
            conn.close()
        assert len(rows) == 2  # the question and its answer, once
    finally:
        await db.close()


class Refuses:
    """A provider that fails every request at once."""

    name = "refuses"
    model = None

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        raise ProviderError("the model is down")


class OrderedChannel(QueueChannel):
    """Notes receipts and replies in the order they reach the channel; its replies need
    nothing stored before they are sent (as a waiting webhook request's)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def receipt_for(self, delivery_id: str) -> Callable[[Receipt], None]:
        return lambda receipt: self.events.append(("receipt", delivery_id))

    def stores_before_send(self, reply: OutboundMessage | OutboundError) -> bool:
        return False

    def _record(self, item: OutboundMessage | OutboundError) -> None:
        self.events.append(("reply", item.delivery_id or ""))
        super()._record(item)


async def test_an_answer_ready_before_the_commit_waits_for_the_receipt(db: Database) -> None:
    # A channel may acknowledge on the receipt (Discord moves its resume point): it must
    # hear it before the answer, or an answer sent before a crash would be sent again.
    # (Sessions in memory: no write of the run's own orders its answer after the commit.)
    router = Router(AgentSet({"a": Runtime(Refuses(), MemorySessionStore(), name="a")}, "a"),
                    ledger=Ledger(db))
    channel = OrderedChannel()
    ids = [f"m-{n}" for n in range(5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        for n, delivery_id in enumerate(ids):
            message = InboundMessage(Namespace.parse(f"chat:{n}"), Message.user("hi"), {},
                                     delivery_id=delivery_id)
            message.on_recorded = channel.receipt_for(delivery_id)
            await router.submit(message, channel, source="chat")
        await router.wait_idle()
        nursery.cancel_scope.cancel()
    for delivery_id in ids:
        mine = [kind for kind, of in channel.events if of == delivery_id]
        assert mine == ["receipt", "reply"], (delivery_id, channel.events)
    assert all(isinstance(reply, OutboundError) for reply in channel.replies)
