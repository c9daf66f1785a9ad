"""The Discord channel end to end: replies, REST faults, long answers, typing, and
exactly-once answering across crashes and restarts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from orrad.channels.discord import channel as channel_module
from orrad.channels.discord.channel import reply_nonce
from orrad.channels.discord.gateway import ResumeState, SessionPersistence
from orrad.channels.discord.split import split_message
from orrad.config import DaemonConfig
from orrad.delivery import StoredReply
from orrad.errors import ChannelSendError, ProviderError
from orrad.model import Namespace, OutboundError
from orrad.router import INTERRUPTED
from orrad.state import Ledger
from tests.channels.discord.harness import (
    TIMEOUT,
    assert_answered_once,
    balanced,
    fake_discord,
    fast_options,
    open_db,
    replies_to,
    run_bot,
    until,
)
from tests.channels.discord.test_gateway import posts, send
from tests.channels.discord.test_split import long_answer
from tests.fakes.discord import FakeDiscord
from tests.scripted import ScriptedProvider, reply

MESSAGES = "POST /channels/{channel_id}/messages"


def message_posts(fake: FakeDiscord) -> list[tuple[float, int]]:
    return [(r.time, r.status) for r in fake.rest_requests if r.route == MESSAGES]


async def test_own_and_bot_messages_are_not_answered(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, filter="all") as bot:
            mid = await send(fake, "hi")
            await send(fake, "beep", bot=True, author_id="77")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await trio.sleep(0.2)  # our reply came back as MESSAGE_CREATE: not answered
            await bot.stop()
        assert posts(fake) == ["echo: hi"]
        assert_answered_once(fake, [mid])


async def test_long_answer_is_split_with_only_the_first_chunk_replying(tmp_path: Path) -> None:
    text = long_answer()
    provider = ScriptedProvider([reply(text)])
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, provider=provider) as bot:
            mid = await send(fake, "explain")
            await until(fake, lambda: len(fake.messages_posted) == 3)
            await bot.stop()
        chunks = [m["content"] for m in fake.messages_posted]
        assert chunks == split_message(text)
        assert all(len(c) <= 2000 and balanced(c) for c in chunks)
        assert [bool(m.get("message_reference")) for m in fake.messages_posted] == [
            True, False, False]
        assert [m["nonce"] for m in fake.messages_posted] == [reply_nonce(mid, i)
                                                              for i in range(3)]
        assert all(status == 200 for _, status in message_posts(fake))
        assert_answered_once(fake, [mid])
        entry = await _entry(tmp_path, mid)
        assert entry == "delivered"


async def test_bucket_429_waits_and_posts_once(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.rest_fail_next(429, retry_after=0.3, route=MESSAGES)
            mid = await send(fake, "limited")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        (t0, s0), (t1, s1) = message_posts(fake)
        assert (s0, s1) == (429, 200) and t1 - t0 >= 0.3
        assert fake.invalid_requests == 1
        assert_answered_once(fake, [mid])


async def test_global_429_pauses_and_posts_once(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.rest_fail_next(429, retry_after=0.3, global_=True, route=MESSAGES)
            mid = await send(fake, "global")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        (t0, s0), (t1, s1) = message_posts(fake)
        assert (s0, s1) == (429, 200) and t1 - t0 >= 0.3
        assert_answered_once(fake, [mid])


async def test_exhausted_bucket_is_waited_out_without_a_429(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        fake.set_rate_limit(MESSAGES, 1, 0.4)
        async with run_bot(fake, db) as bot:
            ids = [await send(fake, f"m{i}") for i in range(2)]
            await until(fake, lambda: len(fake.messages_posted) == 2)
            await bot.stop()
        assert [s for _, s in message_posts(fake)] == [200, 200]
        assert fake.invalid_requests == 0
        assert posts(fake) == ["echo: m0", "echo: m1"]
        assert_answered_once(fake, ids)


async def test_server_errors_then_success_post_once(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.rest_fail_next(502, times=2, route=MESSAGES)
            mid = await send(fake, "flaky")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert [s for _, s in message_posts(fake)] == [502, 502, 200]
        assert_answered_once(fake, [mid])


async def test_committed_then_502_is_not_posted_twice(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.rest_fail_next(502, commit=True, route=MESSAGES)
            mid = await send(fake, "committed")
            await until(fake, lambda: fake.nonce_hits == 1)
            await trio.sleep(0.1)
            await bot.stop()
        assert len(fake.messages_posted) == 1  # the retry got the original back
        assert_answered_once(fake, [mid])


async def test_missing_permission_fails_that_message_only(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        fake.add_channel("201", can_send=False)
        async with run_bot(fake, db) as bot:
            denied = await send(fake, "no perms here", channel_id="201")
            ok = await send(fake, "fine here")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await trio.sleep(0.1)
            await bot.stop()
        assert posts(fake) == ["echo: fine here"]
        assert len([r for r in fake.rest_requests
                    if r.route == MESSAGES and r.path.endswith("/201/messages")]) == 1
        assert await _entry(tmp_path, denied) == "failed"
        assert_answered_once(fake, [ok])


async def test_agent_error_is_answered_with_an_apology(tmp_path: Path) -> None:
    provider = ScriptedProvider([ProviderError("boom")])
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, provider=provider) as bot:
            mid = await send(fake, "fail please")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        # provider details stay in the log: users see a summary
        assert posts(fake) == ["Sorry, something went wrong: provider error: the model failed"]
        assert_answered_once(fake, [mid])


async def test_typing_while_the_agent_works_and_not_after(tmp_path: Path) -> None:
    provider = ScriptedProvider([reply("done")], delay=0.7)
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, provider=provider) as bot:
            mid = await send(fake, "slow one")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            typed = len(fake.typing_posts)
            await trio.sleep(0.5)
            await bot.stop()
        assert 3 <= typed <= 6  # at once, then every 0.2 s for 0.7 s
        assert len(fake.typing_posts) == typed  # stopped with the answer
        assert {channel for channel, _ in fake.typing_posts} == {"200"}
        assert_answered_once(fake, [mid])


async def test_typing_failures_do_not_delay_the_answer(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.rest_fail_next(500, times=5, route="POST /channels/{channel_id}/typing")
            mid = await send(fake, "quick")
            await until(fake, lambda: len(fake.messages_posted) == 1, timeout=1.0)
            await bot.stop()
        assert_answered_once(fake, [mid])


async def test_claimed_but_unanswered_message_is_answered_after_a_crash(tmp_path: Path) -> None:
    stuck = ScriptedProvider([reply("never sent")], delay=60)
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db, run_bot(fake, db, provider=stuck) as bot:
            saves = SavesSeen(bot.channel.gateway.persistence)
            bot.channel.gateway.persistence = saves
            mid = await send(fake, "in flight")
            await until(fake, lambda: len(fake.typing_posts) >= 1)  # the agent runs
            # ... and the message is claimed: a run may start before its ledger row is
            # committed, and the resume point moves past the message only once it is.
            assert fake.session is not None
            with trio.fail_after(TIMEOUT):
                await saves.reached(fake.session.seq)
            bot.nursery.cancel_scope.cancel()  # the process dies: no aclose
        assert fake.messages_posted == []
        # A new process (new database handle) resumes: the gateway does not replay the
        # message (its seq was stored once it was claimed); the inbox answers it.
        async with open_db(tmp_path) as db, run_bot(fake, db) as bot:
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await trio.sleep(0.2)
            await bot.stop()
        assert fake.resume_count == 1 and fake.identify_count == 1
        assert posts(fake) == ["echo: in flight"]
        assert_answered_once(fake, [mid])


async def test_stored_answer_is_posted_after_a_restart(tmp_path: Path) -> None:
    text = long_answer()
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db:
            ledger = Ledger(db)
            metadata = {"channel_id": "200", "message_id": "777", "guild_id": "300",
                        "author_id": "500", "author_name": "alice", "channel": "bot"}
            await ledger.record("bot", "777", "discord:300:200:500", {
                "message": {"role": "user", "content": "explain"}, "metadata": metadata,
                "reply_to": {}, "agent": None})
            await ledger.answer(("bot", "777"), msgspec.to_builtins(
                StoredReply(True, text, "default")))
            async with run_bot(fake, db) as bot:
                await until(fake, lambda: len(fake.messages_posted) == 3)
                await trio.sleep(0.2)
                await bot.stop()
        assert [m["content"] for m in fake.messages_posted] == split_message(text)
        assert [m["nonce"] for m in fake.messages_posted] == [reply_nonce("777", i)
                                                              for i in range(3)]
        assert replies_to(fake, "777") == fake.messages_posted[:1]
        assert await _entry(tmp_path, "777") == "delivered"


async def test_without_a_database_duplicates_are_still_dropped(tmp_path: Path) -> None:
    async with fake_discord() as fake:
        async with run_bot(fake, None) as bot:
            first = await send(fake, "once", message_id="31337")
            await send(fake, "once", message_id="31337")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await trio.sleep(0.2)
            await bot.stop()
        assert replies_to(fake, first) == fake.messages_posted


class SavesSeen:
    """The channel's own resume-state store, telling waiters how far its saves got."""

    def __init__(self, inner: SessionPersistence) -> None:
        self.inner = inner
        self.seq = 0
        self.saved = trio.Event()

    async def load(self) -> ResumeState | None:
        return await self.inner.load()

    async def save(self, state: ResumeState) -> None:
        await self.inner.save(state)
        self.seq = max(self.seq, state.seq or 0)
        self.saved.set()
        self.saved = trio.Event()

    async def clear(self) -> None:
        await self.inner.clear()

    async def reached(self, seq: int) -> None:
        """Once a save has stored a resume point at ``seq`` or later."""
        while self.seq < seq:
            await self.saved.wait()


async def _entry(tmp_path: Path, message_id: str) -> str:
    async with open_db(tmp_path) as db:
        entry = await Ledger(db).get("bot", message_id)
    assert entry is not None
    return entry.state


# -- review fixes -------------------------------------------------------------------------


async def test_answer_whose_post_gave_up_is_posted_again_while_running(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            # Two rounds of the REST client's 4 tries fail: a longer Discord outage.
            fake.rest_fail_next(503, times=8, route=MESSAGES)
            mid = await send(fake, "during an outage")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await trio.sleep(0.3)
            await bot.stop()
        statuses = [s for _, s in message_posts(fake)]
        assert statuses == [503] * 8 + [200]
        times = [t for t, _ in message_posts(fake)]
        # The redelivery waited (0.05 s, then 0.1 s) before each new round.
        assert times[4] - times[3] >= 0.05 and times[8] - times[7] >= 0.1
        assert_answered_once(fake, [mid])
        assert await _entry(tmp_path, mid) == "delivered"


async def test_answer_refused_by_discord_is_not_posted_again(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            fake.rest_fail_next(404, route=MESSAGES)
            mid = await send(fake, "the channel vanished")
            await until(fake, lambda: len(message_posts(fake)) == 1)
            await trio.sleep(0.5)  # longer than the redelivery's waits
            await bot.stop()
        assert [s for _, s in message_posts(fake)] == [404]
        assert await _entry(tmp_path, mid) == "failed"


async def test_answer_of_blank_lines_then_text(tmp_path: Path) -> None:
    provider = ScriptedProvider([reply("\n" * 2000 + "Here is the answer.")])
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, provider=provider) as bot:
            mid = await send(fake, "question")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert bot.channel._sends == 0
        assert posts(fake) == ["Here is the answer."]
        assert await _entry(tmp_path, mid) == "delivered"


async def test_a_failing_split_still_answers(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str, *args: Any, **kwargs: Any) -> list[str]:
        raise RuntimeError("a bug in splitting")

    monkeypatch.setattr(channel_module, "split_message", broken)
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db) as bot:
            mid = await send(fake, "hi")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        assert posts(fake) == ["echo: hi"]
        assert_answered_once(fake, [mid])


async def test_interrupted_message_gets_an_apology_when_rerun_is_off(tmp_path: Path) -> None:
    stuck = ScriptedProvider([reply("never sent")], delay=60)
    async with fake_discord() as fake:
        async with open_db(tmp_path) as db, run_bot(fake, db, provider=stuck) as bot:
            mid = await send(fake, "in flight")
            await until(fake, lambda: len(fake.typing_posts) >= 1)  # the agent runs
            bot.nursery.cancel_scope.cancel()  # the process dies
        daemon = msgspec.convert({"routing": {"rerun_interrupted": False}}, DaemonConfig)
        provider = ScriptedProvider([])  # never asked
        async with (open_db(tmp_path) as db,
                    run_bot(fake, db, provider=provider, daemon=daemon) as bot):
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await trio.sleep(0.2)
            await bot.stop()
        assert provider.requests == []
        assert posts(fake) == [f"Sorry, something went wrong: {INTERRUPTED}"]
        assert_answered_once(fake, [mid])
        assert await _entry(tmp_path, mid) == "delivered"


async def test_a_post_that_fails_early_releases_the_rest_client(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db, run_bot(fake, db) as bot:
        channel = bot.channel
        namespace = Namespace.parse("discord:300:200:500")
        with pytest.raises(ChannelSendError, match="channel_id") as refused:
            await channel.send_error(OutboundError(namespace, "x", {"message_id": "4242"}))
        assert not refused.value.retryable and channel._sends == 0
        # A post cancelled midway (shutdown) releases it too.
        fake.rest_delay_next(5.0, route=MESSAGES)
        with trio.move_on_after(0.2):
            await channel.send_error(OutboundError(
                namespace, "x", {"message_id": "4343", "channel_id": "200"}))
        assert channel._sends == 0
        await bot.stop()


async def test_cloudflare_ban_shows_in_status_until_it_ends(tmp_path: Path) -> None:
    options = fast_options()
    assert options.rest is not None
    options.rest.ban_cooldown_s = 0.5
    async with fake_discord() as fake, open_db(tmp_path) as db:
        async with run_bot(fake, db, options=options) as bot:
            fake.rest_fail_next(429, cloudflare=True, route=MESSAGES)
            mid = await send(fake, "banned")
            await until(fake, lambda: len(fake.messages_posted) == 1)
            await bot.stop()
        events = bot.connection.events
        banned = [i for i, (up, reason) in enumerate(events)
                  if not up and "Discord REST banned us" in str(reason)]
        assert banned, events
        assert re.fullmatch(r"Discord REST banned us \(invalid requests\); pausing until "
                            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(events[banned[0]][1]))
        assert (True, "Discord REST ban over") in events[banned[0]:]
        (t0, s0), (t1, s1) = message_posts(fake)
        assert (s0, s1) == (429, 200) and t1 - t0 >= 0.5  # nothing sent during the pause
        assert_answered_once(fake, [mid])
