"""Federation between real daemons (CONTRACT §6, issue 9 "Done when"): two or three
``orrad run`` processes on loopback ports, each with its own folder, state, ``instance``,
API, federation listener and fake OpenAI server.

Daemon ``alpha`` (A) has a webhook channel (bearer auth, ``namespace_prefix: hook``), so a
request's ``namespace: team:dev`` becomes ``hook:team:dev``; the peers' claims are written
in those full keys (``beta`` owns ``hook:team``, ``gamma`` owns ``hook:team:ops``).

Every daemon's model answers ``"<instance>/<model>: <the user's text>"`` and every agent
``x`` uses model ``m-x``, so a reply says which daemon and which agent ran it, and each
fake counts the completions its daemon asked for.

Between daemons, :class:`RelayProxy` (h11 on both sides) can stand in front of a
federation listener: it records every request (the relay bodies parsed, so ``txn_id`` and
``hops`` can be checked) and the status of every answer, and can cut the connection of the
first relay after it has read the owner's whole answer.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import msgspec
import pytest
import trio

from orrad.federation.signing import Signer
from orrad.federation.wire import PATH_HEALTH, PATH_RELAY, RelayRequest, encode
from orrad.http import HTTPServer, Request, Response, Router, json_response
from tests.daemon_process import DaemonProcess, free_port
from tests.fakes.llm import FakeOpenAI, Step

TOKEN = "hook-token"
SECRET = "shared-federation-secret"
PREFIX = "hook"
READY_S = 15.0
REPLY_S = 15.0
FAIL_WITHIN_S = 5.0  # CONTRACT §6: `fail` answers within 5 s
ACK_WITHIN_S = 8.0  # a message for a queueing peer that is down is acknowledged (202)
QUEUE_DELIVERY_S = 25.0  # B back up -> every queued message delivered
QUIET_S = 1.0  # after the last expected answer: a duplicate would show up here


# -- fakes ---------------------------------------------------------------------------------


class NamedOpenAI(FakeOpenAI):
    """Answers ``"<instance>/<model>: <last user text>"``; the script still goes first."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def default_reply(self) -> Step:
        def build(req: dict[str, Any]) -> Any:
            last = req["messages"][-1]
            text = f"{self.instance}/{req.get('model')}: {last.get('content')}"
            return {"id": self.next_id("chatcmpl-"), "object": "chat.completion",
                    "created": 0, "model": req.get("model"),
                    "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                              "total_tokens": 15}}

        return Step(200, build, [], 0.0)

    def user_texts(self) -> list[str]:
        """The last user message of every completion request, in arrival order."""
        return [r.body["messages"][-1]["content"] for r in self.requests
                if isinstance(r.body, dict) and r.body.get("messages")]


def answer(instance: str, agent: str, text: str) -> str:
    return f"{instance}/m-{agent}: {text}"


@dataclass
class Exchange:
    """One request through :class:`RelayProxy` and what the upstream answered."""

    method: str
    target: str
    body: Any  # the parsed JSON of a relay, else None
    status: int | None = None  # None: upstream gave no answer
    response: Any = None

    def summary(self) -> tuple[Any, ...]:
        """For assertion messages: who sent what where, and the answer's status and code."""
        body = self.body if isinstance(self.body, dict) else {}
        error = self.response.get("error") if isinstance(self.response, dict) else None
        return (self.method, self.target, body.get("txn_id"), body.get("origin"),
                body.get("hops"), body.get("namespace"), self.status,
                error.get("code") if isinstance(error, dict) else None)


class RelayProxy:
    """An HTTP/1.1 proxy in front of one federation listener (see the module docstring).

    Requests are forwarded byte-for-byte in target, headers (but ``connection``) and body,
    so signatures stay valid; each goes over a fresh upstream connection.
    """

    def __init__(self, upstream_port: int, *, cut_first_relay: bool = False) -> None:
        self.upstream_port = upstream_port
        self.cut_first_relay = cut_first_relay
        self.exchanges: list[Exchange] = []
        self.cuts = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def relays(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.target == PATH_RELAY]

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _read_message(conn, stream)
                if request is None:
                    return
                head, body = request
                assert isinstance(head, h11.Request)
                target = head.target.decode()
                exchange = Exchange(head.method.decode(), target, None)
                if exchange.method == "POST" and target == PATH_RELAY:
                    exchange.body = json.loads(body)
                self.exchanges.append(exchange)
                answered = await self._forward(head, body)
                if answered is None:
                    return  # upstream down: so are we
                status, headers, data = answered
                exchange.status = status
                try:
                    exchange.response = json.loads(data)
                except ValueError:
                    exchange.response = data
                if (self.cut_first_relay and self.cuts == 0 and exchange.method == "POST"
                        and target == PATH_RELAY):
                    self.cuts += 1
                    return  # the owner committed and answered; the sender never hears it
                await stream.send_all(conn.send(h11.Response(status_code=status,
                                                             headers=headers)) or b"")
                await stream.send_all(conn.send(h11.Data(data=data)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _forward(self, head: h11.Request, body: bytes
                       ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        except OSError:
            return None
        async with upstream:
            conn = h11.Connection(h11.CLIENT)
            headers = [(k, v) for k, v in head.headers.raw_items()
                       if k.lower() != b"connection"] + [(b"connection", b"close")]
            try:
                await upstream.send_all(conn.send(h11.Request(
                    method=head.method, target=head.target, headers=headers)) or b"")
                if body:
                    await upstream.send_all(conn.send(h11.Data(data=body)) or b"")
                await upstream.send_all(conn.send(h11.EndOfMessage()) or b"")
                answered = await _read_message(conn, upstream)
            except (trio.BrokenResourceError, h11.ProtocolError):
                return None
        if answered is None:
            return None
        response, data = answered
        assert isinstance(response, h11.Response)
        kept = [(k, v) for k, v in response.headers.raw_items()
                if k.lower() not in (b"connection", b"transfer-encoding")]
        kept = [(k, v) for k, v in kept if k.lower() != b"content-length"]
        kept.append((b"content-length", str(len(data)).encode()))
        return response.status_code, kept, data


async def _read_message(conn: h11.Connection, stream: trio.SocketStream
                        ) -> tuple[h11.Request | h11.Response, bytes] | None:
    """The next whole request (server side) or response (client side); None at EOF."""
    head: h11.Request | h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request | h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


# -- daemons -------------------------------------------------------------------------------


def peer(name: str, port: int, namespaces: list[str], **extra: Any) -> dict[str, Any]:
    """One ``federation.peers`` item at ``http://127.0.0.1:<port>``."""
    return {"name": name, "url": f"http://127.0.0.1:{port}", "namespaces": namespaces,
            "on_unavailable": "fail", "queue_ttl_s": 120, "timeout_s": 10, **extra}


@dataclass
class Node:
    """One ``orrad run`` of the federation, with its fake model."""

    name: str
    process: DaemonProcess
    fake: NamedOpenAI
    fed_port: int
    hook_port: int | None = None
    runs: int = 0  # how many times it was started

    @property
    def hook_url(self) -> str:
        assert self.hook_port is not None
        return f"http://127.0.0.1:{self.hook_port}/hook"

    @property
    def fed_url(self) -> str:
        return f"http://127.0.0.1:{self.fed_port}"

    def configure(self, *, peers: list[dict[str, Any]], agents: tuple[str, ...] = ("main",),
                  secret: str | None = SECRET, max_hops: int = 4) -> None:
        federation: dict[str, Any] = {"listen": f"127.0.0.1:{self.fed_port}",
                                      "max_hops": max_hops, "peers": peers}
        if secret is not None:
            federation["secret"] = secret
        config = {
            "instance": self.name,
            "api": {"listen": f"127.0.0.1:{self.process.port}"},
            "providers": {"fake": {"kind": "openai", "base_url": self.fake.base_url,
                                   "model": "m", "api_key": "k", "max_retries": 0}},
            "agents": {a: {"provider": "fake", "model": f"m-{a}"} for a in agents},
            "default_agent": agents[0],
            "federation": federation,
        }
        # JSON is YAML: no indentation to get wrong.
        self.process.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def add_webhook(self) -> None:
        self.hook_port = free_port()
        self.process.write_channel("hooks.yaml", json.dumps({
            "kind": "webhook", "listen": f"127.0.0.1:{self.hook_port}", "path": "/hook",
            "namespace_prefix": PREFIX, "reply_timeout_s": REPLY_S,
            "auth": {"bearer_token": TOKEN},
        }) + "\n")

    async def start(self) -> None:
        if self.runs:  # keep the earlier run's log next to the new one
            shutil.copy(self.process.stderr_path,
                        self.process.root / f"stderr.run{self.runs}.log")
        self.runs += 1
        await self.process.start()
        await self.wait_ready()

    async def wait_ready(self) -> None:
        """API, federation listener and (when configured) the webhook channel up."""
        async with httpx.AsyncClient(timeout=2) as client:
            with trio.fail_after(READY_S):
                while True:
                    proc = self.process.process
                    assert proc is not None
                    if proc.returncode is not None:
                        raise AssertionError(f"{self.name} exited with {proc.returncode}:\n"
                                             f"{self.process.stderr()[-3000:]}")
                    if await self._ready(client):
                        return
                    await trio.sleep(0.05)

    async def _ready(self, client: httpx.AsyncClient) -> bool:
        try:
            status = (await client.get(self.process.base_url + "/v1/status")).json()
        except (httpx.TransportError, ValueError):
            return False
        if self.hook_port is not None and not any(
                c["name"] == "hooks" and c["state"] == "running" for c in status["channels"]):
            return False
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.fed_port)
        except OSError:
            return False
        await stream.aclose()
        return True

    async def stop(self) -> int | None:
        """SIGTERM and wait (a no-op when it never started); its exit status."""
        if self.process.process is None:
            return None
        return await self.process.stop()

    # -- observing ------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.process.get("/v1/status")
        return result

    async def peer_status(self, name: str) -> dict[str, Any]:
        peers: dict[str, dict[str, Any]] = {p["name"]: p for p in (await self.status())["peers"]}
        assert name in peers, f"{self.name}'s /v1/status lists no peer {name!r}: {peers}"
        return peers[name]

    async def sessions(self) -> list[str]:
        """Namespaces of this daemon's own sessions under the webhook prefix."""
        listed = await self.process.get(f"/v1/sessions?prefix={PREFIX}")
        return sorted(s["namespace"] for s in listed)

    async def history(self, namespace: str) -> list[tuple[str, str]]:
        """``(role, content)`` of one stored session; ``[]`` when it does not exist."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{self.process.base_url}/v1/sessions/{namespace}")
        if response.status_code == 404:
            return []
        assert response.status_code == 200, response.text
        return [(m["role"], m["content"]) for m in response.json()["messages"]]

    def log(self) -> str:
        return self.process.stderr()


def make_node(root: Path, name: str, fake: NamedOpenAI, *, fed_port: int | None = None
              ) -> Node:
    return Node(name, DaemonProcess(root / name), fake, fed_port or free_port())


@asynccontextmanager
async def running(*nodes: Node) -> AsyncIterator[None]:
    """Start ``nodes`` at once (each ready); on exit SIGTERM every one that still runs
    (SIGKILL when the body failed: a failing test should not wait for a drain)."""
    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.start)
        yield
    except BaseException:
        for node in nodes:
            if node.process.process is not None:
                node.process.kill()
        raise
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes:
                await node.stop()


async def post_hook(client: httpx.AsyncClient, node: Node, message: str,
                    namespace: str | None = None, **fields: Any) -> httpx.Response:
    body: dict[str, Any] = {"message": message, **fields}
    if namespace is not None:
        body["namespace"] = namespace
    return await client.post(node.hook_url, json=body,
                             headers={"authorization": f"Bearer {TOKEN}"})


def ok_reply(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    return body


def users(history: list[tuple[str, str]]) -> list[str]:
    return [content for role, content in history if role == "user"]


def error_of(response: httpx.Response) -> tuple[str, str]:
    error = response.json()["error"]
    return error["code"], error["message"]


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     every: float = 0.1) -> None:
    """Poll the async ``predicate()`` until it is true, for at most ``timeout`` seconds."""
    try:
        with trio.fail_after(timeout):
            while not await predicate():
                await trio.sleep(every)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout:g}s: {what}") from None


# -- tests ---------------------------------------------------------------------------------


async def test_owner_answers_and_keeps_the_session_and_name_at_peer(tmp_path: Path) -> None:
    """A namespace B owns, received by A's webhook, is answered by B, whose store has the
    session (A's has none); ``agent: writer@beta`` runs B's writer even for a namespace A
    owns; a plain agent name chosen by the user travels with the relay."""
    async with NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b:
        a, b = make_node(tmp_path, "alpha", fake_a), make_node(tmp_path, "beta", fake_b)
        a.configure(peers=[peer("beta", b.fed_port, [f"{PREFIX}:team"])],
                    agents=("main", "writer"))
        a.add_webhook()
        b.configure(peers=[peer("alpha", a.fed_port, [])], agents=("main", "writer"))
        async with running(a, b), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            local = ok_reply(await post_hook(client, a, "hello local", "solo:1", id="r-1"))
            assert local["instance"] == "alpha"
            assert local["message"] == answer("alpha", "main", "hello local")

            relayed = ok_reply(await post_hook(client, a, "hello team", "team:dev", id="r-2"))
            assert relayed == {
                "id": "r-2", "message": answer("beta", "main", "hello team"),
                "namespace": f"{PREFIX}:team:dev", "agent": "main", "instance": "beta",
                "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            }

            # `writer` exists on both: the user's explicit choice goes with the relay.
            chosen = ok_reply(await post_hook(client, a, "pick writer", "team:pick",
                                              agent="writer"))
            assert (chosen["instance"], chosen["agent"]) == ("beta", "writer"), chosen
            assert chosen["message"] == answer("beta", "writer", "pick writer")

            # name@peer: B's writer, although A owns `hook:solo:w` and has a writer too.
            remote = ok_reply(await post_hook(client, a, "hello writer", "solo:w",
                                              agent="writer@beta"))
            assert remote["instance"] == "beta", remote
            assert remote["agent"].split("@")[0] == "writer", remote
            assert remote["message"] == answer("beta", "writer", "hello writer")

            # A peer's 4xx comes back unchanged; a peer nobody configured is refused here.
            for agent in ("nobody@beta", "writer@nowhere"):
                refused = await post_hook(client, a, "who?", "team:who", agent=agent)
                assert refused.status_code == 400, (agent, refused.text)
                assert error_of(refused)[0] == "unknown_agent", (agent, refused.text)

            assert fake_a.user_texts() == ["hello local"]
            assert fake_b.user_texts() == ["hello team", "pick writer", "hello writer"]
            assert await a.sessions() == [f"{PREFIX}:solo:1"]
            assert await b.sessions() == [f"{PREFIX}:solo:w", f"{PREFIX}:team:dev",
                                          f"{PREFIX}:team:pick"]
            assert await b.history(f"{PREFIX}:team:dev") == [
                ("user", "hello team"), ("assistant", answer("beta", "main", "hello team"))]
            assert await a.history(f"{PREFIX}:team:dev") == []

            # The same id again: A answers from its own ledger, B runs nothing more.
            again = ok_reply(await post_hook(client, a, "hello team", "team:dev", id="r-2"))
            assert again == relayed
            assert len(fake_b.requests) == 3


async def test_longest_prefix_wins_across_three_daemons(tmp_path: Path) -> None:
    """B owns ``hook:team``, C owns ``hook:team:ops``: each message goes to the longest
    whole-segment match, and nothing claimed stays on A."""
    async with (NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b,
                NamedOpenAI("gamma") as fake_c):
        a = make_node(tmp_path, "alpha", fake_a)
        b = make_node(tmp_path, "beta", fake_b)
        c = make_node(tmp_path, "gamma", fake_c)
        a.configure(peers=[peer("beta", b.fed_port, [f"{PREFIX}:team"]),
                           peer("gamma", c.fed_port, [f"{PREFIX}:team:ops"])])
        a.add_webhook()
        b.configure(peers=[peer("alpha", a.fed_port, [])])
        c.configure(peers=[peer("alpha", a.fed_port, [])])
        expected = {  # request namespace -> who answers
            "team:ops:x": "gamma", "team:ops": "gamma", "team:dev": "beta", "team": "beta",
            "team:opsx": "beta", "team:dev:ops": "beta", "teams:ops": "alpha",
            "other": "alpha",
        }
        async with running(a, b, c), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            answered = {}
            for namespace in expected:
                reply = ok_reply(await post_hook(client, a, f"to {namespace}", namespace))
                answered[namespace] = reply["instance"]
                assert reply["message"] == answer(reply["instance"], "main", f"to {namespace}")
            assert answered == expected
            for node, fake in ((a, fake_a), (b, fake_b), (c, fake_c)):
                mine = sorted(f"{PREFIX}:{ns}" for ns, who in expected.items()
                              if who == node.name)
                assert await node.sessions() == mine, node.name
                assert sorted(fake.user_texts()) == sorted(
                    f"to {ns}" for ns, who in expected.items() if who == node.name)


async def test_routing_loop_ends_with_508_loop_detected(tmp_path: Path) -> None:
    """A says B owns ``hook:x``, B says A owns it: the webhook answers 508
    ``loop_detected`` promptly, after at most ``max_hops`` relay calls, nothing ran."""
    max_hops = 4
    async with (NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b,
                trio.open_nursery() as nursery):
        a, b = make_node(tmp_path, "alpha", fake_a), make_node(tmp_path, "beta", fake_b)
        to_a, to_b = RelayProxy(a.fed_port), RelayProxy(b.fed_port)
        await nursery.start(to_a.serve)
        await nursery.start(to_b.serve)
        a.configure(peers=[peer("beta", to_b.port, [f"{PREFIX}:x"])], max_hops=max_hops)
        a.add_webhook()
        b.configure(peers=[peer("alpha", to_a.port, [f"{PREFIX}:x"])], max_hops=max_hops)
        async with running(a, b), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            for i in range(2):
                started = time.monotonic()
                response = await post_hook(client, a, f"round {i}", f"x:{i}")
                elapsed = time.monotonic() - started
                seen = [e.summary() for e in to_a.relays + to_b.relays]
                assert response.status_code == 508, (i, response.status_code, response.text,
                                                      seen)
                assert error_of(response)[0] == "loop_detected", response.text
                assert elapsed < FAIL_WITHIN_S, elapsed
            relays = to_a.relays + to_b.relays
            assert 2 <= len(relays) <= 2 * max_hops, [(e.target, e.body) for e in relays]
            per_message = Counter(e.body["namespace"] for e in relays)
            assert all(n <= max_hops for n in per_message.values()), per_message
            for exchange in relays:  # a loop is a 409, never retried into more calls
                assert exchange.status == 409, exchange
                assert exchange.response["error"]["code"] == "loop_detected", exchange
            assert len({e.body["txn_id"] for e in relays}) == len(relays), relays
            assert fake_a.requests == [] and fake_b.requests == []
            assert await a.sessions() == [] and await b.sessions() == []
        nursery.cancel_scope.cancel()


async def test_bad_signatures_are_401_with_their_code_and_nothing_runs(tmp_path: Path
                                                                      ) -> None:
    """Requests sent straight to B's federation listener: wrong secret, another peer's
    secret, stale or future timestamp, wrong destination, unknown origin, missing header,
    tampered body are each 401 with their code; a reused nonce is 401 ``replayed`` even
    on a new txn; nothing of the refused ones is run or stored."""
    secret_ab, secret_gb = "secret-alpha-beta", "secret-gamma-beta"
    async with NamedOpenAI("beta") as fake_b:
        b = make_node(tmp_path, "beta", fake_b)
        b.configure(peers=[peer("alpha", free_port(), [], secret=secret_ab),
                           peer("gamma", free_port(), [], secret=secret_gb)], secret=None)
        relay_url = b.fed_url + PATH_RELAY

        def relay_body(txn: str, message: str, origin: str = "alpha") -> bytes:
            return encode(RelayRequest(txn_id=txn, origin=origin, hops=(origin,),
                                       namespace=f"{PREFIX}:team:direct", message=message))

        def headers(signer: Signer, body: bytes, destination: str = "beta"
                    ) -> dict[str, str]:
            return {"content-type": "application/json",
                    **signer.headers(destination, "POST", PATH_RELAY, body)}

        body = relay_body("t-bad", "forged")
        now = time.time
        missing = headers(Signer("alpha", {"beta": secret_ab}), body)
        del missing["x-orrad-nonce"]
        cases: list[tuple[str, dict[str, str], bytes, str]] = [
            ("wrong secret", headers(Signer("alpha", {"beta": "not-the-secret"}), body),
             body, "bad_signature"),
            ("gamma's secret, claiming alpha",
             headers(Signer("alpha", {"beta": secret_gb}), body), body, "bad_signature"),
            ("alpha's secret, claiming gamma",
             headers(Signer("gamma", {"beta": secret_ab}), relay_body("t-bad", "forged",
                                                                      "gamma")),
             relay_body("t-bad", "forged", "gamma"), "bad_signature"),
            ("timestamp 10 minutes old",
             headers(Signer("alpha", {"beta": secret_ab}, clock=lambda: now() - 600), body),
             body, "clock_skew"),
            ("timestamp 10 minutes ahead",
             headers(Signer("alpha", {"beta": secret_ab}, clock=lambda: now() + 600), body),
             body, "clock_skew"),
            ("addressed to gamma",
             headers(Signer("alpha", {"gamma": secret_ab}), body, destination="gamma"),
             body, "wrong_destination"),
            ("unknown origin",
             headers(Signer("mallory", {"beta": secret_ab}), relay_body("t-bad", "forged",
                                                                        "mallory")),
             relay_body("t-bad", "forged", "mallory"), "unknown_peer"),
            ("no nonce header", missing, body, "bad_signature"),
            ("body changed after signing",
             headers(Signer("alpha", {"beta": secret_ab}), relay_body("t-bad", "innocent")),
             body, "bad_signature"),
        ]
        async with running(b), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            for label, sent_headers, sent_body, code in cases:
                response = await client.post(relay_url, content=sent_body,
                                             headers=sent_headers)
                assert response.status_code == 401, (label, response.status_code,
                                                     response.text)
                assert error_of(response)[0] == code, (label, response.text)
            assert fake_b.requests == []
            assert await b.sessions() == []
            assert await b.history(f"{PREFIX}:team:direct") == []

            # A nonce that authenticated once is refused afterwards, whatever the body.
            fixed = Signer("alpha", {"beta": secret_ab}, nonce=lambda: "fixed-nonce-0123456789")
            first_body = relay_body("t-1", "first")
            first_headers = headers(fixed, first_body)
            response = await client.post(relay_url, content=first_body, headers=first_headers)
            assert response.status_code == 200, response.text
            assert response.json()["instance"] == "beta"
            assert response.json()["txn_id"] == "t-1"
            assert response.json()["message"] == answer("beta", "main", "first")
            second_body = relay_body("t-2", "second")
            for label, sent_headers, sent_body in (
                    ("same nonce, new txn", headers(fixed, second_body), second_body),
                    ("the same request again", first_headers, first_body)):
                response = await client.post(relay_url, content=sent_body,
                                             headers=sent_headers)
                assert response.status_code == 401, (label, response.text)
                assert error_of(response)[0] == "replayed", (label, response.text)
            # A signed health check's nonce cannot be replayed either.
            health = Signer("alpha", {"beta": secret_ab}).headers("beta", "GET", PATH_HEALTH,
                                                                  b"")
            assert (await client.get(b.fed_url + PATH_HEALTH, headers=health)
                    ).status_code == 200
            replay = await client.get(b.fed_url + PATH_HEALTH, headers=health)
            assert (replay.status_code, error_of(replay)[0]) == (401, "replayed")

            assert fake_b.user_texts() == ["first"]
            assert users(await b.history(f"{PREFIX}:team:direct")) == ["first"]
            assert await b.sessions() == [f"{PREFIX}:team:direct"]


async def test_cut_after_commit_retries_same_txn_and_gets_stored_answer(tmp_path: Path
                                                                       ) -> None:
    """The proxy between A and B lets B answer the first relay, then drops A's connection
    without the answer: A retries with the same ``txn_id``, B answers from its ledger, its
    model ran once, and the webhook client gets its 200."""
    async with (NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b,
                trio.open_nursery() as nursery):
        a, b = make_node(tmp_path, "alpha", fake_a), make_node(tmp_path, "beta", fake_b)
        proxy = RelayProxy(b.fed_port, cut_first_relay=True)
        await nursery.start(proxy.serve)
        a.configure(peers=[peer("beta", proxy.port, [f"{PREFIX}:team"])])
        a.add_webhook()
        b.configure(peers=[peer("alpha", a.fed_port, [])])
        async with running(a, b), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            reply = ok_reply(await post_hook(client, a, "once please", "team:cut", id="c-1"))
            assert reply["instance"] == "beta"
            assert reply["message"] == answer("beta", "main", "once please")
            relays = proxy.relays
            assert proxy.cuts == 1
            assert len(relays) >= 2, relays
            assert relays[0].status == 200, relays[0]  # B had committed before the cut
            txns = {e.body["txn_id"] for e in relays}
            assert len(txns) == 1, [e.body for e in relays]
            assert all(e.status == 200 and e.response == relays[0].response
                       for e in relays), relays
            await trio.sleep(QUIET_S)
            assert fake_b.user_texts() == ["once please"]
            assert fake_a.requests == []
            assert await b.history(f"{PREFIX}:team:cut") == [
                ("user", "once please"), ("assistant", answer("beta", "main", "once please"))]
            assert await a.sessions() == []
        nursery.cancel_scope.cancel()


async def test_peer_down_with_fail_is_a_prompt_503_naming_it(tmp_path: Path) -> None:
    """B is not running (nothing listens at its URL): each message for its namespace is
    answered 503 ``unavailable`` naming ``beta`` within 5 s and A runs nothing for it; for
    gamma, also down but ``on_unavailable: local``, A answers itself."""
    async with NamedOpenAI("alpha") as fake_a:
        a = make_node(tmp_path, "alpha", fake_a)
        a.configure(peers=[peer("beta", free_port(), [f"{PREFIX}:team"],
                                on_unavailable="fail"),
                           peer("gamma", free_port(), [f"{PREFIX}:lab"],
                                on_unavailable="local")])
        a.add_webhook()
        async with running(a), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            for i in range(3):
                started = time.monotonic()
                response = await post_hook(client, a, f"anyone {i}", f"team:down{i}")
                elapsed = time.monotonic() - started
                assert response.status_code == 503, (response.status_code, response.text)
                code, message = error_of(response)
                assert code == "unavailable", response.text
                assert "beta" in message, message
                assert elapsed < FAIL_WITHIN_S, (i, elapsed)
            local = ok_reply(await post_hook(client, a, "still here", "mine"))
            assert local["instance"] == "alpha"
            started = time.monotonic()
            fallback = ok_reply(await post_hook(client, a, "gamma is down", "lab:1"))
            assert time.monotonic() - started < FAIL_WITHIN_S
            assert fallback["instance"] == "alpha", fallback
            assert fallback["message"] == answer("alpha", "main", "gamma is down")
            assert fake_a.user_texts() == ["still here", "gamma is down"]
            assert await a.sessions() == [f"{PREFIX}:lab:1", f"{PREFIX}:mine"]


@dataclass
class Callbacks:
    """A callback receiver: every POST body, by id."""

    bodies: dict[str, list[Any]] = field(default_factory=dict)

    async def on_post(self, request: Request) -> Response:
        body = msgspec.json.decode(request.body)
        self.bodies.setdefault(str(body.get("id")), []).append(body)
        return json_response(200, {"ok": True})


@pytest.mark.parametrize("restart", [False, True], ids=["steady", "alpha-restarted"])
async def test_peer_down_with_queue_delivers_once_in_order(tmp_path: Path, restart: bool
                                                           ) -> None:
    """B is down and its peer entry says ``queue``: A answers each webhook 202 ``queued``
    (synchronous) or 202 (with a callback); once B starts, every message reaches B once,
    in order per namespace, and each callback arrives once. With ``restart``, A is stopped
    (SIGTERM) and started again between the two halves of the messages, B still down."""
    first_half = [("q1-0", "q1", False), ("q2-0", "q2", False), ("q1-1", "q1", False),
                  ("q2-1", "q2", True), ("q1-2", "q1", True)]
    second_half = [("q1-3", "q1", False), ("q2-2", "q2", False), ("q1-4", "q1", True)]
    callbacks = Callbacks()
    router = Router()
    router.add("POST", "/cb", callbacks.on_post)
    async with (NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b,
                trio.open_nursery() as nursery):
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        callback_url = f"http://{host}:{port}/cb"
        a, b = make_node(tmp_path, "alpha", fake_a), make_node(tmp_path, "beta", fake_b)
        a.configure(peers=[peer("beta", b.fed_port, [f"{PREFIX}:team"],
                                on_unavailable="queue", queue_ttl_s=300)])
        a.add_webhook()
        b.configure(peers=[peer("alpha", a.fed_port, [])])

        async def send(client: httpx.AsyncClient, batch: list[tuple[str, str, bool]]) -> None:
            for msg_id, lane, asynchronous in batch:
                extra = {"callback_url": callback_url} if asynchronous else {}
                try:
                    with trio.fail_after(ACK_WITHIN_S):
                        response = await post_hook(client, a, f"msg {msg_id}", f"team:{lane}",
                                                   id=msg_id, **extra)
                except trio.TooSlowError:
                    raise AssertionError(f"{msg_id}: no 202 within {ACK_WITHIN_S:g}s") from None
                assert response.status_code == 202, (msg_id, response.status_code,
                                                     response.text)
                status = response.json()
                if asynchronous:  # CONTRACT §4 says "queued"; "accepted" is acked too
                    assert status["id"] == msg_id and status["status"] in (
                        "queued", "accepted"), status
                else:
                    assert status == {"id": msg_id, "status": "queued"}, status

        async def queue_depth_is(n: int) -> bool:
            return bool((await a.peer_status("beta"))["queue_depth"] == n)

        try:
            async with running(a), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
                await send(client, first_half)
                await wait_until(lambda: queue_depth_is(len(first_half)), 10,
                                 "A's queue_depth for beta counts the first messages")
                if restart:
                    assert await a.stop() == 0, a.log()[-3000:]
                    await a.start()
                await send(client, second_half)
                everything = first_half + second_half
                await wait_until(lambda: queue_depth_is(len(everything)), 10,
                                 "A's queue_depth for beta counts every message")
                assert fake_a.requests == []

                await b.start()
                lanes = {lane: [f"msg {i}" for i, ln, _ in everything if ln == lane]
                         for lane in ("q1", "q2")}

                async def all_delivered() -> bool:
                    for lane, texts in lanes.items():
                        if len(users(await b.history(f"{PREFIX}:team:{lane}"))) < len(texts):
                            return False
                    return True

                started = time.monotonic()
                await wait_until(all_delivered, QUEUE_DELIVERY_S,
                                 "every queued message reached B")
                asynchronous = [i for i, _, asy in everything if asy]

                async def all_called_back() -> bool:
                    return all(i in callbacks.bodies for i in asynchronous)

                await wait_until(all_called_back, QUEUE_DELIVERY_S, "every callback arrived")
                delivered_s = time.monotonic() - started
                await trio.sleep(QUIET_S)

                for lane, texts in lanes.items():
                    history = await b.history(f"{PREFIX}:team:{lane}")
                    assert users(history) == texts, (lane, history)
                    assert history == [turn for text in texts for turn in (
                        ("user", text), ("assistant", answer("beta", "main", text)))]
                assert sorted(fake_b.user_texts()) == sorted(
                    t for texts in lanes.values() for t in texts)
                for msg_id in asynchronous:
                    got = callbacks.bodies[msg_id]
                    assert len(got) == 1, (msg_id, got)
                    assert got[0]["instance"] == "beta", got
                    assert got[0]["message"] == answer("beta", "main", f"msg {msg_id}"), got
                assert sorted(callbacks.bodies) == sorted(asynchronous)
                await wait_until(lambda: queue_depth_is(0), 10, "A's queue drained")
                assert fake_a.requests == []
                assert await a.sessions() == []
                print(f"queued messages delivered {delivered_s:.2f}s after B started")
        finally:
            with trio.CancelScope(shield=True):
                await b.stop()
            nursery.cancel_scope.cancel()


async def test_queued_message_expires_after_queue_ttl(tmp_path: Path) -> None:
    """B stays down: after ``queue_ttl_s`` a queued message is answered with an error (to
    its callback; a synchronous one's retry with the same id gets it), and never runs."""
    ttl = 2.0
    callbacks = Callbacks()
    router = Router()
    router.add("POST", "/cb", callbacks.on_post)
    async with NamedOpenAI("alpha") as fake_a, trio.open_nursery() as nursery:
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        a = make_node(tmp_path, "alpha", fake_a)
        a.configure(peers=[peer("beta", free_port(), [f"{PREFIX}:team"],
                                on_unavailable="queue", queue_ttl_s=ttl)])
        a.add_webhook()
        async with running(a), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            sent = time.monotonic()
            sync = await post_hook(client, a, "sync", "team:e1", id="e-1")
            assert sync.status_code == 202, sync.text
            assert sync.json() == {"id": "e-1", "status": "queued"}
            asynchronous = await post_hook(client, a, "async", "team:e2", id="e-2",
                                           callback_url=f"http://{host}:{port}/cb")
            assert asynchronous.status_code == 202, asynchronous.text

            async def called_back() -> bool:
                return "e-2" in callbacks.bodies

            await wait_until(called_back, ttl + 10, "the expired message's callback")
            assert time.monotonic() - sent >= ttl - 0.5
            [body] = callbacks.bodies["e-2"]
            assert body["id"] == "e-2" and "message" not in body, body
            assert body["error"]["code"] and "beta" in body["error"]["message"], body

            async def retry_answers() -> bool:
                again = await post_hook(client, a, "sync", "team:e1", id="e-1")
                return again.status_code not in (202, 409)

            await wait_until(retry_answers, 10, "a retry of the expired sync message answers")
            again = await post_hook(client, a, "sync", "team:e1", id="e-1")
            assert again.status_code >= 400, again.text
            assert again.json()["error"]["code"] == body["error"]["code"], again.text
            assert fake_a.requests == []
            assert await a.sessions() == []
        nursery.cancel_scope.cancel()


async def test_relay_after_alpha_lost_its_state_gets_its_own_answer(tmp_path: Path
                                                                   ) -> None:
    """A's state folder is lost (a reinstall, a restored backup) while B keeps its ledger:
    a new message relayed from A must be run by B, not answered with the stored result of
    an older relay that happened to get the same ``txn_id``."""
    async with NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b:
        a, b = make_node(tmp_path, "alpha", fake_a), make_node(tmp_path, "beta", fake_b)
        a.configure(peers=[peer("beta", b.fed_port, [f"{PREFIX}:team"])])
        a.add_webhook()
        b.configure(peers=[peer("alpha", a.fed_port, [])])
        async with running(a, b), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            first = ok_reply(await post_hook(client, a, "first message", "team:one"))
            assert first["message"] == answer("beta", "main", "first message")
            assert await a.stop() == 0
            shutil.rmtree(a.process.root / ".orrad")
            await a.start()
            second = ok_reply(await post_hook(client, a, "second message", "team:two"))
            assert second["message"] == answer("beta", "main", "second message"), second
            assert fake_b.user_texts() == ["first message", "second message"]
            assert await b.sessions() == [f"{PREFIX}:team:one", f"{PREFIX}:team:two"]


async def orrad_status(node: Node, *args: str) -> tuple[int, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "orrad", "status", "-c", str(node.process.config_path), *args],
        capture_stdout=True, capture_stderr=True, env=node.process.env, cwd=node.process.root,
        check=False)
    return result.returncode, result.stdout.decode(errors="replace") + result.stderr.decode(
        errors="replace")


def peer_line(output: str, name: str) -> str:
    lines = [line for line in output.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, output
    return lines[0]


async def test_status_shows_peer_state(tmp_path: Path) -> None:
    """``/v1/status`` on A lists B with ``name``, ``url``, ``state``, ``last_error``,
    ``queue_depth``; ``orrad status`` (the CLI) shows B's name and state, before and after
    B went down (then with a last error, and another state)."""
    async with NamedOpenAI("alpha") as fake_a, NamedOpenAI("beta") as fake_b:
        a, b = make_node(tmp_path, "alpha", fake_a), make_node(tmp_path, "beta", fake_b)
        a.configure(peers=[peer("beta", b.fed_port, [f"{PREFIX}:team"])])
        a.add_webhook()
        b.configure(peers=[peer("alpha", a.fed_port, [])])
        async with running(a, b), httpx.AsyncClient(timeout=REPLY_S + 5) as client:
            ok_reply(await post_hook(client, a, "hello", "team:s"))
            up = await a.peer_status("beta")
            assert {"name", "url", "state", "last_error", "queue_depth"} <= set(up), up
            assert up["url"].rstrip("/") == b.fed_url
            assert isinstance(up["state"], str) and up["state"], up
            assert up["queue_depth"] == 0
            code, output = await orrad_status(a)
            assert code == 0, output
            assert up["state"] in peer_line(output, "beta").split(), output
            code, output = await orrad_status(a, "--json")
            assert code == 0, output
            assert [p["name"] for p in json.loads(output)["peers"]] == ["beta"]

            assert await b.stop() == 0
            response = await post_hook(client, a, "hello?", "team:s")
            assert response.status_code == 503, response.text
            down = await a.peer_status("beta")
            assert down["last_error"], down
            assert down["state"] != up["state"], (up, down)
            code, output = await orrad_status(a)
            assert code == 0, output
            assert down["state"] in peer_line(output, "beta").split(), output
            assert SECRET not in output
