"""Gateway pieces without a server: close codes, URLs, persistence, the send limiter."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from orrad.channels.discord.gateway import (
    FATAL_CLOSE_CODES,
    CloseAction,
    KVSessionPersistence,
    MemorySessionPersistence,
    ResumeState,
    _SendLimiter,
    classify_close,
    gateway_url,
)
from orrad.state.kv import KeyValueStore
from tests.channels.discord.harness import open_db


@pytest.mark.parametrize("code", [4004, 4010, 4011, 4012, 4013, 4014])
def test_fatal_close_codes(code: int) -> None:
    assert classify_close(code) is CloseAction.FATAL
    assert str(code) in FATAL_CLOSE_CODES[code]


@pytest.mark.parametrize("code", [4003, 4007, 4009])
def test_close_codes_that_need_a_new_session(code: int) -> None:
    assert classify_close(code) is CloseAction.IDENTIFY


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 4000, 4001, 4002, 4005, 4008, 4999])
def test_close_codes_worth_a_resume(code: int) -> None:
    assert classify_close(code) is CloseAction.RESUME


def test_fatal_messages_tell_the_operator_what_to_fix() -> None:
    assert "fix `token` in {where}" in FATAL_CLOSE_CODES[4004]
    assert "MESSAGE CONTENT INTENT" in FATAL_CLOSE_CODES[4014]
    assert "Developer Portal" in FATAL_CLOSE_CODES[4014]


def test_gateway_url_adds_version_and_encoding() -> None:
    assert gateway_url("wss://gateway.discord.gg") == "wss://gateway.discord.gg/?v=10&encoding=json"
    assert gateway_url("wss://gateway.discord.gg/") == "wss://gateway.discord.gg/?v=10&encoding=json"
    assert (gateway_url("ws://127.0.0.1:5/resume?v=9&compress=zlib-stream&x=1")
            == "ws://127.0.0.1:5/resume?v=10&encoding=json&x=1")


async def test_kv_persistence_round_trip(tmp_path: Path) -> None:
    async with open_db(tmp_path) as db:
        store = KVSessionPersistence(KeyValueStore(db, "discord:bot"))
        assert await store.load() is None
        state = ResumeState("sess", "wss://resume", 42, "1000", "orrad-bot")
        await store.save(state)
        assert await store.load() == state
        await store.clear()
        assert await store.load() is None
        await KeyValueStore(db, "discord:bot").put("gateway_session", {"nonsense": 1})
        assert await store.load() is None  # unreadable state is ignored, not fatal


async def test_memory_persistence() -> None:
    store = MemorySessionPersistence()
    await store.save(ResumeState("s", "u", 1))
    assert (await store.load()) == ResumeState("s", "u", 1)
    await store.clear()
    assert await store.load() is None


async def test_send_limiter_keeps_room_for_heartbeats(autojump_clock: MockClock) -> None:
    limiter = _SendLimiter(limit=5, window=60.0, reserve=2)
    for _ in range(3):
        await limiter.acquire(priority=False)
    assert trio.current_time() == 0.0
    # Ordinary sends now wait for the window; heartbeats still go at once.
    await limiter.acquire(priority=True)
    await limiter.acquire(priority=True)
    assert trio.current_time() == 0.0
    await limiter.acquire(priority=False)
    assert trio.current_time() == pytest.approx(60.0)
