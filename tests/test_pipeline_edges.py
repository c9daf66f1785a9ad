"""Regression tests for edges of the pipeline found in review: federation answers and
failures inside the router, run slots, ledger ids across purges, recovery racing a
delivery, retried relays, broken peer responses and unencodable messages.

Tests that touch the state database (a worker thread) or real sockets run on the real
clock with short deadlines; the others use ``autojump_clock``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from orrad import MemorySessionStore, Message, Namespace, Runtime, peering
from orrad.config import load_daemon_config
from orrad.delivery import Reply
from orrad.errors import OrradError
from orrad.federation.client import Peer, PeerClient, RetrySettings, make_http_client
from orrad.federation.errors import PeerError, PeerUnavailable
from orrad.federation.wire import RelayRequest
from orrad.http import Response
from orrad.model import InboundMessage, OutboundError, OutboundMessage, Receipt
from orrad.peering import Federation
from orrad.router import AgentSet, Ownership, Router
from orrad.runtime.provider import CompletionRequest, CompletionResponse, Provider
from orrad.state import Database, Ledger, SqliteSessionStore
from orrad.state.db import Committed
from orrad.state.ledger import LedgerEntry
from tests.federation.peer import SECRET, ScriptedPeer
from tests.scripted import QueueChannel, reply
from tests.test_router import SlowEcho

DEADLINE_S = 1.5  # real-clock bound on anything that should happen at once


# -- helpers -------------------------------------------------------------------------------


def message(namespace: str, text: str, *, delivery_id: str | None = None,
            **metadata: Any) -> InboundMessage:
    return InboundMessage(Namespace.parse(namespace), Message.user(text), dict(metadata),
                          delivery_id=delivery_id)


def echo_agents(provider: Provider | None = None) -> AgentSet:
    """One agent ``a`` (a :class:`SlowEcho` unless ``provider`` is given)."""
    runtime = Runtime(provider or SlowEcho("a"), MemorySessionStore(), name="a")
    return AgentSet({"a": runtime}, "a")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.in_state_dir(str(tmp_path / "state"))
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@asynccontextmanager
async def serving(router: Router) -> AsyncIterator[trio.Nursery]:
    """The router serving in a nursery that is cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        yield nursery
        nursery.cancel_scope.cancel()


async def settled(router: Router, timeout_s: float = DEADLINE_S) -> None:
    """Wait until nothing is pending (every delivery's outcome written)."""
    with trio.move_on_after(timeout_s):
        await router.wait_idle()
        return
    pytest.fail(f"router still busy after {timeout_s}s: pending={router.pending}, "
                f"store_error={router.store_error!r}")


async def replies(channel: QueueChannel, count: int,
                  timeout_s: float = DEADLINE_S) -> list[Reply]:
    """The channel's replies once there are ``count`` of them."""
    with trio.move_on_after(timeout_s):
        while len(channel.replies) < count:
            await channel.reply_arrived.wait()
        return list(channel.replies)
    pytest.fail(f"{len(channel.replies)} of {count} replies after {timeout_s}s: "
                f"{channel.replies!r}")


class RemotePeer:
    """A relayer for which peer ``beta`` owns every ``remote:`` namespace."""

    def __init__(self) -> None:
        self.relays = 0

    def owner(self, namespace: Namespace, agent: str | None) -> Ownership:
        return Ownership("beta") if namespace.key.startswith("remote:") else Ownership(None)

    def would_queue(self, namespace: Namespace, agent: str | None) -> bool:
        return False


class GatedEcho:
    """A provider whose runs wait for ``release``; ``started`` is set by the first run."""

    name = "gated"
    model: str | None = None

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.runs = 0

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        return reply(f"a:{request.messages[-1].content}")


# -- r1: a peer's "unavailable" is an answer, not a failure of our store ------------------


class DownPeer(RemotePeer):
    """``beta`` is down with ``on_unavailable: fail``: what Federation.relay returns."""

    async def relay(self, peer: str, txn_id: str, inbound: InboundMessage, agent: str | None,
                    received_at: float, on_queued: Callable[[], None]) -> Reply | None:
        self.relays += 1
        await trio.sleep(0.01)
        return OutboundError(inbound.namespace, f"peer {peer!r} is unavailable",
                             inbound.metadata, code="unavailable")


async def test_fail_policy_503_is_delivered_once_and_the_store_stays_healthy(
    db: Database,
) -> None:
    ledger = Ledger(db)
    peer = DownPeer()
    router = Router(echo_agents(), ledger=ledger, relayer=peer)
    # No stores_before_send hook: the answer is stored before the send (Discord, callbacks).
    channel = QueueChannel()
    async with serving(router) as nursery:
        nursery.start_soon(partial(router.pump, channel, source="discord"))
        await channel.inbound_send.send(message("remote:x", "hi", delivery_id="m1"))
        await replies(channel, 1)
        await settled(router)
        entry = await ledger.get("discord", "m1")
    [only] = channel.replies
    assert isinstance(only, OutboundError)
    assert (only.code, only.delivery_id) == ("unavailable", "m1")
    assert "'beta'" in only.error
    assert peer.relays == 1  # not run again as if our store had failed
    assert router.store_error is None
    assert entry is not None and entry.state == "delivered"


# -- r2: messages queued for a down peer hold no run slot ---------------------------------


class QueuingPeer(RemotePeer):
    """``beta`` is down with ``on_unavailable: queue`` and ``queue_ttl_s: 3600``."""

    def __init__(self, expect: int) -> None:
        super().__init__()
        self.expect = expect
        self.all_queued = trio.Event()

    async def relay(self, peer: str, txn_id: str, inbound: InboundMessage, agent: str | None,
                    received_at: float, on_queued: Callable[[], None]) -> Reply | None:
        self.relays += 1
        on_queued()
        if self.relays == self.expect:
            self.all_queued.set()
        await trio.sleep(3600)
        return OutboundError(inbound.namespace, f"peer {peer!r} stayed unavailable",
                             inbound.metadata, code="expired")


async def test_local_message_is_answered_while_relays_are_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = QueuingPeer(expect=2)
    router = Router(echo_agents(), relayer=peer, max_concurrency=2)
    channel = QueueChannel()
    async with serving(router) as nursery:
        nursery.start_soon(partial(router.pump, channel, source="discord"))
        await channel.inbound_send.send(message("remote:u1", "one", delivery_id="d1"))
        await channel.inbound_send.send(message("remote:u2", "two", delivery_id="d2"))
        with trio.fail_after(10):
            await peer.all_queued.wait()
        sent_at = trio.current_time()
        await channel.inbound_send.send(message("local:u3", "three", delivery_id="d3"))
        [answer] = await replies(channel, 1, timeout_s=60)
        waited = trio.current_time() - sent_at
        queued, running = router.queued_for("beta"), router.running
        nursery.cancel_scope.cancel()
    assert isinstance(answer, OutboundMessage)
    assert (answer.namespace.key, answer.message.content) == ("local:u3", "a:three")
    assert waited < 1.0  # at once, not after the queue's ttl
    assert queued == 2  # both relays were still waiting for beta...
    assert running == 0  # ...and neither held one of the two run slots


# -- r3: ledger ids (txn ids, session run ids) never repeat ------------------------------


async def test_ledger_ids_never_repeat_after_a_purge_and_a_restart(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    namespace = Namespace.parse("discord:dm:1:2")

    db = Database.in_state_dir(state_dir)
    await db.open()
    ledger = Ledger(db)
    epoch = await ledger.epoch()
    _, first = await ledger.record("discord", "msg-A", namespace.key, {"message": {}})
    await ledger.mark(("discord", "msg-A"), "delivered")
    runtime = Runtime(SlowEcho("a"), SqliteSessionStore(db), name="a")
    answered = await runtime.run(namespace, Message.user("what is 2+2"), run_id=str(first.id),
                                 first_attempt=True)
    assert answered.final_message.content == "a:what is 2+2"
    # The purge (older_than_s: everything) empties the table: the newest id is gone.
    assert await ledger.purge(-10) == 1
    assert await ledger.get("discord", "msg-A") is None
    await db.close()

    # Restart: a fresh Ledger on the same database file.
    db = Database.in_state_dir(state_dir)
    await db.open()
    try:
        ledger = Ledger(db)
        assert await ledger.epoch() == epoch  # same epoch: only the id tells txn ids apart
        new, second = await ledger.record("discord", "msg-B", namespace.key, {"message": {}})
        assert new
        assert second.id > first.id
        # msg-B was interrupted before its session save; recovery runs it again. Its run id
        # must not find msg-A's answer in the session.
        runtime = Runtime(SlowEcho("a"), SqliteSessionStore(db), name="a")
        rerun = await runtime.run(namespace, Message.user("tell me a joke"),
                                  run_id=str(second.id), first_attempt=False)
        assert rerun.final_message.content == "a:tell me a joke"

        # Purged again, and a fresh Ledger object on the same open database.
        await ledger.mark(("discord", "msg-B"), "delivered")
        assert await ledger.purge(-10) == 1
        _, third = await Ledger(db).record("discord", "msg-C", namespace.key, {"message": {}})
        assert third.id > second.id
    finally:
        await db.close()


# -- r4: recovery skips what finished while it read the ledger ---------------------------


class ReadHookLedger(Ledger):
    """``during_read`` (once) runs after open_entries read its rows, before it returns."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.during_read: Callable[[], Awaitable[None]] | None = None

    async def open_entries(self, source: str) -> list[LedgerEntry]:
        entries = await super().open_entries(source)
        hook, self.during_read = self.during_read, None
        if hook is not None:
            await hook()
        return entries


class GatedSendChannel(QueueChannel):
    """A channel generation whose sends wait for ``gate``; sends are logged in ``sends``."""

    def __init__(self, generation: int, gate: trio.Event,
                 sends: list[tuple[int, str | None]]) -> None:
        super().__init__()
        self.generation = generation
        self.gate = gate
        self.sends = sends
        self.sending = trio.Event()
        self.receiving = trio.Event()  # set once the pump asks for messages (recovery done)

    async def receive(self) -> InboundMessage | None:
        self.receiving.set()
        return await super().receive()

    async def send(self, response: OutboundMessage) -> None:
        self.sending.set()
        await self.gate.wait()
        self.sends.append((self.generation, response.delivery_id))
        self._record(response)


async def test_recovery_does_not_redeliver_what_settled_during_its_read(db: Database) -> None:
    ledger = ReadHookLedger(db)
    router = Router(echo_agents(), ledger=ledger)
    gate = trio.Event()
    sends: list[tuple[int, str | None]] = []
    gen1 = GatedSendChannel(1, gate, sends)
    gen2 = GatedSendChannel(2, gate, sends)
    pump1 = trio.CancelScope()

    async def pump_gen1() -> None:
        with pump1:
            await router.pump(gen1, source="hooks")

    async def settle_gen1() -> None:
        gate.set()  # gen 1's send completes now, and its outcome is written...
        await settled(router)  # ...before recovery looks at what it read

    async with serving(router) as nursery:
        nursery.start_soon(pump_gen1)
        await gen1.inbound_send.send(message("hooks:x", "hi", delivery_id="x"))
        with trio.fail_after(DEADLINE_S):
            await gen1.sending.wait()
        pump1.cancel()  # the channel restarts while its send is in flight
        before = await ledger.get("hooks", "x")
        assert before is not None and before.state == "answered"  # open: recovery reads it
        ledger.during_read = settle_gen1
        nursery.start_soon(partial(router.pump, gen2, source="hooks"))
        with trio.fail_after(DEADLINE_S):
            await gen2.receiving.wait()
        await settled(router)
        after = await ledger.get("hooks", "x")
    assert ledger.during_read is None  # the race was set up: the delivery ended mid-read
    assert sends == [(1, "x")]
    assert gen2.replies == []
    assert after is not None and after.state == "delivered"


# -- r5: a retried relay waits on the ledger, not in the pipeline ------------------------


async def test_duplicates_of_a_running_message_return_at_once_without_piling_up(
    db: Database,
) -> None:
    provider = GatedEcho()
    router = Router(echo_agents(provider), ledger=Ledger(db))
    source, txn_id = "peer:alpha", "alpha:e:1"

    def relayed() -> InboundMessage:
        return message("ops:x", "slow", delivery_id=txn_id)

    first: list[Reply] = []

    async def first_attempt() -> None:
        first.append(await router.call(relayed(), source=source))

    async with serving(router) as nursery:
        nursery.start_soon(first_attempt)
        with trio.fail_after(DEADLINE_S):
            await provider.started.wait()
        assert await router.stored_answer(source, txn_id) is None
        pending: list[int] = []
        # The first run waits for release: none of these may wait for it.
        with trio.fail_after(DEADLINE_S):
            for _ in range(20):
                duplicate = await router.call(relayed(), source=source)
                assert isinstance(duplicate, OutboundError)
                assert duplicate.code == "in_progress"
                pending.append(router.pending)
        assert max(pending) <= 2
        assert await router.stored_answer(source, txn_id) is None  # still running
        provider.release.set()
        await settled(router)
        stored = await router.stored_answer(source, txn_id)
        repeat = await router.call(relayed(), source=source)
        await settled(router)  # the repeat, too, left nothing pending
    [answer] = first
    assert isinstance(answer, OutboundMessage) and answer.message.content == "a:slow"
    assert isinstance(stored, OutboundMessage) and stored.message.content == "a:slow"
    assert isinstance(repeat, OutboundMessage) and repeat.message.content == "a:slow"
    assert provider.runs == 1


# -- r6: a broken response body is the peer's failure, never a crash ---------------------


def broken_gzip() -> Response:
    return Response(200, [("content-type", "application/json"),
                          ("content-encoding", "gzip")], b"this is not gzip")


async def test_peer_client_turns_a_broken_gzip_body_into_a_peer_error(
    nursery: trio.Nursery,
) -> None:
    peer = ScriptedPeer(script=[broken_gzip(), broken_gzip()])
    url = await peer.start(nursery)
    request = RelayRequest(txn_id="alpha:e:7", origin="alpha", hops=("alpha",),
                           namespace="remote:x", message="hi")
    async with make_http_client() as http:
        client = PeerClient("alpha", [Peer("beta", url, SECRET, timeout_s=5.0)], http,
                            retry=RetrySettings(attempts=2, backoff_base_s=0.001,
                                                backoff_max_s=0.002))
        with pytest.raises(PeerError) as info:
            await client.relay("beta", request)
    assert isinstance(info.value, PeerUnavailable)
    assert (info.value.peer, info.value.code) == ("beta", "unavailable")
    assert isinstance(info.value.__cause__, httpx.DecodingError)
    assert peer.refused == []  # the requests were fine: it is the answer that is broken
    assert [s.txn_id for s in peer.relays()] == ["alpha:e:7"] * 2


async def test_router_answers_an_error_when_the_peer_sends_broken_gzip_and_keeps_running(
    tmp_path: Path, nursery: trio.Nursery, db: Database, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same attempts as the daemon, without its backoff between them.
    monkeypatch.setattr(peering, "RETRY", RetrySettings(attempts=3, backoff_base_s=0.001,
                                                        backoff_max_s=0.002))
    peer = ScriptedPeer(script=[broken_gzip() for _ in range(3)])
    url = await peer.start(nursery)
    (tmp_path / "orrad.yaml").write_text(f"""
instance: alpha
federation:
  listen: 127.0.0.1:0
  secret: {SECRET}
  peers:
    - name: beta
      url: {url}
      namespaces: [remote]
      on_unavailable: fail
""")
    config = load_daemon_config(str(tmp_path / "orrad.yaml"))
    assert config.federation is not None
    ledger = Ledger(db)
    store = MemorySessionStore()
    channel = QueueChannel()
    async with Federation.http_client() as http:
        federation = Federation(config, config.federation, store=store,
                                current_config=lambda: config, http=http)
        agents = AgentSet({"a": Runtime(SlowEcho("a"), store, name="a")}, "a")
        router = Router(agents, ledger=ledger, relayer=federation, instance="alpha")
        async with serving(router) as inner:
            inner.start_soon(partial(router.pump, channel, source="hooks"))
            await channel.inbound_send.send(message("remote:x", "hi", delivery_id="1"))
            [error] = await replies(channel, 1)
            # The router survived: a local message is still answered.
            await channel.inbound_send.send(message("local:y", "still there?",
                                                    delivery_id="2"))
            await replies(channel, 2)
            await settled(router)
            states = [entry.state if entry is not None else None
                      for entry in [await ledger.get("hooks", "1"),
                                    await ledger.get("hooks", "2")]]
    assert isinstance(error, OutboundError)
    assert (error.code, error.delivery_id) == ("unavailable", "1")
    assert "'beta'" in error.error
    local = channel.replies[1]
    assert isinstance(local, OutboundMessage) and local.message.content == "a:still there?"
    assert len(channel.replies) == 2
    assert states == ["delivered", "delivered"]
    assert len(peer.relays()) == 3 and peer.refused == []


# -- r7: an unencodable message is refused alone ------------------------------------------


class PlatformUser:
    """What a plugin channel might keep in metadata: an object JSON cannot carry."""


class HeldLedger(Ledger):
    """The first record_many waits for ``release``; each batch's delivery ids are logged."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.entered = trio.Event()
        self.release = trio.Event()
        self.batches: list[list[str]] = []

    async def record_many(
        self, items: list[tuple[str, str, str, dict[str, Any] | bytes]], *,
        durable: bool = True,
        on_executed: Callable[[list[tuple[bool, LedgerEntry]], Committed], None] | None = None,
    ) -> list[tuple[bool, LedgerEntry]]:
        self.batches.append([delivery_id for _, delivery_id, _, _ in items])
        self.entered.set()
        await self.release.wait()
        return await super().record_many(items, durable=durable, on_executed=on_executed)


async def test_unencodable_metadata_is_refused_alone_and_others_still_flow(
    db: Database,
) -> None:
    ledger = HeldLedger(db)
    router = Router(echo_agents(), ledger=ledger)
    channel = QueueChannel()
    receipts: dict[str, Receipt] = {}

    def submitted(delivery_id: str, text: str, **metadata: Any) -> InboundMessage:
        inbound = message("p:x", text, delivery_id=delivery_id, **metadata)
        inbound.on_recorded = partial(receipts.__setitem__, delivery_id)
        return inbound

    async with serving(router):
        await router.submit(submitted("1", "first"), channel, source="plugin")
        with trio.fail_after(DEADLINE_S):
            await ledger.entered.wait()  # the recorder is writing message 1...
        # ...so these two are recorded together, in the next batch.
        await router.submit(submitted("2", "bad", author=PlatformUser()), channel,
                            source="plugin")
        await router.submit(submitted("3", "after"), channel, source="plugin")
        ledger.release.set()
        await replies(channel, 2)
        await settled(router)
        bad_entry = await ledger.get("plugin", "2")
        after_entry = await ledger.get("plugin", "3")
    refused = receipts["2"]
    assert not refused.new
    assert isinstance(refused.error, OrradError)
    assert "cannot be recorded" in str(refused.error)
    assert receipts["1"].new and receipts["1"].error is None
    assert receipts["3"].new and receipts["3"].error is None
    assert ledger.batches == [["1"], ["3"]]  # message 3 was not refused with it
    assert [(r.delivery_id, r.message.content) for r in channel.replies
            if isinstance(r, OutboundMessage)] == [("1", "a:first"), ("3", "a:after")]
    assert len(channel.replies) == 2  # nothing answered for the refused message
    assert bad_entry is None
    assert after_entry is not None and after_entry.state == "delivered"
    assert router.store_error is None  # a bad message is not a broken store
