"""BaseChannel hands its messages to the router's pump in its own task when there is room
(``take_directly``), through ``receive()`` otherwise: never out of order, nothing lost."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import trio
import trio.testing

from orrad import MemorySessionStore, Message, Namespace, Runtime
from orrad.channels.base import BaseChannel, ChannelContext
from orrad.config import ChannelConfig, DaemonConfig
from orrad.errors import ChannelClosed
from orrad.model import InboundMessage, OutboundError, OutboundMessage
from orrad.router import AgentSet, Router
from orrad.runtime.provider import CompletionRequest, CompletionResponse
from tests.scripted import reply


class SlowEcho:
    """Echoes after ``delay_s``, so messages pile up behind the router's pending cap."""

    model = None
    name = "slow-echo"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        await trio.sleep(self.delay_s)
        return reply(f"echo:{request.messages[-1].content}")


class Recording(BaseChannel):
    kind = "recording"
    config_type = ChannelConfig

    def __init__(self) -> None:
        super().__init__(ChannelConfig(kind="recording", name="rec"),
                         ChannelContext("rec", DaemonConfig()))
        self.replies: list[str] = []
        self.received = 0  # messages that went through receive() (no room at hand-over)
        self.attached = trio.Event()  # the pump takes messages directly from now on
        self.receiving = trio.Event()  # receive() waits for it (the test opens it)
        self.receiving.set()
        self._reply_arrived = trio.Event()

    def take_directly(self, take_now: Callable[[InboundMessage], bool] | None) -> None:
        super().take_directly(take_now)
        if take_now is not None:
            self.attached.set()

    async def wait_for_replies(self, count: int) -> None:
        with trio.fail_after(60):
            while len(self.replies) < count:
                await self._reply_arrived.wait()

    async def receive(self) -> InboundMessage | None:
        await self.receiving.wait()
        inbound = await super().receive()
        if inbound is not None:
            self.received += 1
        return inbound

    async def send(self, response: OutboundMessage) -> None:
        self._record(response.message.content)

    async def send_error(self, error: OutboundError) -> None:
        self._record(f"error:{error.error}")

    def _record(self, text: str) -> None:
        self.replies.append(text)
        self._reply_arrived.set()
        self._reply_arrived = trio.Event()


def message(text: str) -> InboundMessage:
    return InboundMessage(Namespace.parse("room:1"), Message.user(text), {})


def router(max_pending: int) -> Router:
    runtime = Runtime(SlowEcho(0.5), MemorySessionStore())
    return Router(AgentSet({"default": runtime}, "default"), max_pending=max_pending)


async def test_one_sender_keeps_its_order_when_some_wait_for_room(autojump_clock: Any
                                                                   ) -> None:
    """With two pending slots, a burst of twelve from one task takes the direct path when
    there is room and the queue when there is not; the replies come in sending order."""
    channel, pipeline = Recording(), router(max_pending=2)
    texts = [f"m{i}" for i in range(12)]
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.serve)
        nursery.start_soon(partial(pipeline.pump, channel, source="rec"))
        await channel.attached.wait()  # the pump attaches once its recovery is done
        for text in texts:
            await channel.deliver(message(text))
        channel.close_intake()
        await channel.wait_for_replies(len(texts))
        nursery.cancel_scope.cancel()
    assert channel.replies == [f"echo:{text}" for text in texts]
    # Both paths were used: the first two went straight in, the third found no room.
    assert 0 < channel.received <= len(texts) - 2
    assert channel._queued == 0


async def test_messages_sent_during_the_recovery_queue_and_later_ones_follow_them(
        autojump_clock: Any) -> None:
    """Before the pump has attached (its recovery), a delivery waits in the queue; one
    made after the pump attached, while the first is still there, queues behind it
    instead of being taken directly."""
    channel, pipeline = Recording(), router(max_pending=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.serve)

        async def sender(texts: list[str]) -> None:
            for text in texts:
                await channel.deliver(message(text))

        nursery.start_soon(sender, ["a"])
        await trio.testing.wait_all_tasks_blocked()  # "a" waits in the queue
        assert channel._queued == 1
        channel.receiving = trio.Event()  # the pump attaches, but does not receive yet
        nursery.start_soon(partial(pipeline.pump, channel, source="rec"))
        await channel.attached.wait()
        nursery.start_soon(sender, ["b", "c"])
        await trio.testing.wait_all_tasks_blocked()
        assert channel._queued == 2 and pipeline.pending == 0  # "b" queued behind "a"
        channel.receiving.set()
        await channel.wait_for_replies(3)
        nursery.cancel_scope.cancel()
    assert channel.replies == ["echo:a", "echo:b", "echo:c"]


async def test_after_close_intake_delivery_is_refused_and_the_pump_ends(
        autojump_clock: Any) -> None:
    channel, pipeline = Recording(), router(max_pending=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.serve)
        pumped = trio.Event()

        async def pump() -> None:
            await pipeline.pump(channel, source="rec")
            pumped.set()

        nursery.start_soon(pump)
        await channel.attached.wait()
        await channel.deliver(message("last"))  # there is room: taken at once
        assert channel.received == 0
        channel.close_intake()
        try:
            await channel.accept(InboundMessage(Namespace.parse("room:1"),
                                                Message.user("late"), {}, delivery_id="x"))
        except ChannelClosed:
            pass
        else:
            raise AssertionError("a message after close_intake was taken")
        with trio.fail_after(60):
            await pumped.wait()  # returns once "last" is delivered
        nursery.cancel_scope.cancel()
    assert channel.replies == ["echo:last"]
