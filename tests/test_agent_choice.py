"""One agent-choice check for every intake: the webhook, ``POST /v1/messages`` and so
``orrad send --agent`` refuse the same choices with the same 400 ``unknown_agent`` and the
same message, store nothing, and accept the same ones (CONTRACT §4, §5)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from orrad.config import load_daemon_config
from orrad.daemon import Daemon

HEADERS = {"authorization": "Bearer tok", "content-type": "application/json"}


@dataclass
class Both:
    daemon: Daemon
    config: Path
    api: httpx.AsyncClient
    hook: str

    async def ledger_count(self) -> int:
        return int(await self.daemon.db.run(
            lambda conn: conn.execute("SELECT count(*) FROM ledger").fetchone()[0]))


@asynccontextmanager
async def both(tmp_path: Path) -> AsyncIterator[Both]:
    (tmp_path / "channels.d").mkdir()
    (tmp_path / "channels.d" / "hooks.yaml").write_text(
        "kind: webhook\nlisten: 127.0.0.1:0\nauth:\n  bearer_token: tok\n")
    config = tmp_path / "orrad.yaml"
    config.write_text("instance: alpha\napi:\n  listen: 127.0.0.1:0\n"
                      "agents:\n  main: {provider: echo}\n  other: {provider: echo}\n")
    daemon = Daemon(load_daemon_config(str(config)), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert daemon.api_address is not None and daemon.manager is not None
        [runner] = daemon.manager.runners.values()
        address = getattr(runner.channel, "address", None)
        assert address is not None
        host, port = daemon.api_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as api:
            yield Both(daemon, config, api, f"http://{address[0]}:{address[1]}/hook")
        daemon.request_stop()


async def _both_answers(env: Both, request: dict[str, Any]) -> list[httpx.Response]:
    via_api = await env.api.post("/v1/messages", json=request)
    async with httpx.AsyncClient(timeout=10) as client:
        via_hook = await client.post(env.hook, json=request, headers=HEADERS)
    return [via_api, via_hook]


@pytest.mark.parametrize("request_body", [
    {"metadata": {"agent": 7}},
    {"metadata": {"agent": ["main"]}},
    {"metadata": {"agent": {"a": 1}}},
    {"metadata": {"agent": True}},
    {"metadata": {"agent": 1.5}},
    {"metadata": {"agent": ""}},
    {"metadata": {"agent": "ghost"}},
    {"agent": "ghost"},
    {"agent": "ghost", "metadata": {"agent": "main"}},
    {"agent": "main@nowhere"},
])
async def test_the_api_and_the_webhook_refuse_the_same_choices_alike(
    tmp_path: Path, request_body: dict[str, Any]
) -> None:
    async with both(tmp_path) as env:
        answers = await _both_answers(env, {"message": "hi", **request_body})
        assert [a.status_code for a in answers] == [400, 400], [a.text for a in answers]
        assert [a.json()["error"]["code"] for a in answers] == ["unknown_agent"] * 2
        assert answers[0].json()["error"]["message"] == answers[1].json()["error"]["message"]
        assert await env.ledger_count() == 0


@pytest.mark.parametrize(("request_body", "agent"), [
    ({}, "main"),
    ({"agent": "OTHER"}, "other"),
    ({"metadata": {"agent": "other"}}, "other"),
    ({"agent": "", "metadata": {"agent": "other"}}, "other"),
    ({"agent": "main", "metadata": {"agent": 7}}, "main"),  # the field wins over metadata
    ({"metadata": {"agent": None}}, "main"),
])
async def test_the_api_and_the_webhook_accept_the_same_choices_alike(
    tmp_path: Path, request_body: dict[str, Any], agent: str
) -> None:
    async with both(tmp_path) as env:
        answers = await _both_answers(env, {"message": "hi", **request_body})
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert [a.json()["agent"] for a in answers] == [agent, agent]


async def test_orrad_send_with_an_unknown_agent_fails_with_the_reason(tmp_path: Path) -> None:
    async with both(tmp_path) as env:
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("ORRAD_", "NOTIFY_"))}
        # The CLI finds the daemon through api.listen: the port it actually bound.
        host, port = env.daemon.api_address or ("", 0)
        cli_config = env.config.with_name("cli.yaml")
        cli_config.write_text(f"instance: alpha\napi:\n  listen: {host}:{port}\n")
        config = str(cli_config)

        def send(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "orrad", "send", *args, "-c", config],
                                  capture_output=True, text=True, timeout=30, env=environ,
                                  check=False)

        refused = await trio.to_thread.run_sync(lambda: send("--agent", "ghost", "hi"))
        assert refused.returncode == 1
        assert "unknown agent 'ghost'" in refused.stderr
        accepted = await trio.to_thread.run_sync(lambda: send("--agent", "other", "hi"))
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.strip() == "echo: hi"
