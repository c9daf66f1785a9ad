"""Routing: per-namespace order, cross-namespace concurrency, agent selection, errors."""

from __future__ import annotations

from typing import Any

import trio

from orrad import MemorySessionStore, Message, Namespace, Runtime
from orrad.model import InboundMessage, OutboundError, OutboundMessage
from orrad.router import AgentSet, Router
from orrad.runtime.provider import CompletionRequest, CompletionResponse
from tests.scripted import QueueChannel, reply


class SlowEcho:
    """Answers ``<agent>:<text>`` after a per-text delay, recording start and end times."""

    model = None

    def __init__(self, name: str, delays: dict[str, float] | None = None) -> None:
        self.name = name
        self.delays = delays or {}
        self.log: list[tuple[str, str, float]] = []
        self.active = 0
        self.max_active = 0

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        text = request.messages[-1].content
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.log.append(("start", text, trio.current_time()))
        try:
            await trio.sleep(self.delays.get(text, 0.01))
        finally:
            self.active -= 1
        self.log.append(("end", text, trio.current_time()))
        return reply(f"{self.name}:{text}")


def inbound(ns: str, text: str, **metadata: Any) -> InboundMessage:
    return InboundMessage(Namespace.parse(ns), Message.user(text), dict(metadata))


def agents(**providers: SlowEcho) -> AgentSet:
    store = MemorySessionStore()
    runtimes = {name: Runtime(p, store, name=name) for name, p in providers.items()}
    return AgentSet(runtimes, next(iter(runtimes)))


async def test_one_namespace_in_order_others_concurrently(autojump_clock: Any) -> None:
    provider = SlowEcho("a", {"slow": 10.0})
    router = Router(agents(a=provider), max_concurrency=8)
    channel = QueueChannel()
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        await router.submit(inbound("u:1", "slow"), channel)
        await router.submit(inbound("u:1", "after-slow"), channel)
        await router.submit(inbound("u:2", "fast"), channel)
        await router.wait_idle()
        nursery.cancel_scope.cancel()
    texts = [r.message.content for r in channel.replies if isinstance(r, OutboundMessage)]
    # u:2 was not held up by u:1's slow message; u:1 kept its order.
    assert texts == ["a:fast", "a:slow", "a:after-slow"]
    ends = {text: t for kind, text, t in provider.log if kind == "end"}
    assert ends["fast"] < 1.0 <= 10.0 <= ends["slow"] <= ends["after-slow"]


async def test_max_concurrency_caps_parallel_runs(autojump_clock: Any) -> None:
    provider = SlowEcho("a", {f"m{i}": 1.0 for i in range(10)})
    router = Router(agents(a=provider), max_concurrency=3)
    channel = QueueChannel()
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        for i in range(10):
            await router.submit(inbound(f"ns:{i}", f"m{i}"), channel)
        await router.wait_idle()
        nursery.cancel_scope.cancel()
    assert provider.max_active == 3
    assert len(channel.replies) == 10


async def test_agent_selection_metadata_then_channel_then_default() -> None:
    a, b, c = SlowEcho("a"), SlowEcho("b"), SlowEcho("c")
    router = Router(agents(a=a, b=b, c=c))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        r1 = await router.call(inbound("x:1", "hi", agent="B"))
        r2 = await router.call(inbound("x:2", "hi"), channel_agent="c")
        r3 = await router.call(inbound("x:3", "hi"))
        r4 = await router.call(inbound("x:4", "hi", agent="nobody"))
        nursery.cancel_scope.cancel()
    assert [r.message.content for r in (r1, r2, r3) if isinstance(r, OutboundMessage)] == [
        "b:hi", "c:hi", "a:hi"]
    assert isinstance(r4, OutboundError)
    assert r4.code == "unknown_agent" and "nobody" in r4.error


class Exploding:
    name = "boom"
    model = None

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        raise ZeroDivisionError("bug")


async def test_unexpected_error_becomes_error_reply_not_crash() -> None:
    router = Router(AgentSet({"x": Runtime(Exploding(), MemorySessionStore())}, "x"))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        result = await router.call(inbound("x:1", "hi"))
        again = await router.call(inbound("x:1", "hi"))
        nursery.cancel_scope.cancel()
    assert isinstance(result, OutboundError) and result.code == "internal"
    assert "bug" not in result.error  # internals are not shown to users
    assert isinstance(again, OutboundError)


class BrokenChannel(QueueChannel):
    async def send(self, response: OutboundMessage) -> None:
        raise RuntimeError("socket gone")


async def test_failed_delivery_does_not_stop_the_lane() -> None:
    router = Router(agents(a=SlowEcho("a")))
    channel = BrokenChannel()
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        await router.submit(inbound("x:1", "one"), channel)
        await router.submit(inbound("x:1", "two"), channel)
        await router.wait_idle()
        nursery.cancel_scope.cancel()
    assert router.pending == 0


class TypingFails(QueueChannel):
    def start_typing(self, metadata: Any) -> Any:
        raise RuntimeError("typing API down")


class TypingFailsOnExit(QueueChannel):
    def start_typing(self, metadata: Any) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def broken() -> Any:
            yield
            raise RuntimeError("could not stop typing")

        return broken()


async def test_a_failing_typing_indicator_never_fails_the_run() -> None:
    router = Router(agents(a=SlowEcho("a")))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        for channel in (TypingFails(), TypingFailsOnExit()):
            await router.submit(inbound("t:1", "hi"), channel)
            await router.wait_idle()
            [reply_] = channel.replies
            assert isinstance(reply_, OutboundMessage) and reply_.message.content == "a:hi"
        nursery.cancel_scope.cancel()


class LeakyProvider:
    name = "leaky"
    model = None

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        from orrad.errors import ProviderAuthError

        raise ProviderAuthError("HTTP 401: invalid key sk-live-123 for org-acme", status=401)


async def test_provider_details_are_logged_not_shown_to_users() -> None:
    router = Router(AgentSet({"x": Runtime(LeakyProvider(), MemorySessionStore())}, "x"))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        result = await router.call(inbound("x:1", "hi"))
        nursery.cancel_scope.cancel()
    assert isinstance(result, OutboundError) and result.code == "provider_error"
    assert result.error == ("provider error: the model provider rejected our credentials "
                            "(HTTP 401)")
    assert "sk-live" not in result.error and "org-acme" not in result.error
