"""Nothing accepted is lost (CONTRACT §7): ``kill -9`` with accepted but unanswered
asynchronous webhooks, then a restart — every accepted request is answered exactly once."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import httpx
import trio

from orrad.http import HTTPServer, Request, Response, Router, json_response
from tests.daemon_process import DaemonProcess, free_port
from tests.fakes.llm import FakeOpenAI

REQUESTS = 12


async def test_kill_9_with_accepted_requests_then_restart(tmp_path: Path) -> None:
    callbacks: list[str] = []
    arrived = trio.Event()

    async def on_callback(request: Request) -> Response:
        body = request.json()
        callbacks.append(body["id"])
        if "message" in body and len(set(callbacks)) >= REQUESTS:
            arrived.set()
        return json_response(200, {"ok": True})

    router = Router()
    router.add("POST", "/cb", on_callback)
    async with FakeOpenAI() as fake, trio.open_nursery() as nursery:
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        callback_url = f"http://{host}:{port}/cb"
        config = (f"providers:\n  fake: {{kind: openai, base_url: '{fake.base_url}', "
                  "model: m, api_key: k, max_retries: 0}\n"
                  "agents:\n  main: {provider: fake}\n")
        hook_port = free_port()
        channel = (f"kind: webhook\nlisten: 127.0.0.1:{hook_port}\n"
                   "auth:\n  bearer_token: tok\n")
        first = DaemonProcess(tmp_path, extra_config=config)
        first.write_channel("hooks.yaml", channel)
        # The first process never answers: every completion takes far longer than the test.
        fake.reply_text("too late", delay_s=3600, times=REQUESTS)
        await first.start()
        await first.wait_api()
        hook = f"http://127.0.0.1:{hook_port}/hook"
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(REQUESTS):
                response = await client.post(
                    hook, headers={"authorization": "Bearer tok"},
                    json={"message": f"job {i}", "namespace": f"n{i % 3}", "id": f"job-{i}",
                          "callback_url": callback_url})
                assert response.status_code == 202
        with trio.fail_after(10):
            while len(fake.requests) < 3:  # one run per namespace lane is in flight
                await trio.sleep(0.02)
        first.signal(signal.SIGKILL)
        assert await first.stop() == -signal.SIGKILL
        assert callbacks == []

        fake._script.clear()  # the restarted daemon gets prompt answers
        second = DaemonProcess(tmp_path, extra_config=config)  # same folder, same state
        await second.start()
        with trio.fail_after(20):
            await arrived.wait()
        await trio.sleep(0.3)  # a duplicate callback would arrive here
        assert await second.stop() == 0
        nursery.cancel_scope.cancel()

    counts = Counter(callbacks)
    assert sorted(counts) == sorted(f"job-{i}" for i in range(REQUESTS))
    assert set(counts.values()) == {1}, counts
