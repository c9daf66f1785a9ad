"""A real ``orrad run`` against the fake Discord: SIGTERM mid-stream, restart, resume.

The fake keeps producing messages while the daemon stops (closing with 4000, keeping the
session resumable) and while it is down (the gateway buffers them for the resume replay).
The restarted daemon must resume the same session without a new Identify and answer every
message exactly once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import trio

from tests.daemon_process import DaemonProcess
from tests.fakes.discord import FakeDiscord


async def test_sigterm_restart_resumes_and_answers_every_message_once(tmp_path: Path) -> None:
    async with FakeDiscord(token="process-token", heartbeat_interval_ms=1000) as fake:
        fake.identify_must_wait_s = 0.01
        daemon = DaemonProcess(tmp_path)
        daemon.write_channel(
            "discord.yaml",
            f"kind: discord\ntoken: process-token\napi_base: {fake.api_base}\n")
        await daemon.start()
        sent: list[str] = []

        async def produce(count: int, gap_s: float) -> None:
            for _ in range(count):
                # one Discord channel per message: each has its own rate-limit bucket
                message = await fake.dispatch_message(f"question {len(sent)}",
                                                      channel_id=str(200 + len(sent)))
                sent.append(message["id"])
                await trio.sleep(gap_s)

        with trio.fail_after(20):
            await fake.wait_for_identify(1)
            await produce(5, 0.0)
            await fake.wait_for_posts(5)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, 20, 0.01)  # keeps flowing through the stop
                await trio.sleep(0.05)
                assert await daemon.stop() == 0
            first_connection = fake.connections[0]
            assert first_connection.client_close_code == 4000
            await produce(5, 0.0)  # while the daemon is down

            restarted = DaemonProcess(tmp_path)  # same state_dir, new process
            restarted.port = daemon.port
            await restarted.start()
            await fake.wait_for_resume(1)
            await fake.wait_for_posts(len(sent))
            await trio.sleep(0.3)  # a late duplicate post would show up here
            assert await restarted.stop() == 0

        assert fake.identify_count == 1  # the restart resumed, it did not identify again
        assert fake.connections[-1].endpoint == "resume"
        replied_to = Counter(p["message_reference"]["message_id"] for p in fake.messages_posted)
        assert sorted(replied_to) == sorted(sent)
        assert set(replied_to.values()) == {1}, "a message was answered twice"
        assert "Traceback" not in daemon.stderr() + restarted.stderr()


async def test_kill_9_while_answers_are_pending_then_restart(tmp_path: Path) -> None:
    import signal

    from tests.fakes.llm import FakeOpenAI

    count = 6
    async with FakeDiscord(token="kill-token", heartbeat_interval_ms=1000) as fake, \
            FakeOpenAI() as llm:
        fake.identify_must_wait_s = 0.01
        config = (f"providers:\n  llm: {{kind: openai, base_url: '{llm.base_url}', "
                  "model: m, api_key: k, max_retries: 0}\nagents:\n  main: {provider: llm}\n")
        channel = f"kind: discord\ntoken: kill-token\napi_base: {fake.api_base}\n"
        first = DaemonProcess(tmp_path, extra_config=config)
        first.write_channel("discord.yaml", channel)
        llm.reply_text("never sent", delay_s=3600, times=count)  # the first process hangs
        await first.start()
        sent = []
        with trio.fail_after(20):
            await fake.wait_for_identify(1)
            for i in range(count):
                message = await fake.dispatch_message(f"q{i}", channel_id=str(300 + i))
                sent.append(message["id"])
            while len(llm.requests) < count:  # every message reached the agent
                await trio.sleep(0.02)
            first.signal(signal.SIGKILL)
            assert await first.stop() == -signal.SIGKILL
            assert fake.messages_posted == []

            llm._script.clear()  # prompt answers from now on
            second = DaemonProcess(tmp_path, extra_config=config)
            await second.start()
            await fake.wait_for_posts(count)
            await trio.sleep(0.3)  # a duplicate post would show up here
            assert await second.stop() == 0

    replied_to = Counter(p["message_reference"]["message_id"] for p in fake.messages_posted)
    assert sorted(replied_to) == sorted(sent)
    assert set(replied_to.values()) == {1}
