"""Running a real :class:`DiscordChannel` against :class:`tests.fakes.discord.FakeDiscord`.

A :class:`Bot` is one daemon's worth of the channel: a channel object on a state database,
a router with the echo provider (or a scripted one) and the supervisor's pump loop. Times
are shrunk so every scenario runs in well under two seconds of real time.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from orrad import MemorySessionStore, Runtime
from orrad.channels.base import ChannelContext
from orrad.channels.discord import DiscordChannel, DiscordOptions
from orrad.channels.discord.gateway import GatewayOptions
from orrad.channels.discord.rest import RestOptions
from orrad.config import DaemonConfig, DiscordChannelConfig
from orrad.router import AgentSet, Router
from orrad.runtime.provider import Provider
from orrad.runtime.providers.echo import EchoProvider
from orrad.state import Database, Ledger
from tests.fakes.discord import FakeDiscord

TIMEOUT = 3.0
HEARTBEAT_MS = 100


def fast_options(**gateway: Any) -> DiscordOptions:
    knobs: dict[str, Any] = {
        "connect_timeout_s": 2.0, "hello_timeout_s": 1.0, "close_timeout_s": 0.5,
        "backoff_base_s": 0.02, "backoff_max_s": 0.2, "healthy_after_s": 0.5,
        "identify_interval_s": 0.05, "invalid_session_delay_s": (0.01, 0.05),
        "min_limit_wait_s": 0.05, "resume_window_s": 1.0,
    }
    knobs.update(gateway)
    return DiscordOptions(
        gateway=GatewayOptions(**knobs),
        rest=RestOptions(timeout_s=2.0, retry_multiplier_s=0.01, retry_max_s=0.05,
                         max_wait_s=5.0),
        typing_interval_s=0.2,
        rng=random.Random(7),
    )


def fake_discord(**kwargs: Any) -> FakeDiscord:
    """A fake with test-sized windows (identify concurrency, close graces)."""
    kwargs.setdefault("heartbeat_interval_ms", HEARTBEAT_MS)
    fake = FakeDiscord(**kwargs)
    fake.identify_must_wait_s = 0.01
    fake.reconnect_grace_s = 1.0
    fake.invalid_session_grace_s = 1.0
    # Discord's usual 5 per 5 s per channel would make most scenarios wait for a reset;
    # the rate-limit tests set their own limits.
    fake.set_rate_limit("POST /channels/{channel_id}/messages", 100, 5.0)
    fake.set_rate_limit("POST /channels/{channel_id}/typing", 100, 5.0)
    return fake


async def until(fake: FakeDiscord, predicate: Callable[[], bool],
                timeout: float = TIMEOUT) -> None:
    with trio.fail_after(timeout):
        await fake.wait_until(predicate)


@asynccontextmanager
async def open_db(path: Path) -> AsyncIterator[Database]:
    db = Database.in_state_dir(str(path))
    await db.open()
    try:
        yield db
    finally:
        await db.close()


@dataclass
class ConnectionLog:
    """What the channel told the supervisor through ``report_connection``."""

    events: list[tuple[bool, str | None]] = field(default_factory=list)

    def __call__(self, up: bool, reason: str | None) -> None:
        self.events.append((up, reason))


@dataclass
class Bot:
    channel: DiscordChannel
    router: Router
    nursery: trio.Nursery
    connection: ConnectionLog

    async def stop(self, *, removed: bool = False) -> None:
        """Like the daemon: ``aclose``, let in-flight replies finish, then cancel."""
        await self.channel.aclose(removed=removed)
        with trio.move_on_after(TIMEOUT):
            await self.router.wait_idle()
        self.nursery.cancel_scope.cancel()


def make_channel(
    fake: FakeDiscord, db: Database | None, *, token: str | None = None,
    options: DiscordOptions | None = None, log: ConnectionLog | None = None,
    daemon: DaemonConfig | None = None, **config: Any,
) -> DiscordChannel:
    daemon = daemon or msgspec.convert({}, DaemonConfig)
    context = ChannelContext("bot", daemon, db, connection_listener=log)
    cfg = DiscordChannelConfig(kind="discord", name="bot", token=token or fake.token,
                               api_base=fake.api_base, **config)
    return DiscordChannel(cfg, context, options=options or fast_options())


@asynccontextmanager
async def run_bot(
    fake: FakeDiscord, db: Database | None, *, provider: Provider | None = None,
    options: DiscordOptions | None = None, wait_ready: bool = True,
    daemon: DaemonConfig | None = None, **config: Any,
) -> AsyncIterator[Bot]:
    """Serve a channel and pump its messages through a router (with the ledger when there
    is a database), like the daemon."""
    log = ConnectionLog()
    channel = make_channel(fake, db, options=options, log=log, daemon=daemon, **config)
    runtime = Runtime(provider or EchoProvider(), MemorySessionStore())
    rerun = daemon.routing.rerun_interrupted if daemon is not None else True
    router = Router(AgentSet({"default": runtime}, "default"),
                    ledger=Ledger(db) if db is not None else None, rerun_interrupted=rerun,
                    redeliver_initial_s=0.05, redeliver_max_s=0.4)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)

        async def pump(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as inner:
                await inner.start(channel.serve)
                task_status.started()
                await router.pump(channel, source="bot")

        with trio.fail_after(TIMEOUT):
            if wait_ready:
                await nursery.start(pump)
            else:
                nursery.start_soon(pump)
        bot = Bot(channel, router, nursery, log)
        yield bot
        nursery.cancel_scope.cancel()


def replies_to(fake: FakeDiscord, message_id: str) -> list[dict[str, Any]]:
    """Posts that reply to ``message_id`` (the first chunk of each answer)."""
    return [m for m in fake.messages_posted
            if (m.get("message_reference") or {}).get("message_id") == message_id]


def assert_answered_once(fake: FakeDiscord, message_ids: list[str]) -> None:
    """No message lost, none answered twice, no post duplicated."""
    for message_id in message_ids:
        count = len(replies_to(fake, message_id))
        assert count == 1, f"message {message_id} answered {count} times"
    nonces = [m.get("nonce") for m in fake.messages_posted]
    assert len(nonces) == len(set(nonces)), "a post was duplicated"
    for posted in fake.messages_posted:
        assert posted["enforce_nonce"] is True
        assert posted["allowed_mentions"] == {"parse": [], "replied_user": False}


def client_closes(fake: FakeDiscord) -> list[int | None]:
    return [c.client_close_code for c in fake.connections]


def balanced(chunk: str) -> bool:
    return chunk.count("```") % 2 == 0


def strip_fences(text: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"```[A-Za-z0-9_+#.-]*", "", text))
