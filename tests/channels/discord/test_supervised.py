"""The Discord channel under the real supervisor: states, fatal errors, stop codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio

from orrad import MemorySessionStore, Runtime
from orrad.channels.base import ChannelContext
from orrad.channels.discord import DiscordChannel
from orrad.config import ChannelConfig, DaemonConfig, DiscordChannelConfig
from orrad.router import AgentSet, Router
from orrad.runtime.providers.echo import EchoProvider
from orrad.state import Database
from orrad.supervisor import ChannelManager, ChannelState
from tests.channels.discord.harness import fake_discord, fast_options, open_db, until
from tests.fakes.discord import FakeDiscord

FILE = "discord.yaml"


@asynccontextmanager
async def supervised(db: Database) -> AsyncIterator[ChannelManager]:
    daemon = msgspec.convert({}, DaemonConfig)
    router = Router(AgentSet({"default": Runtime(EchoProvider(), MemorySessionStore())},
                             "default"))

    def factory(config: ChannelConfig, context: ChannelContext) -> DiscordChannel:
        return DiscordChannel(config, context, options=fast_options())

    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        manager = ChannelManager(router.intake, factory,
                                 lambda c: ChannelContext(c.name or "?", daemon, db),
                                 stop_grace_s=2.0)
        await nursery.start(manager.serve)
        yield manager
        nursery.cancel_scope.cancel()


def config(fake: FakeDiscord, **kwargs: Any) -> DiscordChannelConfig:
    return DiscordChannelConfig(kind="discord", name="bot", token=fake.token,
                                api_base=fake.api_base, **kwargs)


def state(manager: ChannelManager) -> ChannelState:
    return manager.statuses()[0].state


async def wait_state(manager: ChannelManager, wanted: ChannelState) -> None:
    with trio.fail_after(3):
        while state(manager) is not wanted:
            await trio.sleep(0.01)


async def test_running_backoff_running_then_removed_with_1000(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db, supervised(db) as manager:
        await manager.apply({FILE: config(fake)}, {})
        await wait_state(manager, ChannelState.RUNNING)
        fake.reject_upgrades = 3  # the gateway is unreachable for a while
        await fake.drop_connection()
        await wait_state(manager, ChannelState.BACKOFF)
        assert "gateway" in (manager.statuses()[0].last_error or "")
        await until(fake, lambda: fake.resume_count == 1)
        await wait_state(manager, ChannelState.RUNNING)
        status = manager.statuses()[0]
        assert status.generation == 1 and status.restarts == 0  # reconnected in place
        await fake.dispatch_message("still answering")
        await until(fake, lambda: len(fake.messages_posted) == 1)
        await manager.apply({}, {})  # the file was removed
        assert fake.connections[-1].client_close_code == 1000


async def test_shutdown_closes_4000(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db, supervised(db) as manager:
        await manager.apply({FILE: config(fake)}, {})
        await wait_state(manager, ChannelState.RUNNING)
        await manager.stop_all()
        assert [c.client_close_code for c in fake.connections] == [4000]
        assert state(manager) is ChannelState.STOPPED


async def test_fatal_close_leaves_the_channel_failed(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db, supervised(db) as manager:
        fake.enabled_privileged_intents = 0
        await manager.apply({FILE: config(fake, filter="all")}, {})
        await wait_state(manager, ChannelState.FAILED)
        status = manager.statuses()[0]
        assert "MESSAGE CONTENT INTENT" in (status.last_error or "")
        assert status.restarts == 0
        await trio.sleep(0.3)
        assert len(fake.connections) == 1  # no retry


async def test_unreachable_discord_is_backoff_not_starting(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db, supervised(db) as manager:
        fake.reject_upgrades = 1000
        await manager.apply({FILE: config(fake)}, {})
        await wait_state(manager, ChannelState.BACKOFF)
        fake.reject_upgrades = 0
        await wait_state(manager, ChannelState.RUNNING)
        # The fake counts an IDENTIFY once it has sent READY and the guilds, so the channel
        # can be running (READY read) a moment before the count moves.
        await until(fake, lambda: fake.identify_count >= 1)
        assert fake.identify_count == 1
