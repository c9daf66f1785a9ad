"""Messages whose sender awaits the answer (a synchronous call) are recorded with their run.

The router looks such a message up on the database's read connection and writes its ledger
row in the same transaction as the run's first session save (or with the delivery's outcome
when the run saved nothing), so the message costs one commit instead of two. These tests
check the promises that must survive that: nothing is on disk while the run has not saved
(a crash then leaves nothing to find, and the caller, told nothing, asks again); a repeat
in flight or stored before is never run again, whichever path either copy took; an answer
comes only when its exchange is stored.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio

from orrad import Message, Namespace, Runtime
from orrad.model import InboundMessage, OutboundError, OutboundMessage
from orrad.router import AgentSet, Router
from orrad.runtime.provider import CompletionRequest, CompletionResponse
from orrad.state.db import DB_FILENAME, Database
from orrad.state.ledger import Ledger
from orrad.state.sessions import SqliteSessionStore
from tests.scripted import QueueChannel, reply


class GatedEcho:
    """Answers ``echo: <text>`` once ``gate`` is set; counts its calls."""

    name = "gated"
    model = None

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.started = trio.Event()
        self.calls: list[str] = []

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        text = request.messages[-1].content
        self.calls.append(text)
        self.started.set()
        await self.gate.wait()
        return reply(f"echo: {text}")


def message(request_id: str, text: str, ns: str = "hooks:a", **metadata: Any) -> InboundMessage:
    return InboundMessage(Namespace.parse(ns), Message.user(text), dict(metadata),
                          delivery_id=request_id)


def on_disk(state_dir: Path) -> tuple[list[tuple[str, str]], int]:
    """What another process would find: the ledger's (delivery id, state) rows and the
    number of session messages."""
    conn = sqlite3.connect(state_dir / DB_FILENAME)
    try:
        rows = conn.execute("SELECT delivery_id, state FROM ledger ORDER BY id").fetchall()
        (count,) = conn.execute("SELECT count(*) FROM session_messages").fetchone()
    finally:
        conn.close()
    return [(str(a), str(b)) for a, b in rows], int(count)


async def open_router(state_dir: Path, provider: GatedEcho,
                      nursery: trio.Nursery) -> tuple[Router, Database]:
    db = Database.in_state_dir(str(state_dir))
    await db.open()
    runtime = Runtime(provider, SqliteSessionStore(db), name="main")
    router = Router(AgentSet({"main": runtime}, "main"), ledger=Ledger(db))
    await nursery.start(router.serve)
    return router, db


async def test_nothing_is_stored_before_the_first_save_then_row_and_session_together(
        tmp_path: Path) -> None:
    provider = GatedEcho()
    replies: list[OutboundMessage | OutboundError] = []
    async with trio.open_nursery() as nursery:
        router, db = await open_router(tmp_path, provider, nursery)

        async def ask(request_id: str) -> None:
            replies.append(await router.call(message(request_id, "hello"), source="hooks"))

        nursery.start_soon(ask, "r1")
        await provider.started.wait()
        # The run is under way: a crash now would leave nothing (the caller, told nothing,
        # asks again), and a repeat in flight is not run a second time.
        assert on_disk(tmp_path) == ([], 0)
        repeat = await router.call(message("r1", "hello"), source="hooks")
        assert isinstance(repeat, OutboundError) and repeat.code == "in_progress"
        provider.gate.set()
        await router.wait_idle()
        assert [r.message.content for r in replies if isinstance(r, OutboundMessage)] == [
            "echo: hello"]
        assert on_disk(tmp_path) == ([("r1", "delivered")], 2)
        again = await router.call(message("r1", "hello"), source="hooks")
        assert isinstance(again, OutboundMessage) and again.message.content == "echo: hello"
        assert provider.calls == ["hello"]
        nursery.cancel_scope.cancel()
    await db.close()


async def test_a_run_that_saves_nothing_leaves_its_row_with_the_answer(tmp_path: Path) -> None:
    provider = GatedEcho()
    provider.gate.set()
    async with trio.open_nursery() as nursery:
        router, db = await open_router(tmp_path, provider, nursery)
        # An agent that does not exist: no run, no session save; the error is the answer.
        first = await router.call(message("r2", "hi", agent="nope"), source="hooks")
        assert isinstance(first, OutboundError) and first.code == "unknown_agent"
        await router.wait_idle()
        assert on_disk(tmp_path) == ([("r2", "delivered")], 0)
        again = await router.call(message("r2", "hi"), source="hooks")
        assert isinstance(again, OutboundError) and again.code == "unknown_agent"
        assert provider.calls == []
        nursery.cancel_scope.cancel()
    await db.close()


async def test_a_message_stored_by_an_earlier_process_is_not_run_again(tmp_path: Path) -> None:
    provider = GatedEcho()
    provider.gate.set()
    async with trio.open_nursery() as nursery:
        router, db = await open_router(tmp_path, provider, nursery)
        await router.call(message("r3", "once"), source="hooks")
        await router.wait_idle()
        nursery.cancel_scope.cancel()
    await db.close()

    async with trio.open_nursery() as nursery:
        router, db = await open_router(tmp_path, provider, nursery)
        again = await router.call(message("r3", "once"), source="hooks")
        assert isinstance(again, OutboundMessage) and again.message.content == "echo: once"
        # A new id continues the ids of the earlier process (never reused).
        fresh = await router.call(message("r4", "twice"), source="hooks")
        assert isinstance(fresh, OutboundMessage)
        await router.wait_idle()
        nursery.cancel_scope.cancel()
    await db.close()
    assert provider.calls == ["once", "twice"]
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    ids = [row[0] for row in conn.execute("SELECT id FROM ledger ORDER BY id")]
    conn.close()
    assert len(ids) == 2 and ids[0] < ids[1]


async def test_a_copy_sent_to_a_channel_while_the_awaited_one_runs_is_a_repeat(
        tmp_path: Path) -> None:
    provider = GatedEcho()
    channel = QueueChannel()  # not awaiting: its copy would be recorded before running
    async with trio.open_nursery() as nursery:
        router, db = await open_router(tmp_path, provider, nursery)
        answers: list[OutboundMessage | OutboundError] = []

        async def ask() -> None:
            answers.append(await router.call(message("r5", "same"), source="hooks"))

        nursery.start_soon(ask)
        await provider.started.wait()
        receipts: list[Any] = []
        copy = message("r5", "same")
        copy.on_recorded = receipts.append
        await router.submit(copy, channel, source="hooks")
        with trio.fail_after(5):
            while not receipts:
                await trio.sleep(0.01)
        assert not receipts[0].new
        provider.gate.set()
        await router.wait_idle()
        assert provider.calls == ["same"]
        assert len(answers) == 1 and channel.replies == []
        nursery.cancel_scope.cancel()
    await db.close()
