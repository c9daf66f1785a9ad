"""Test doubles for the peer side: a scripted peer daemon on orrad's own HTTP server that
verifies every signature, and a TCP proxy that can cut connections after the peer answered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio

from orrad.federation.errors import SignatureError
from orrad.federation.signing import Verifier, signed_headers
from orrad.federation.wire import (
    PATH_HEALTH,
    PATH_RELAY,
    PATH_SESSIONS,
    Health,
    RelayRequest,
    RelayResponse,
    SessionInfo,
    decode,
)
from orrad.http import HTTPServer, Request, Response, Router, error_response, json_response

SECRET = "alpha-beta-secret"

# What the peer answers to one attempt: "ok", or (status, code), or a raw Response.
Action = str | tuple[int, str] | Response


@dataclass
class Seen:
    method: str
    target: str
    origin: str
    nonce: str
    txn_id: str | None = None


@dataclass
class ScriptedPeer:
    """Peer ``beta``: each request takes the next action of ``script`` (then "ok").

    Relays are deduplicated per ``(origin, txn_id)`` like a real receiver, so ``runs``
    counts agent runs while ``seen`` counts every authenticated request.
    """

    script: list[Action] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=lambda: {"alpha": SECRET})
    seen: list[Seen] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    runs: int = 0
    stored: dict[tuple[str, str], RelayResponse] = field(default_factory=dict)
    on_request: Callable[[], None] | None = None

    def router(self) -> Router:
        verifier = Verifier("beta", self.secrets)
        router = Router()

        async def handle(request: Request) -> Response:
            try:
                origin = verifier.verify(request.method, request.target,
                                         signed_headers(request.headers), request.body)
            except SignatureError as exc:
                self.refused.append(exc.code)
                return error_response(401, exc.code, exc.message)
            relay = decode(request.body, RelayRequest) if request.path == PATH_RELAY else None
            self.seen.append(Seen(request.method, request.target, origin,
                                  request.header("x-orrad-nonce") or "",
                                  relay.txn_id if relay else None))
            if self.on_request is not None:
                self.on_request()
            action: Action = self.script.pop(0) if self.script else "ok"
            if isinstance(action, Response):
                return action
            if isinstance(action, tuple):
                return error_response(action[0], action[1], f"scripted {action[1]}")
            if action == "hang":
                await trio.sleep_forever()
            if relay is not None:
                key = (origin, relay.txn_id)
                if key not in self.stored:
                    self.runs += 1
                    self.stored[key] = RelayResponse(
                        txn_id=relay.txn_id, message=f"echo: {relay.message}",
                        namespace=relay.namespace, agent=relay.agent or "default",
                        instance="beta")
                return json_response(200, self.stored[key])
            if request.path == PATH_HEALTH:
                return json_response(200, Health(instance="beta", version="9.9", agent_count=1))
            if request.path == PATH_SESSIONS:
                prefix = request.query.get("prefix", [""])[0]
                return json_response(200, [SessionInfo(namespace=prefix or "all")])
            return error_response(404, "not_found", "no such route")

        for method, path in [("POST", PATH_RELAY), ("GET", PATH_HEALTH),
                             ("GET", PATH_SESSIONS)]:
            router.add(method, path, handle)
        return router

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve on 127.0.0.1:0 in ``nursery``; returns the base URL."""
        server = HTTPServer(self.router())
        host, port = await nursery.start(server.serve, "127.0.0.1:0")
        return f"http://{host}:{port}"

    def relays(self) -> list[Seen]:
        return [s for s in self.seen if s.txn_id is not None]


class CuttingProxy:
    """A TCP proxy whose first ``cut`` connections are closed as soon as the upstream
    starts answering: the peer has processed the request, the caller never hears back
    (the "lost ack" of reliability.md T36)."""

    def __init__(self, upstream: str, cut: int) -> None:
        host, _, port = upstream.removeprefix("http://").rpartition(":")
        self.upstream = (host, int(port))
        self.cut = cut
        self.connections = 0

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)
        return f"http://{host}:{port}"

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        cut = self.connections <= self.cut
        upstream = await trio.open_tcp_stream(*self.upstream)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream)
            async for chunk in upstream:
                if cut:
                    break
                await client.send_all(chunk)
            nursery.cancel_scope.cancel()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def raw_json(status: int, body: object) -> Response:
    return Response(status, [("content-type", "application/json")], msgspec.json.encode(body))
