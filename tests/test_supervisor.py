"""The channel manager under virtual time: restarts, backoff, intensity, fatal errors,
completion, reload diffs and shutdown."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import msgspec
import trio
from trio.testing import MockClock

from orrad import MemorySessionStore, Message, Namespace, Runtime
from orrad.channels.base import ChannelContext, no_typing
from orrad.config import ChannelConfig, DaemonConfig, RestartConfig
from orrad.errors import FatalChannelError
from orrad.model import InboundMessage, OutboundError, OutboundMessage
from orrad.router import AgentSet, Router
from orrad.supervisor import ChannelManager, ChannelState
from tests.scripted import ScriptedProvider, reply


class FakeConfig(ChannelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    behaviour: str = "serve"  # serve | crash | fatal | finish | hang_on_stop
    crash_after: float = 0.0


class FakeChannel:
    """A channel whose lifecycle the test scripts through its config."""

    kind: ClassVar[str] = "fake"
    config_type: ClassVar[type[ChannelConfig]] = FakeConfig
    starts: ClassVar[dict[str, list[float]]] = {}
    replies: ClassVar[list[str]] = []

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        assert isinstance(config, FakeConfig)
        self.config = config
        self.name = context.name
        self.send_channel, self.recv_channel = trio.open_memory_channel[InboundMessage](10)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        FakeChannel.starts.setdefault(self.name, []).append(trio.current_time())
        if self.config.behaviour == "fatal":
            raise FatalChannelError("token rejected: fix the token")
        task_status.started()
        if self.config.behaviour == "crash":
            await trio.sleep(self.config.crash_after)
            raise ConnectionError("connection lost")
        if self.config.behaviour == "finish":
            await self.send_channel.send(
                InboundMessage(Namespace("fin"), Message.user("last words"), {}))
            await self.send_channel.aclose()
            return
        if self.config.behaviour == "hang_on_stop":
            with trio.CancelScope(shield=True):
                await trio.sleep(1000)
        await trio.sleep_forever()

    async def receive(self) -> InboundMessage | None:
        try:
            return await self.recv_channel.receive()
        except trio.EndOfChannel:
            return None

    async def send(self, response: OutboundMessage) -> None:
        FakeChannel.replies.append(response.message.content)

    async def send_error(self, error: OutboundError) -> None:
        FakeChannel.replies.append("error")

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return no_typing()


def config(name: str, behaviour: str = "serve", *, policy: str = "permanent",
           max_restarts: int = 5, window_s: float = 60, crash_after: float = 1.0) -> FakeConfig:
    return FakeConfig(kind="fake", name=name, behaviour=behaviour, crash_after=crash_after,
                      restart=RestartConfig(policy=policy, max_restarts=max_restarts,  # type: ignore[arg-type]
                                            window_s=window_s, backoff_initial_s=1,
                                            backoff_max_s=8))


def make_manager(nursery: trio.Nursery, router: Router, seed: int = 1) -> ChannelManager:
    daemon = msgspec.convert({}, DaemonConfig)
    return ChannelManager(
        router.intake, FakeChannel, lambda c: ChannelContext(c.name or "?", daemon),
        stop_grace_s=5, rng=random.Random(seed))


def router_for(provider: ScriptedProvider | None = None) -> Router:
    runtime = Runtime(provider or ScriptedProvider([reply("ok")] * 10), MemorySessionStore())
    return Router(AgentSet({"default": runtime}, "default"))


async def start_all(nursery: trio.Nursery, provider: ScriptedProvider | None = None
                    ) -> ChannelManager:
    FakeChannel.starts = {}
    FakeChannel.replies = []
    router = router_for(provider)
    await nursery.start(router.serve)
    manager = make_manager(nursery, router)
    await nursery.start(manager.serve)
    return manager


def state(manager: ChannelManager, file: str) -> ChannelState:
    return {s.file: s.state for s in manager.statuses()}[file]


async def test_crashing_channel_restarts_with_full_jitter_while_sibling_serves(
    autojump_clock: MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a", "crash", max_restarts=100, window_s=1000),
                             "b.yaml": config("b")}, {})
        await trio.sleep(120)
        starts = FakeChannel.starts["a"]
        assert len(starts) >= 5
        # each gap = 1 s of running + a backoff within [0, min(8, 2**attempt)]
        for attempt, (t0, t1) in enumerate(itertools.pairwise(starts)):
            assert 1.0 <= t1 - t0 <= 1.0 + min(8.0, 2.0**attempt) + 1e-6
        assert FakeChannel.starts["b"] == [0.0]
        assert state(manager, "b.yaml") is ChannelState.RUNNING
        status_a = {s.name: s for s in manager.statuses()}["a"]
        assert status_a.restarts == len(starts) - 1
        assert status_a.generation == len(starts)
        assert "connection lost" in (status_a.last_error or "")
        nursery.cancel_scope.cancel()


async def test_exceeding_max_restarts_leaves_channel_failed(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a", "crash", max_restarts=2, crash_after=0.1),
                             "b.yaml": config("b")}, {})
        await trio.sleep(100)
        assert state(manager, "a.yaml") is ChannelState.FAILED
        assert len(FakeChannel.starts["a"]) == 3
        assert state(manager, "b.yaml") is ChannelState.RUNNING
        nursery.cancel_scope.cancel()


async def test_fatal_error_is_not_retried(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a", "fatal")}, {})
        await trio.sleep(100)
        assert len(FakeChannel.starts["a"]) == 1
        [status] = manager.statuses()
        assert status.state is ChannelState.FAILED
        assert status.last_error == "token rejected: fix the token"
        nursery.cancel_scope.cancel()


async def test_transient_channel_completes_after_answering(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery, ScriptedProvider([reply("bye")], delay=5))
        await manager.apply({"a.yaml": config("a", "finish", policy="transient")}, {})
        await manager.runners["a.yaml"].finished.wait()
        # completed only once the in-flight reply was delivered
        assert FakeChannel.replies == ["bye"]
        assert state(manager, "a.yaml") is ChannelState.COMPLETED
        assert len(FakeChannel.starts["a"]) == 1
        nursery.cancel_scope.cancel()


async def test_permanent_channel_that_finishes_is_restarted(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a", "finish", max_restarts=3)}, {})
        await trio.sleep(200)
        assert len(FakeChannel.starts["a"]) == 4
        assert state(manager, "a.yaml") is ChannelState.FAILED
        nursery.cancel_scope.cancel()


async def test_temporary_channel_is_never_restarted(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a", "crash", policy="temporary")}, {})
        await trio.sleep(100)
        assert len(FakeChannel.starts["a"]) == 1
        assert state(manager, "a.yaml") is ChannelState.FAILED
        nursery.cancel_scope.cancel()


async def test_stop_during_long_backoff_is_prompt(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        slow = config("a", "crash", crash_after=0.0)
        slow = msgspec.structs.replace(slow, restart=RestartConfig(
            backoff_initial_s=3600, backoff_max_s=3600))
        await manager.apply({"a.yaml": slow}, {})
        await trio.sleep(1)
        assert state(manager, "a.yaml") is ChannelState.BACKOFF
        before = trio.current_time()
        await manager.stop_all()
        assert trio.current_time() - before < 0.01
        assert state(manager, "a.yaml") is ChannelState.STOPPED
        nursery.cancel_scope.cancel()


async def test_stop_abandons_a_channel_that_ignores_cancellation(
    autojump_clock: MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a", "hang_on_stop")}, {})
        await trio.sleep(1)
        before = trio.current_time()
        await manager.stop_all()
        assert 5.0 <= trio.current_time() - before < 6.0  # the grace period, not 1000 s
        nursery.cancel_scope.cancel()


async def test_reload_diff_per_file(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"keep.yaml": config("keep"), "change.yaml": config("change"),
                             "drop.yaml": config("drop"), "broken.yaml": config("broken")}, {})
        await trio.sleep(1)
        from orrad.errors import ConfigError, ConfigErrors

        broken = ConfigErrors([ConfigError("bad", path="broken.yaml", line=1, col=1)])
        never = ConfigErrors([ConfigError("worse", path="new-bad.yaml", line=2, col=3)])
        results = await manager.apply(
            {"keep.yaml": config("keep"), "change.yaml": config("change", crash_after=7),
             "new.yaml": config("new")},
            {"broken.yaml": broken, "new-bad.yaml": never},
        )
        assert {r.file: r.result for r in results} == {
            "keep.yaml": "unchanged", "change.yaml": "restarted", "drop.yaml": "stopped",
            "new.yaml": "started", "broken.yaml": "rejected", "new-bad.yaml": "rejected"}
        await trio.sleep(1)
        by_file = {s.file: s for s in manager.statuses()}
        assert by_file["keep.yaml"].generation == 1
        assert by_file["change.yaml"].generation == 2
        assert by_file["broken.yaml"].state is ChannelState.RUNNING  # last good version
        assert by_file["new-bad.yaml"].state is ChannelState.REJECTED
        assert "drop.yaml" not in by_file
        nursery.cancel_scope.cancel()


async def test_a_rejected_file_that_is_gone_is_removed(autojump_clock: MockClock) -> None:
    from orrad.errors import ConfigError, ConfigErrors

    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        bad = ConfigErrors([ConfigError("bad", path="bad.yaml", line=1, col=1)])
        off = ConfigErrors([ConfigError("bad", path="off.yaml", line=1, col=1)])
        await manager.apply({"a.yaml": config("a")}, {"bad.yaml": bad, "off.yaml": off})
        assert manager.rejected_files() == ["bad.yaml", "off.yaml"]
        # bad.yaml deleted; off.yaml fixed but disabled: no longer rejected, nothing removed
        disabled = msgspec.structs.replace(config("off"), enabled=False)
        results = await manager.apply({"a.yaml": config("a"), "off.yaml": disabled}, {})
        assert {r.file: r.result for r in results} == {
            "a.yaml": "unchanged", "bad.yaml": "removed", "off.yaml": "unchanged"}
        assert manager.rejected_files() == []
        assert {s.file for s in manager.statuses()} == {"a.yaml"}
        results = await manager.apply({"a.yaml": config("a"), "off.yaml": disabled}, {})
        assert {r.file: r.result for r in results} == {"a.yaml": "unchanged",
                                                       "off.yaml": "unchanged"}
        nursery.cancel_scope.cancel()


async def test_nothing_starts_once_stop_all_began(autojump_clock: MockClock) -> None:
    async with trio.open_nursery() as nursery:
        manager = await start_all(nursery)
        await manager.apply({"a.yaml": config("a")}, {})
        await manager.stop_all()
        assert await manager.apply({"a.yaml": config("a"), "b.yaml": config("b")}, {}) == []
        assert "b.yaml" not in manager.runners
        nursery.cancel_scope.cancel()


async def test_stdin_at_end_of_input_is_completed_not_restarted(tmp_path: Any) -> None:
    import io
    import os

    from orrad.channels.stdin import StdinChannel
    from orrad.config import StdinChannelConfig

    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"one\ntwo\n")
    os.close(write_fd)
    output = io.StringIO()
    starts: list[int] = []

    def factory(config: ChannelConfig, context: ChannelContext) -> StdinChannel:
        starts.append(1)
        return StdinChannel(config, context, input=os.fdopen(read_fd, "rb"), output=output)

    router = router_for(ScriptedProvider([reply("first"), reply("second")]))
    daemon = msgspec.convert({}, DaemonConfig)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        manager = ChannelManager(router.intake, factory,
                                 lambda c: ChannelContext(c.name or "?", daemon))
        await nursery.start(manager.serve)
        config = StdinChannelConfig(kind="stdin", name="console")
        await manager.apply({"stdin.yaml": config}, {})
        with trio.fail_after(5):
            await manager.runners["stdin.yaml"].finished.wait()
        assert state(manager, "stdin.yaml") is ChannelState.COMPLETED
        assert manager.only_completed_stdin()
        assert output.getvalue() == "first\nsecond\n"  # answered before completing
        assert starts == [1]
        nursery.cancel_scope.cancel()


class DownAtStart(FakeChannel):
    """Starts (so the daemon is not held up) while its platform is unreachable."""

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        self.context = context

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.context.report_connection(False, "gateway unreachable")
        task_status.started()
        await trio.sleep(10)
        self.context.report_connection(True, "connected at last")
        await trio.sleep_forever()


async def test_a_channel_that_starts_disconnected_is_not_running(
    autojump_clock: MockClock,
) -> None:
    FakeChannel.starts = {}
    router = router_for()
    daemon = msgspec.convert({}, DaemonConfig)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        manager = ChannelManager(router.intake, DownAtStart,
                                 lambda c: ChannelContext(c.name or "?", daemon))
        await nursery.start(manager.serve)
        await manager.apply({"d.yaml": config("d")}, {})
        await trio.sleep(1)
        [status] = manager.statuses()
        assert status.state is ChannelState.BACKOFF
        assert status.last_error == "gateway unreachable"
        await trio.sleep(10)
        assert manager.statuses()[0].state is ChannelState.RUNNING
        nursery.cancel_scope.cancel()


async def test_interactive_stdin_prompts_after_each_answer() -> None:
    import io
    import os

    from orrad.channels.stdin import StdinChannel
    from orrad.config import StdinChannelConfig

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class TerminalInput(io.BufferedReader):
        def isatty(self) -> bool:
            return True

    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"one\ntwo\n")
    os.close(write_fd)
    screen = Terminal()

    def factory(config: ChannelConfig, context: ChannelContext) -> StdinChannel:
        return StdinChannel(config, context, input=TerminalInput(io.FileIO(read_fd)),
                            output=screen)

    router = router_for(ScriptedProvider([reply("first"), reply("second")], delay=0.05))
    daemon = msgspec.convert({}, DaemonConfig)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        manager = ChannelManager(router.intake, factory,
                                 lambda c: ChannelContext(c.name or "?", daemon))
        await nursery.start(manager.serve)
        await manager.apply({"stdin.yaml": StdinChannelConfig(kind="stdin", name="tty")}, {})
        with trio.fail_after(5):
            await manager.runners["stdin.yaml"].finished.wait()
        nursery.cancel_scope.cancel()
    # each prompt appears only once the previous answer is on screen
    assert screen.getvalue() == "> first\n> second\n> "
