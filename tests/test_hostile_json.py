"""Deeply nested JSON at every boundary that decodes untrusted JSON (issue 10, item 9).

``{"message":"a","metadata":{"x":[[[...]]]}}`` with a thousand brackets is 2 KB and used to
make msgspec raise ``RecursionError``, which no boundary caught: a 500 with a logged
traceback on ``/hook`` and ``/v1/messages``, a dropped gateway connection, a crashed
provider call. Each boundary must answer it as the bad input it is (CONTRACT §4: 400
``bad_request``, "never a 500 for bad input"), and JSON nested within the bound must still
be stored and answered. Real servers on 127.0.0.1 throughout.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from orrad import MemorySessionStore, Namespace, Runtime
from orrad.channels.discord.rest import RestClient, RestError
from orrad.channels.webhook import WebhookChannel
from orrad.config import load_daemon_config
from orrad.daemon import Daemon
from orrad.errors import ProviderError
from orrad.federation.client import Peer, PeerClient, RetrySettings
from orrad.federation.errors import BadPeerResponse, PeerRejected
from orrad.federation.server import build_federation_router
from orrad.federation.signing import Signer, Verifier
from orrad.federation.wire import RelayRequest
from orrad.http import HTTPServer, Request, Response
from orrad.http import Router as HTTPRouter
from orrad.model import InboundMessage, Message, Receipt
from orrad.router import AgentSet, Router
from orrad.runtime.provider import CompletionRequest, Provider
from orrad.runtime.providers import AnthropicProvider, OpenAIProvider, RetryPolicy
from orrad.runtime.providers.echo import EchoProvider
from orrad.safejson import MAX_JSON_DEPTH
from orrad.state import Database, Ledger
from tests.channels.discord.harness import fake_discord, open_db, run_bot, until
from tests.fakes.llm import FakeAnthropic, FakeOpenAI
from tests.federation.test_server import SECRETS, MemoryHost
from tests.scripted import QueueChannel

TOKEN = "hook-token"
JSON = {"content-type": "application/json"}


def brackets(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# The body of the issue: 2 KB, a thousand arrays deep.
ISSUE_BODY = b'{"message":"a","metadata":{"x":' + brackets(1000) + b"}}"
DEEP_BODIES = {
    "issue": ISSUE_BODY,
    "objects": b'{"message":"a","metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
    "just_past_the_bound": b'{"message":"a","metadata":{"x":' + brackets(MAX_JSON_DEPTH - 1)
                           + b"}}",
}


def within_bound() -> Any:
    """Metadata as deep as a request may carry: the body is exactly MAX_JSON_DEPTH deep."""
    value: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH - 2):  # the body object and metadata are two levels
        value = [value]
    return value


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


# -- webhook and daemon API ------------------------------------------------------------------


@dataclass
class Daemonised:
    daemon: Daemon
    hook: str
    api: str

    async def ledger(self) -> list[tuple[str, dict[str, Any]]]:
        def run(conn: Any) -> list[tuple[str, dict[str, Any]]]:
            return [(source, msgspec.json.decode(payload)) for source, payload in conn.execute(
                "SELECT source, payload FROM ledger ORDER BY id")]
        return await self.daemon.db.run(run)


@asynccontextmanager
async def daemon(tmp_path: Path) -> AsyncIterator[Daemonised]:
    (tmp_path / "channels.d").mkdir()
    (tmp_path / "channels.d" / "hooks.yaml").write_text(
        f"kind: webhook\nlisten: 127.0.0.1:0\nauth:\n  bearer_token: {TOKEN}\n")
    (tmp_path / "orrad.yaml").write_text("instance: alpha\napi:\n  listen: 127.0.0.1:0\n")
    running = Daemon(load_daemon_config(str(tmp_path / "orrad.yaml")), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.run)
        await running.ready.wait()
        assert running.manager is not None and running.api_address is not None
        [runner] = running.manager.runners.values()
        assert isinstance(runner.channel, WebhookChannel) and runner.channel.address
        host, port = runner.channel.address
        api_host, api_port = running.api_address
        yield Daemonised(running, f"http://{host}:{port}/hook",
                         f"http://{api_host}:{api_port}/v1/messages")
        running.request_stop()


async def post(url: str, body: bytes) -> httpx.Response:
    headers = {**JSON, "authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, content=body, headers=headers)


@pytest.mark.parametrize("name", sorted(DEEP_BODIES))
async def test_too_deep_bodies_are_400_on_hook_and_api(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    async with daemon(tmp_path) as d:
        for url in (d.hook, d.api):
            response = await post(url, DEEP_BODIES[name])
            assert response.status_code == 400, (url, response.text)
            assert response.json() == {"error": {
                "code": "bad_request",
                "message": f"invalid JSON: JSON is nested more than {MAX_JSON_DEPTH} "
                           "levels deep"}}
        assert await d.ledger() == []  # a 4xx stores nothing
        # The daemon still serves both.
        for url in (d.hook, d.api):
            assert (await post(url, b'{"message": "still here"}')).status_code == 200
    no_errors_logged(caplog)


async def test_deep_metadata_within_the_bound_is_stored_and_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = {"x": within_bound()}
    body = msgspec.json.encode({"message": "deep", "metadata": metadata})
    assert body.count(b"[") + 2 == MAX_JSON_DEPTH
    async with daemon(tmp_path) as d:
        for url in (d.hook, d.api):
            response = await post(url, body)
            assert response.status_code == 200, response.text
            assert response.json()["message"] == "echo: deep"
        stored = await d.ledger()
        assert [source for source, _ in stored] == ["hooks", "api"]
        assert all(payload["metadata"] == metadata for _, payload in stored)
    no_errors_logged(caplog)


async def test_a_plugins_too_deep_metadata_is_refused_alone(tmp_path: Path) -> None:
    """A channel plugin (no JSON on the way in) may hand over metadata no encoder can
    nest: that one message is refused, the next is answered, the store is not 'broken'."""
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    db = Database.in_state_dir(str(tmp_path / "state"))
    await db.open()
    router = Router(AgentSet({"a": Runtime(EchoProvider(), MemorySessionStore())}, "a"),
                    ledger=Ledger(db))
    channel = QueueChannel()
    receipts: dict[str, Receipt] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        for delivery_id, metadata in (("deep", {"x": deep}), ("flat", {"x": 1})):
            inbound = InboundMessage(Namespace("p"), Message.user(delivery_id), metadata,
                                     delivery_id=delivery_id)
            inbound.on_recorded = partial(receipts.__setitem__, delivery_id)
            await router.submit(inbound, channel, source="plugin")
        with trio.fail_after(5):
            while not channel.replies:
                await channel.reply_arrived.wait()
            await router.wait_idle()
        nursery.cancel_scope.cancel()
    await db.close()
    assert receipts["deep"].error is not None and not receipts["deep"].new
    assert "cannot be recorded" in str(receipts["deep"].error)
    assert receipts["flat"].new and receipts["flat"].error is None
    assert [r.delivery_id for r in channel.replies] == ["flat"]
    assert router.store_error is None


# -- federation --------------------------------------------------------------------------------


def signed(body: bytes, target: str = "/federation/v1/relay") -> dict[str, str]:
    signer = Signer("alpha", {"beta": SECRETS["alpha"]})
    return {**JSON, **signer.headers("beta", "POST", target, body)}


async def test_too_deep_relay_body_is_400_and_reaches_no_host(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    host = MemoryHost()
    router = build_federation_router(host, Verifier("beta", SECRETS))
    addr = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
    body = (b'{"txn_id":"t1","origin":"alpha","hops":["alpha"],"namespace":"acme:1",'
            b'"message":"hi","agent":null,"metadata":{"x":' + brackets(1000) + b"}}")
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{addr[0]}:{addr[1]}/federation/v1/relay",
                                     content=body, headers=signed(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert host.relays == []
    no_errors_logged(caplog)


async def serve_raw(nursery: trio.Nursery, routes: dict[str, tuple[int, bytes]]) -> str:
    """A server answering ``routes[path] = (status, raw body)`` to any method."""
    router = HTTPRouter()
    for path, (status, body) in routes.items():
        async def answer(request: Request, status: int = status, body: bytes = body) -> Response:
            return Response(status, [("content-type", "application/json")], body)
        for method in ("GET", "POST"):
            router.add(method, path, answer)
    host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
    return f"http://{host}:{port}"


@pytest.mark.parametrize(("status", "error"), [(200, BadPeerResponse), (400, PeerRejected)])
async def test_a_peer_answering_too_deep_json_is_a_peer_error(
    nursery: trio.Nursery, status: int, error: type[Exception]
) -> None:
    url = await serve_raw(nursery, {"/federation/v1/relay": (status, ISSUE_BODY)})
    async with httpx.AsyncClient() as http:
        client = PeerClient("alpha", [Peer("beta", url, SECRETS["alpha"])], http,
                            retry=RetrySettings(attempts=1))
        request = RelayRequest(txn_id="t", origin="alpha", hops=("alpha",),
                               namespace="acme:1", message="hi")
        with pytest.raises(error) as info:
            await client.relay("beta", request)
    assert getattr(info.value, "status", None) == (502 if status == 200 else 400)


# -- providers ---------------------------------------------------------------------------------

HELLO = CompletionRequest([Message.user("hi")])
NO_RETRY = RetryPolicy(max_retries=0, timeout_s=5.0)


@pytest.mark.parametrize("status", [200, 400])
async def test_too_deep_provider_bodies_are_provider_errors(status: int) -> None:
    async with FakeOpenAI() as openai, FakeAnthropic() as anthropic, \
            httpx.AsyncClient() as client:
        providers: list[Provider] = [
            OpenAIProvider("o", client=client, base_url=openai.base_url, model="m",
                           policy=NO_RETRY),
            AnthropicProvider("a", client=client, base_url=anthropic.base_url, model="m",
                              policy=NO_RETRY),
        ]
        for fake in (openai, anthropic):
            fake.malformed(ISSUE_BODY, status=status)
        for provider in providers:
            with pytest.raises(ProviderError) as info:
                await provider.complete(HELLO)
            assert not info.value.retryable


async def test_too_deep_tool_arguments_become_empty(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI(validate=False) as fake, httpx.AsyncClient() as client:
        fake.reply_tool_calls([("c1", "current_time", '{"a": ' + "[" * 1000 + "]" * 1000 + "}")])
        provider = OpenAIProvider("o", client=client, base_url=fake.base_url, model="m",
                                  policy=NO_RETRY)
        response = await provider.complete(HELLO)
    [call] = response.message.tool_calls
    assert (call.name, call.arguments) == ("current_time", {})


# -- Discord -----------------------------------------------------------------------------------


async def test_a_too_deep_gateway_frame_is_skipped_without_reconnecting(tmp_path: Path) -> None:
    async with fake_discord() as fake, open_db(tmp_path) as db, \
            run_bot(fake, db, filter="all"):
        live = fake.live_connection
        assert live is not None
        await live.ws.send_message('{"op": 0, "t": "MESSAGE_CREATE", "s": 99, "d": {"x": '
                                   + "[" * 1000 + "]" * 1000 + "}}")
        await fake.dispatch_message("after the deep frame")
        await until(fake, lambda: len(fake.messages_posted) == 1)
        assert [m["content"] for m in fake.messages_posted] == ["echo: after the deep frame"]
        assert len(fake.connections) == 1


async def test_too_deep_discord_rest_answers_are_handled(nursery: trio.Nursery) -> None:
    url = await serve_raw(nursery, {"/gateway/bot": (200, ISSUE_BODY),
                                    "/channels/{channel_id}/messages": (200, ISSUE_BODY)})
    rest = RestClient("token", url)
    try:
        with pytest.raises(RestError) as info:
            await rest.get_gateway_bot()
        assert info.value.retryable
        assert await rest.create_message("1", "hi", reply_to=None, nonce="n") == {}
    finally:
        await rest.aclose()
