"""Which commits sync the disk for a message whose caller waits for its answer.

A caller of :meth:`Router.call` (the API's ``POST /v1/messages``, a relay received from a
peer) learns of its message only from the answer, never from an earlier "accepted": so its
ledger row is written without an fsync of its own, and the answer reaches the caller only
after a durable commit (the session saved with it), which syncs the row too. A message a
channel submits (and may acknowledge on its receipt) is recorded durably as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from orrad import Message, Namespace, Runtime
from orrad.model import InboundMessage, OutboundMessage
from orrad.router import AgentSet, Router
from orrad.state import Database, Ledger, SqliteSessionStore
from orrad.state.db import Committed
from tests.scripted import QueueChannel
from tests.test_router import SlowEcho

T = TypeVar("T")


class CommitLog(Database):
    """The daemon's database, noting for each operation whether it asked for a durable
    commit, once its batch committed."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.committed: list[tuple[str, bool]] = []

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False,
                  durable: bool = True,
                  on_executed: Callable[[T, Committed], None] | None = None) -> T:
        result = await super().run(fn, inline=inline, durable=durable,
                                   on_executed=on_executed)
        self.committed.append((fn.__qualname__.split(".")[1], durable))
        return result


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[CommitLog]:
    database = CommitLog(str(tmp_path / "orrad.sqlite3"))
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def make_router(db: Database) -> Router:
    runtime = Runtime(SlowEcho("a"), SqliteSessionStore(db), name="a")
    return Router(AgentSet({"a": runtime}, "a"), ledger=Ledger(db))


def message(namespace: str, delivery_id: str) -> InboundMessage:
    return InboundMessage(Namespace.parse(namespace), Message.user("hi"), {},
                          delivery_id=delivery_id)


async def test_a_call_is_recorded_lazily_and_answered_after_a_durable_commit(
    db: CommitLog,
) -> None:
    router = make_router(db)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        db.committed.clear()  # the start's own reads and writes
        answer = await router.call(message("api:1", "req-1"), source="api")
        at_answer = list(db.committed)
        nursery.cancel_scope.cancel()
    assert isinstance(answer, OutboundMessage)
    assert at_answer[0] == ("record_many", False)
    # The session (question and answer) was committed durably before the caller got the
    # answer, and after the record: that fsync covers the record's frames too.
    assert at_answer[-1][1] is True
    assert [durable for _, durable in at_answer[1:]] == [True] * (len(at_answer) - 1)
    entry = await Ledger(db).get("api", "req-1")
    assert entry is not None and entry.namespace == "api:1"


async def test_a_submitted_message_is_recorded_durably(db: CommitLog) -> None:
    router = make_router(db)
    channel = QueueChannel()
    receipts: list[Any] = []
    inbound = message("chat:1", "m-1")
    inbound.on_recorded = receipts.append
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        db.committed.clear()
        await router.submit(inbound, channel, source="chat")
        with trio.fail_after(5):
            while not channel.replies:
                await channel.reply_arrived.wait()
        nursery.cancel_scope.cancel()
    assert receipts and receipts[0].new
    assert db.committed[0] == ("record_many", True)
