"""``kill -9`` of a real ``orrad run`` talking to the fake Discord, then a restart on the same
``state_dir`` (CONTRACT §7 "nothing accepted is lost", §2.2 discord).

Two moments of death:

* **between the agent's answer and the REST send**: the fake holds every
  ``POST /channels/{id}/messages`` (:meth:`FakeDiscord.hold_rest`), so the daemon has the
  answer (with the echo provider it exists as soon as the post arrives) but never learns
  whether it was posted. After the kill, some held posts are *committed* (the message is
  created; the dead daemon never saw the response, so the restarted one must not post a
  second copy: the fake deduplicates by ``nonce`` with ``enforce_nonce``, and we count the
  messages the fake actually created) and the others are *dropped* (nothing created: the
  restarted daemon must post the stored answer);
* **while the agent is still running** (the fake OpenAI never answers the first process):
  the restarted daemon runs the message again, and the re-run must not leave a second copy
  of the user's message in the session.

Either way: every user message gets exactly one bot message, and each session holds
exactly one user entry and one assistant entry per Discord message, in order (read with
``orrad history --json``, which works with the daemon stopped).
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tests.daemon_process import DaemonProcess
from tests.fakes.discord import FakeDiscord
from tests.fakes.llm import FakeOpenAI
from tests.llm_steps import echo_step

TOKEN = "kill-token"
GUILD = "300"
MESSAGE_ROUTE = "POST /channels/{channel_id}/messages"
# (Discord channel, author): five sessions (session_scope user), the last message shares
# the first one's session, so it queues behind it in that namespace's lane.
LAYOUT = [("200", "500"), ("200", "501"), ("201", "500"), ("202", "502"), ("201", "503"),
          ("200", "500")]
SESSIONS = len(set(LAYOUT))


@dataclass
class Sent:
    token: str
    message_id: str
    channel_id: str
    author_id: str

    @property
    def namespace(self) -> str:
        return f"discord:{GUILD}:{self.channel_id}:{self.author_id}"


async def dispatch_all(fake: FakeDiscord, tag: str) -> list[Sent]:
    sent = []
    for i, (channel_id, author_id) in enumerate(LAYOUT):
        token = f"{tag}-{i}-{channel_id}-{author_id}"
        message = await fake.dispatch_message(
            f"question {token}", channel_id=channel_id, author_id=author_id,
            author_name=f"user{author_id}")
        sent.append(Sent(token, message["id"], channel_id, author_id))
    return sent


async def history(daemon: DaemonProcess, namespace: str) -> list[dict[str, Any]]:
    """``orrad history --json NS`` on the daemon's config (the daemon is stopped)."""
    result = await trio.run_process(
        [*daemon_command(), "history", "--json", namespace, "-c", str(daemon.config_path)],
        capture_stdout=True, capture_stderr=True, check=False, env=daemon.env, cwd=daemon.root)
    assert result.returncode == 0, (namespace, result.stderr.decode(errors="replace"))
    messages: list[dict[str, Any]] = json.loads(result.stdout)["messages"]
    return messages


def daemon_command() -> list[str]:
    return [sys.executable, "-m", "orrad"]


def replies_created(fake: FakeDiscord) -> Counter[str]:
    """How many messages the fake really created in answer to each user message id."""
    return Counter(m["message_reference"]["message_id"] for m in fake.created_messages
                   if m.get("message_reference"))


async def wait_replies(fake: FakeDiscord, sent: list[Sent]) -> None:
    ids = {s.message_id for s in sent}
    await fake.wait_until(lambda: ids <= set(replies_created(fake)))


async def check_outcome(fake: FakeDiscord, daemons: list[DaemonProcess], sent: list[Sent],
                        reply_prefix: str, problems: list[str] | None = None) -> None:
    """Exactly one bot message per user message, and sessions without duplicates
    (``problems`` found earlier are reported together with the session's)."""
    problems = list(problems or [])
    created = replies_created(fake)
    wrong = {s.token: created[s.message_id] for s in sent if created[s.message_id] != 1}
    assert not wrong, f"bot messages created per user message, where not exactly one: {wrong}"
    assert sum(created.values()) == len(sent), f"replies to unknown messages: {created}"
    by_reference = {m["message_reference"]["message_id"]: m for m in fake.created_messages
                    if m.get("message_reference")}
    for s in sent:
        content = by_reference[s.message_id]["content"]
        assert content.startswith(reply_prefix) and s.token in content, (s, content)

    for namespace in dict.fromkeys(s.namespace for s in sent):
        mine = [s for s in sent if s.namespace == namespace]
        messages = await history(daemons[-1], namespace)
        roles = [m["role"] for m in messages]
        texts = [str(m.get("content") or "") for m in messages]
        expected_roles = ["user", "assistant"] * len(mine)
        if roles != expected_roles:
            problems.append(f"{namespace}: roles {roles}, expected {expected_roles}; "
                            f"contents {texts}")
            continue
        for index, s in enumerate(mine):
            user, assistant = texts[2 * index], texts[2 * index + 1]
            if s.token not in user or s.token not in assistant:
                problems.append(f"{namespace}: entry {index} is {user!r} / {assistant!r}, "
                                f"expected the question and answer of {s.token}")
    assert not problems, "\n".join(problems)
    stderr = "".join(d.stderr() for d in daemons)
    assert "Traceback" not in stderr, stderr[-4000:]


async def test_kill_between_answer_and_post_then_restart(tmp_path: Path) -> None:
    """SIGKILL while the answers' posts are held by Discord: after a restart, every user
    message has exactly one reply (posts that Discord had committed are not doubled),
    and every session holds each exchange once."""
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=1000) as fake:
        fake.identify_must_wait_s = 0.01
        channel = f"kind: discord\ntoken: {TOKEN}\napi_base: {fake.api_base}\n"
        first = DaemonProcess(tmp_path)  # default agent: the echo provider
        first.write_channel("discord.yaml", channel)
        hold = fake.hold_rest(MESSAGE_ROUTE)
        await first.start()
        with trio.fail_after(25):
            await fake.wait_for_identify(1)
            sent = await dispatch_all(fake, "held")
            # A post is waiting at Discord in every Discord channel: those answers exist.
            # (The daemon may post one message at a time per channel -- one rate-limit
            # bucket -- so the other answers wait in the daemon, computed or not.)
            await fake.wait_until(lambda: {r.path.split("/")[-2] for r in hold.held}
                                  == {c for c, _ in LAYOUT})
            await trio.sleep(0.3)  # let the other messages get as far as they can
            first.signal(signal.SIGKILL)
            assert await first.stop() == -signal.SIGKILL
            assert fake.created_messages == []
            # Discord had committed the posts to channel 200 (the response never reached
            # the dead daemon); the others are dropped without creating anything.
            committed = hold.release(commit=True, where=lambda r: "/channels/200/" in r.path)
            hold.stop(commit=False)
            await fake.wait_until(lambda: all(r.status for r in hold.held))
            assert committed >= 1 and len(fake.created_messages) == committed
            nonces_committed = {m["nonce"] for m in fake.created_messages}

            second = DaemonProcess(tmp_path)  # same state_dir
            await second.start()
            await wait_replies(fake, sent)
            await trio.sleep(1.5)  # a late duplicate (redelivery, replay) shows up here
            assert await second.stop() == 0

        reposted = [r for r in fake.rest_requests if r.route == MESSAGE_ROUTE
                    and r.fault is None and (r.json or {}).get("nonce") in nonces_committed]
        print(f"held: {len(hold.held)}, committed while dead: {committed}; re-posts of "
              f"those nonces: {len(reposted)}; nonce hits: {fake.nonce_hits}")
        await check_outcome(fake, [first, second], sent, "echo: ")
        assert fake.resume_count >= 1 and fake.identify_count == 1, (
            "the restarted daemon did not resume the gateway session before identifying")


async def test_kill_while_agent_runs_then_rerun_leaves_one_user_entry(tmp_path: Path) -> None:
    """SIGKILL while every session's agent call is in flight: the restarted daemon re-runs
    the messages, answers each exactly once, and no session holds a user message twice
    (neither in the store nor in what the re-run sends to the model)."""
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=1000) as fake, \
            FakeOpenAI() as llm:
        fake.identify_must_wait_s = 0.01
        config = (f"providers:\n  llm: {{kind: openai, base_url: '{llm.base_url}', "
                  "model: m, api_key: k, max_retries: 0}\nagents:\n  main: {provider: llm}\n")
        channel = f"kind: discord\ntoken: {TOKEN}\napi_base: {fake.api_base}\n"
        first = DaemonProcess(tmp_path, extra_config=config)
        first.write_channel("discord.yaml", channel)
        llm.push(echo_step(delay_s=3600), times=SESSIONS)  # the first process never gets them
        llm.push(echo_step(), times=4 * len(LAYOUT))  # prompt answers for the restart
        await first.start()
        with trio.fail_after(25):
            await fake.wait_for_identify(1)
            sent = await dispatch_all(fake, "running")
            while len(llm.requests) < SESSIONS:  # every session's run is waiting for the model
                await trio.sleep(0.02)
            await trio.sleep(0.3)
            first.signal(signal.SIGKILL)
            assert await first.stop() == -signal.SIGKILL
            assert fake.created_messages == []
            before_restart = len(llm.requests)

            second = DaemonProcess(tmp_path, extra_config=config)
            await second.start()
            await wait_replies(fake, sent)
            await trio.sleep(1.5)
            assert await second.stop() == 0

        # What the re-runs sent to the model: each question at most once per prompt.
        problems: list[str] = []
        for request in llm.requests[before_restart:]:
            users = [str(m.get("content")) for m in request.body["messages"]
                     if m["role"] == "user"]
            if any(sum(s.token in u for u in users) > 1 for s in sent):
                problems.append(f"a re-run prompt repeats a user message: {users}")
        await check_outcome(fake, [first, second], sent, "llm: ", problems)
