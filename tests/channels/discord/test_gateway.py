"""Gateway fault scenarios (discord.md §5.4) against the fake Discord.

After each: every user message answered exactly once, no post duplicated, and the client
never closed with 1000/1001 unless it was removed.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from orrad import MemorySessionStore, Runtime
from orrad.channels.discord import DiscordChannel
from orrad.channels.discord import channel as channel_module
from orrad.channels.discord.gateway import (
    GatewayClient,
    KVSessionPersistence,
    MemorySessionPersistence,
    ResumeState,
)
from orrad.channels.discord.inbound import intents_for, parse_message_create
from orrad.channels.discord.rest import RestClient
from orrad.errors import FatalChannelError, StoreError
from orrad.router import AgentSet, Router
from orrad.state import Database, Ledger
from orrad.state.kv import KeyValueStore
from tests.channels.discord.harness import (
    assert_answered_once,
    client_closes,
    fake_discord,
    fast_options,
    make_channel,
    open_db,
    run_bot,
    until,
)
from tests.fakes.discord import FakeDiscord
from tests.scripted import ScriptedProvider, reply


def posts(fake: FakeDiscord) -> list[str]:
    return [m["content"] for m in fake.messages_posted]


async def send(fake: FakeDiscord, text: str, **kwargs: object) -> str:
    message = await fake.dispatch_message(text, **kwargs)  # type: ignore[arg-type]
    return str(message["id"])


async def test_happy_path(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, filter="all") as bot:
            mid = await send(fake, "hello")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await until(fake, lambda: fake.heartbeat_count >= 3)
            await bot.stop()
        assert posts(fake) == ["echo: hello"]
        assert_answered_once(fake, [mid])
        identify = fake.identifies[0]
        assert identify["intents"] == 37377
        assert identify["token"] == fake.token
        assert set(identify["properties"]) == {"os", "browser", "device"}
        assert "compress" not in identify
        assert fake.protocol_notes == []
        beats = fake.gateway_frames("recv", op=1)
        assert all(b.d is None or (b.server_seq is not None and b.d <= b.server_seq)
                   for b in beats)
        assert beats[-1].d == beats[-1].server_seq
        # The first beat came within one interval of Hello (jittered, not late).
        assert beats[0].time - fake.connections[0].opened_at < 0.1 + 0.05
        post = next(r for r in fake.rest_requests if r.method == "POST"
                    and r.path.endswith("/messages"))
        assert post.headers["authorization"] == f"Bot {fake.token}"
        assert post.headers["user-agent"].startswith("DiscordBot (")
        # Shut down (not removed): closed with 4000, so the session stays resumable.
        assert client_closes(fake) == [4000]
        assert bot.connection.events[0] == (True, "gateway ready")


async def test_server_heartbeat_request_is_answered_at_once(tmp_path: Path) -> None:
    async with (fake_discord(heartbeat_interval_ms=1000) as fake, open_db(tmp_path) as db,
                run_bot(fake, db) as bot):
        await until(fake, lambda: fake.heartbeat_count >= 1, timeout=2)
        before = fake.heartbeat_count
        await fake.request_heartbeat()
        await until(fake, lambda: fake.heartbeat_count > before, timeout=0.3)
        await bot.stop()


async def test_op7_mid_stream_resumes_and_delivers_queued_events(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            first = await send(fake, "one")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await fake.send_reconnect()
            queued = [await send(fake, f"queued {i}") for i in range(3)]
            await until(fake, lambda: len(fake.messages_posted) == 4)
            await bot.stop()
        assert posts(fake) == ["echo: one", "echo: queued 0", "echo: queued 1",
                               "echo: queued 2"]
        assert_answered_once(fake, [first, *queued])
        assert (fake.identify_count, fake.resume_count) == (1, 1)
        assert fake.connections[1].endpoint == "resume"
        assert fake.connections[1].resume_query_matched
        assert client_closes(fake)[0] == 4000


async def test_op7_instead_of_hello(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        fake.reconnect_instead_of_hello = 1
        async with run_bot(fake, db) as bot:
            await until(fake, lambda: fake.identify_count == 1)
            mid = await send(fake, "after the drain")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            # Again while resuming an existing session.
            fake.reconnect_instead_of_hello = 1
            await fake.drop_connection()
            await until(fake, lambda: fake.resume_count == 1)
            await bot.stop()
        assert fake.connections[0].first_op_sent == 7
        assert fake.connections[0].client_close_code not in (1000, 1001)
        assert fake.identify_count == 1
        assert [c.first_op_sent for c in fake.connections[2:]] == [7, 10]
        assert fake.connections[3].endpoint == "resume"
        assert_answered_once(fake, [mid])


async def test_zombie_connection_is_detected_while_dispatches_flow(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        # We notice the missing ACK one interval after the unanswered beat; the fake's own
        # heartbeat timeout must not come first. At its default (1.5 intervals) only 50 ms
        # separated the two, which a busy 2-core machine sometimes lost (the fake closed
        # first, with its 4000 "heartbeat timeout"), in full-suite runs only.
        fake.heartbeat_timeout_factor = 3.0
        async with run_bot(fake, db) as bot:
            await until(fake, lambda: fake.heartbeat_count >= 1)
            fake.ack_heartbeats = False
            ids: list[str] = []
            while fake.connections[0].closed_at is None:
                ids.append(await send(fake, f"z{len(ids)}"))
                await trio.sleep(0.03)
            fake.ack_heartbeats = True
            ids.append(await send(fake, "after"))
            await until(fake, lambda: fake.resume_count == 1)
            await until(fake, lambda: len(fake.messages_posted) == len(ids))
            await bot.stop()
        assert_answered_once(fake, ids)
        # We closed it, with a code that keeps the session resumable.
        assert fake.connections[0].client_close_code == 4000
        assert fake.connections[0].server_close_code is None
        assert (fake.identify_count, fake.resume_count) == (1, 1)
        assert fake.resumes[0]["seq"] >= 2
        assert any(not up for up, _ in bot.connection.events)


async def test_tcp_drop_resumes_and_replayed_events_are_handled_once(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            first = await send(fake, "before")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            fake.replay_overlap = 4  # the replay repeats events we already handled
            await fake.drop_connection()
            missed = await send(fake, "while down")
            await until(fake, lambda: fake.resume_count == 1)
            # Same message id dispatched twice with different s (G23).
            dup = await send(fake, "twice", message_id="424242")
            await send(fake, "twice", message_id="424242")
            await until(fake, lambda: len(fake.messages_posted) == 3)
            await trio.sleep(0.2)
            await bot.stop()
        assert posts(fake) == ["echo: before", "echo: while down", "echo: twice"]
        assert_answered_once(fake, [first, missed, dup])
        assert fake.identify_count == 1
        assert fake.connections[0].dropped_by_server
        ups = [up for up, _ in bot.connection.events]
        assert ups[:3] == [True, False, True]


@pytest.mark.parametrize("code", [4000, 4001, 4008, 1000, 1001])
async def test_resumable_close_codes(tmp_path: Path, code: int) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            await fake.close_connection(code)
            missed = await send(fake, "missed")
            await until(fake, lambda: fake.resume_count == 1)
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert_answered_once(fake, [missed])
        assert fake.identify_count == 1
        assert fake.connections[1].endpoint == "resume"


@pytest.mark.parametrize("code", [4007, 4009])
async def test_session_ending_close_codes_identify_again(tmp_path: Path, code: int) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            await fake.close_connection(code)
            await until(fake, lambda: fake.identify_count == 2)
            mid = await send(fake, "new session")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert fake.resumes == []  # no resume of a dead session
        assert fake.connections[1].endpoint == "gateway"
        assert_answered_once(fake, [mid])


async def test_invalid_session_resumable(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            await fake.invalid_session(True)
            await until(fake, lambda: fake.resume_count == 1)
            mid = await send(fake, "still here")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert fake.identify_count == 1
        assert fake.connections[0].client_close_code == 4000
        assert_answered_once(fake, [mid])


async def test_invalid_session_not_resumable(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            first = await send(fake, "old session")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await fake.invalid_session(False)
            await until(fake, lambda: fake.identify_count == 2)
            mid = await send(fake, "new session")
            await until(fake, lambda: len(fake.messages_posted) == 2)
            await bot.stop()
        assert fake.resumes == []
        assert fake.connections[1].endpoint == "gateway"  # the base URL, not the resume URL
        assert fake.connections[0].client_close_code not in (1000, 1001)
        assert_answered_once(fake, [first, mid])


async def test_rejected_resume_falls_back_to_identify(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            await fake.drop_connection()
            fake.expire_session()
            await until(fake, lambda: fake.identify_count == 2)
            mid = await send(fake, "fresh")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert len(fake.resumes) == 1 and fake.resume_count == 0
        assert [c.endpoint for c in fake.connections] == ["gateway", "resume", "gateway"]
        assert_answered_once(fake, [mid])


async def test_identify_limit_exhausted_waits_for_reset(tmp_path: Path) -> None:
    limit = {"remaining": 0, "reset_after": 600}
    async with fake_discord(session_start_limit=limit) as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, wait_ready=False) as bot:
            await until(fake, lambda: fake.identify_count == 1)
            mid = await send(fake, "finally")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        first = next(r for r in fake.rest_requests if r.path.endswith("/gateway/bot"))
        reset_after = first.response["session_start_limit"]["reset_after"] / 1000
        assert reset_after > 0.3
        assert len(fake.identifies) == 1  # never identified while remaining was 0
        assert fake.token_resets == 0
        assert fake.connections[0].opened_at - first.time >= reset_after
        assert (False, bot.connection.events[0][1]) == bot.connection.events[0]
        assert "session start limit" in str(bot.connection.events[0][1])
        assert_answered_once(fake, [mid])


# -- fatal close codes --------------------------------------------------------------------


async def serve_expecting_fatal(channel: DiscordChannel, fake: FakeDiscord,
                                inject: bool = True, code: int = 4004) -> FatalChannelError:
    errors: list[FatalChannelError] = []

    async def runner() -> None:
        try:
            await channel.serve()
        except FatalChannelError as exc:
            errors.append(exc)

    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            if inject:
                await fake.wait_for_identify()
                await fake.close_connection(code)
    assert len(errors) == 1
    return errors[0]


async def quiet_after(fake: FakeDiscord, seconds: float = 0.3) -> None:
    """Nothing at all goes to Discord for a while."""
    connections, requests = len(fake.connections), len(fake.rest_requests)
    await trio.sleep(seconds)
    assert (len(fake.connections), len(fake.rest_requests)) == (connections, requests)


async def test_close_4004_is_fatal(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        channel = make_channel(fake, db)
        error = await serve_expecting_fatal(channel, fake, code=4004)
        assert "rejected the bot token (4004" in str(error)
        assert "fix `token` in the channel file of 'bot'" in str(error)
        assert fake.token not in str(error)
        await quiet_after(fake)
        assert len(fake.connections) == 1


async def test_close_4014_is_fatal_with_instructions(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        fake.enabled_privileged_intents = 0
        channel = make_channel(fake, db, filter="all")
        error = await serve_expecting_fatal(channel, fake, inject=False)
        assert "4014" in str(error) and "MESSAGE CONTENT INTENT" in str(error)
        assert "Developer Portal" in str(error)
        await quiet_after(fake)
        assert fake.connections[0].server_close_code == 4014


@pytest.mark.parametrize("code", [4010, 4011, 4012, 4013])
async def test_other_fatal_codes(tmp_path: Path, code: int) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        error = await serve_expecting_fatal(make_channel(fake, db), fake, code=code)
        assert str(code) in str(error)
        await quiet_after(fake, 0.15)


async def test_bad_token_on_rest_is_fatal_before_connecting(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        channel = make_channel(fake, db, token="wrong-token")
        error = await serve_expecting_fatal(channel, fake, inject=False)
        assert "HTTP 401" in str(error) and "wrong-token" not in str(error)
        await quiet_after(fake)
        assert fake.connections == []
        assert len(fake.rest_requests) == 1


# -- restarts -----------------------------------------------------------------------------


async def test_restart_resumes_before_identifying_and_replays_missed(tmp_path: Path) -> None:
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            first = await send(fake, "before restart")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()  # SIGTERM: close 4000, state kept
        assert client_closes(fake) == [4000]
        missed = [await send(fake, f"while stopped {i}") for i in range(2)]
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await until(fake, lambda: len(fake.messages_posted) == 3)
            await bot.stop()
        assert (fake.identify_count, fake.resume_count) == (1, 1)
        assert fake.connections[1].endpoint == "resume"
        assert posts(fake) == ["echo: before restart", "echo: while stopped 0",
                               "echo: while stopped 1"]
        assert_answered_once(fake, [first, *missed])


async def test_removal_closes_1000_and_forgets_the_session(tmp_path: Path) -> None:
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db:
            async with run_bot(fake, db) as bot:
                await bot.stop(removed=True)
            assert await _stored_session(db) is None
        assert client_closes(fake) == [1000]
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await until(fake, lambda: fake.identify_count == 2)
            await bot.stop()
        assert fake.resumes == []


async def _stored_session(db: Database) -> object:
    from orrad.state.kv import KeyValueStore
    return await KeyValueStore(db, "discord:bot").get("gateway_session")


async def test_resume_url_survives_several_resumes(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            ids = []
            for n in range(1, 4):
                await fake.drop_connection()
                ids.append(await send(fake, f"gap {n}"))
                await until(fake, lambda n=n: fake.resume_count == n)  # type: ignore[misc]
            await until(fake, lambda: len(fake.messages_posted) == 3)
            await bot.stop()
        assert [c.endpoint for c in fake.connections] == ["gateway"] + ["resume"] * 3
        assert all(c.query == {"v": "10", "encoding": "json"} for c in fake.connections)
        assert fake.identify_count == 1
        assert_answered_once(fake, ids)


async def test_repeatedly_failing_resumes_fall_back_to_identify(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.invalid_session_on_resume = True  # op 9 "resumable", forever
            await fake.drop_connection()
            await until(fake, lambda: fake.identify_count == 2)
            fake.invalid_session_on_resume = None
            mid = await send(fake, "new session")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert len(fake.resumes) == 3
        assert_answered_once(fake, [mid])


async def test_stored_session_of_another_token_is_not_resumed(tmp_path: Path) -> None:
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await bot.stop()
        fake.token = "rotated-token"  # the operator put a new token in the file
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await until(fake, lambda: fake.identify_count == 2)
            await bot.stop()
        assert fake.resumes == []


async def test_heartbeat_cadence(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            await until(fake, lambda: fake.heartbeat_count >= 6)
            await bot.stop()
        times = [f.time for f in fake.gateway_frames("recv", op=1)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.07 <= gap <= 0.2 for gap in gaps), gaps


# -- review fixes -------------------------------------------------------------------------


def _token_tag(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_changed_filter_identifies_instead_of_resuming(tmp_path: Path) -> None:
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db, run_bot(fake, db, filter="dm") as bot:
            await bot.stop()  # restart (e.g. the file was edited): closed 4000, state kept
        async with open_db(tmp_path) as db, run_bot(fake, db, filter="mentions") as bot:
            await until(fake, lambda: fake.identify_count == 2)
            mid = await send(fake, "a guild message that mentions the bot")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert fake.resumes == []  # the dm-only session would never see guild messages
        assert [i["intents"] for i in fake.identifies] == [intents_for("dm"),
                                                           intents_for("mentions")]
        assert fake.events_filtered == []
        assert_answered_once(fake, [mid])


@pytest.mark.parametrize("change", ["intents", "api_base", "old format"])
async def test_stored_session_of_other_intents_or_api_base_is_dropped(change: str) -> None:
    rest = RestClient("tok", "https://discord.test/api/v10")
    fields: dict[str, Any] = {"intents": 513, "api_base": rest.api_base}
    if change == "old format":
        fields = {}
    else:
        fields[change] = 1 if change == "intents" else "https://other.test/api/v10"
    persistence = MemorySessionPersistence(ResumeState("s", "wss://r", 7, "1", "bot",
                                                       _token_tag("tok"), **fields))
    gateway = GatewayClient("tok", 513, rest, persistence=persistence)
    await gateway._load()
    assert gateway.session_id is None and persistence.state is None
    same = ResumeState("s", "wss://r", 7, "1", "bot", _token_tag("tok"), 513, rest.api_base)
    persistence = MemorySessionPersistence(same)
    gateway = GatewayClient("tok", 513, rest, persistence=persistence)
    await gateway._load()
    assert (gateway.session_id, gateway.seq) == ("s", 7)


async def test_unreachable_resume_url_is_given_up_for_identify(tmp_path: Path) -> None:
    dead = f"ws://127.0.0.1:{_free_port()}"
    async with fake_discord() as fake, open_db(tmp_path) as db:
        await KVSessionPersistence(KeyValueStore(db, "discord:bot")).save(ResumeState(
            "old-session", dead, 42, fake.bot_user_id, fake.bot_username,
            _token_tag(fake.token), intents_for("mentions"), fake.api_base))
        async with run_bot(fake, db, wait_ready=False) as bot:
            await until(fake, lambda: fake.identify_count == 1)
            mid = await send(fake, "after the dead resume URL")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert fake.resumes == []
        downs = [reason for up, reason in bot.connection.events if not up]
        assert len(downs) >= 3 and all("cannot connect" in str(r) for r in downs)
        assert bot.channel.gateway.resume_url == fake.resume_gateway_url
        assert_answered_once(fake, [mid])


async def test_unreachable_resume_url_is_kept_within_the_resume_window(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        options = fast_options(resume_window_s=30.0)
        async with run_bot(fake, db, options=options) as bot:
            fake.reject_upgrades = 5  # the gateway is down for a while (REST is not)
            await fake.drop_connection()
            missed = await send(fake, "during the gateway outage")
            await until(fake, lambda: fake.resume_count == 1)
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert fake.identify_count == 1
        assert_answered_once(fake, [missed])


async def test_dispatch_larger_than_one_mebibyte(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            guild = {"id": "301", "name": "huge guild",
                     "channels": [{"id": str(i), "name": "c" * 120} for i in range(9000)]}
            await fake.dispatch("GUILD_CREATE", guild)
            mid = await send(fake, "after the big event")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert len(fake.connections) == 1 and client_closes(fake) == [4000]
        assert_answered_once(fake, [mid])


async def test_malformed_message_is_ignored_and_the_next_one_answered(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            await send(fake, "poison", extra={"type": []})
            good = await send(fake, "a normal question right after")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert len(fake.connections) == 1
        assert_answered_once(fake, [good])


async def test_event_whose_handling_fails_is_skipped_not_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = parse_message_create
    calls: list[str] = []

    def parse(data: dict[str, Any], **kwargs: Any) -> Any:
        calls.append(str(data.get("content")))
        if "boom" in str(data.get("content")):
            raise RuntimeError("a bug in handling this event")
        return real(data, **kwargs)

    monkeypatch.setattr(channel_module, "parse_message_create", parse)
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await send(fake, "boom")
            good = await send(fake, "fine")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await until(fake, lambda: fake.resume_count == 1)
            await trio.sleep(0.2)
            await bot.stop()
        assert len([c for c in calls if "boom" in c]) == 1  # not replayed after the restart
        assert len(fake.connections) == 2 and fake.identify_count == 1
        assert_answered_once(fake, [good])


async def test_store_errors_in_handling_still_stop_the_gateway() -> None:
    async def on_dispatch(event: str, data: dict[str, Any]) -> bool:
        if event == "THING":
            raise StoreError("disk full")
        return False

    async with fake_discord() as fake:
        rest = RestClient(fake.token, fake.api_base)
        options = fast_options().gateway
        gateway = GatewayClient(fake.token, intents_for("mentions"), rest,
                                on_dispatch=on_dispatch, options=options)
        with pytest.raises(BaseExceptionGroup) as info, trio.fail_after(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gateway.run)
                await fake.wait_for_identify()
                await fake.dispatch("THING", {"n": 1})
        assert info.group_contains(StoreError)
        await rest.aclose()


async def test_fatal_close_stops_rest_for_answers_still_running(tmp_path: Path) -> None:
    provider = ScriptedProvider([reply(f"a{i}") for i in range(3)], delay=0.5)
    async with fake_discord() as fake, open_db(tmp_path) as db:
        channel = make_channel(fake, db)
        router = Router(AgentSet({"default": Runtime(provider, MemorySessionStore())},
                                 "default"), ledger=Ledger(db))
        errors: list[FatalChannelError] = []

        async def serve() -> None:
            try:
                await channel.serve()
            except FatalChannelError as exc:
                errors.append(exc)

        async def pump() -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(serve)
                await router.pump(channel, source="bot")

        with trio.fail_after(3):
            async with trio.open_nursery() as nursery:
                await nursery.start(router.serve)
                nursery.start_soon(pump)
                await fake.wait_for_identify()
                ids = [await send(fake, f"q{i}", channel_id=str(700 + i)) for i in range(3)]
                await until(fake, lambda: len(provider.requests) == 3)
                before = len(fake.rest_requests)
                fake.token = "reset-by-discord"  # the old token is rejected everywhere now
                await fake.close_connection(4004)
                ledger = Ledger(db)
                while True:  # the answers were computed and stored, and not sent
                    entries = [await ledger.get("bot", mid) for mid in ids]
                    if all(e is not None and e.state == "answered" for e in entries):
                        break
                    await trio.sleep(0.02)
                await trio.sleep(0.3)
                after = fake.rest_requests[before:]
                nursery.cancel_scope.cancel()
        assert len(errors) == 1 and "4004" in str(errors[0])
        assert after == []  # nothing was sent with the rejected token
        assert fake.invalid_requests == 0
        for mid in ids:  # still stored: the next start (with a fixed token) posts them
            entry = await ledger.get("bot", mid)
            assert entry is not None and entry.state == "answered"


async def test_slow_handler_never_stalls_the_reader() -> None:
    release = trio.Event()

    async def on_dispatch(event: str, data: dict[str, Any]) -> bool:
        await release.wait()  # the router does not take messages for a while
        return False

    async with fake_discord() as fake:
        rest = RestClient(fake.token, fake.api_base)
        gateway = GatewayClient(fake.token, intents_for("mentions"), rest,
                                on_dispatch=on_dispatch,
                                options=fast_options(dispatch_queue_size=1).gateway)
        with trio.fail_after(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gateway.run)
                await fake.wait_for_identify()
                for i in range(20):
                    await fake.dispatch("THING", {"n": i})
                beats = fake.heartbeat_count
                await until(fake, lambda: fake.heartbeat_count >= beats + 5)
                # Every beat was ACKed and seen: no zombie detection, no reconnect.
                assert len(fake.connections) == 1
                assert fake.connections[0].closed_at is None
                await fake.request_heartbeat()  # op 1 answered at once, too
                await until(fake, lambda: fake.heartbeat_count >= beats + 6, timeout=0.08)
                release.set()
                await gateway.close()
        await rest.aclose()


class CountingPersistence(MemorySessionPersistence):
    def __init__(self) -> None:
        super().__init__()
        self.saves: list[ResumeState] = []

    async def save(self, state: ResumeState) -> None:
        self.saves.append(state)
        await super().save(state)


async def test_resume_point_saved_in_batches_but_at_once_after_a_claim() -> None:
    async def on_dispatch(event: str, data: dict[str, Any]) -> bool:
        return event == "CLAIMED"  # a message stored in the inbox

    async with fake_discord() as fake:
        rest = RestClient(fake.token, fake.api_base)
        persistence = CountingPersistence()
        options = fast_options(seq_save_every=10, seq_save_interval_s=0.3).gateway
        gateway = GatewayClient(fake.token, intents_for("mentions"), rest,
                                persistence=persistence, on_dispatch=on_dispatch,
                                options=options)
        with trio.fail_after(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gateway.run)
                await fake.wait_for_identify()
                for i in range(25):
                    await fake.dispatch("THING", {"n": i})
                claimed = await fake.dispatch("CLAIMED", {"n": 25})
                await until(fake, lambda: persistence.state is not None
                            and persistence.state.seq == claimed, timeout=0.2)
                assert len(persistence.saves) <= 4  # not one per event
                # Events after that are saved once the interval is up...
                last = [await fake.dispatch("THING", {"n": n}) for n in range(3)][-1]
                await trio.sleep(0.1)
                assert persistence.state is not None and persistence.state.seq == claimed
                await until(fake, lambda: persistence.state is not None
                            and persistence.state.seq == last, timeout=0.5)
                # ... or when the channel stops.
                last = [await fake.dispatch("THING", {"n": n}) for n in range(3)][-1]
                await trio.sleep(0.05)
                await gateway.close()
        assert persistence.state is not None and persistence.state.seq == last
        assert persistence.state.intents == intents_for("mentions")
        assert persistence.state.api_base == rest.api_base
        await rest.aclose()
