"""The daemon API on ``api.listen`` (CONTRACT §5): health, status, reload, messages,
sessions and metrics, served by orrad's own HTTP server.

``/healthz``, ``/readyz`` and ``/metrics`` are always open; ``/v1/*`` needs
``Authorization: Bearer <api.token>`` when a token is configured.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from orrad.errors import InvalidNamespace
from orrad.http import HTTPError, Request, Response, Router, json_response
from orrad.metrics import METRICS
from orrad.model import InboundMessage, Message, Namespace, OutboundMessage
from orrad.supervisor import ChannelState

if TYPE_CHECKING:
    from orrad.daemon import Daemon

__all__ = ["STATUS_FOR_CODE", "build_api_router", "reply_body"]

Handler = Callable[[Request], Awaitable[Response]]

# HTTP status for each OutboundError code (shared with the webhook channel).
STATUS_FOR_CODE = {
    "unknown_agent": 400,
    "bad_request": 400,
    "provider_error": 502,
    "max_turns_exceeded": 502,
    "agent_error": 502,
    "unavailable": 503,
    "timeout": 504,
    "loop_detected": 508,
    "internal": 502,
}
API_REPLY_TIMEOUT_S = 600.0


class MessageRequest(msgspec.Struct):
    """Body of ``POST /v1/messages`` (the webhook's synchronous shape)."""

    message: str
    namespace: str | None = None
    agent: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


def decode_body(request: Request, type_: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.json.decode(request.body, type=type_)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, "bad_request", f"invalid field: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "bad_request", f"invalid JSON: {exc}") from None


def parse_namespace(key: str) -> Namespace:
    try:
        return Namespace.parse(key)
    except InvalidNamespace as exc:
        raise HTTPError(400, "bad_request", str(exc)) from None


def reply_body(reply: OutboundMessage, request_id: str, instance: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "message": reply.message.content,
        "namespace": reply.namespace.key,
        "agent": reply.run_result.agent,
        "instance": instance,
        "usage": reply.run_result.total_usage.to_json(),
    }


def build_api_router(daemon: Daemon) -> Router:
    router = Router()
    token = daemon.config.api.token

    def protected(handler: Handler) -> Handler:
        if not token:
            return handler
        expected = f"Bearer {token}".encode()

        async def check(request: Request) -> Response:
            given = (request.header("authorization") or "").encode()
            if not hmac.compare_digest(given, expected):
                raise HTTPError(401, "unauthorized", "missing or wrong bearer token",
                                [("www-authenticate", "Bearer")])
            return await handler(request)

        return check

    async def healthz(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        rejected = set(daemon.manager.rejected_files()) if daemon.manager else set()
        not_ready = [
            {"name": s.name, "file": s.file, "state": str(s.state),
             **({"rejected": True} if s.file in rejected else {})}
            for s in daemon.channel_statuses()
            if s.state not in (ChannelState.RUNNING, ChannelState.COMPLETED)
            or s.file in rejected
        ]
        if not daemon.ready.is_set() or not_ready:
            return json_response(503, {"status": "not_ready", "channels": not_ready})
        return json_response(200, {"status": "ready"})

    async def status(request: Request) -> Response:
        return json_response(200, daemon.status_json())

    async def reload(request: Request) -> Response:
        results = await daemon.reload()
        return json_response(200, {"files": [r.to_json() for r in results]})

    async def messages(request: Request) -> Response:
        body: MessageRequest = decode_body(request, MessageRequest)
        if not body.message.strip():
            raise HTTPError(400, "bad_request", "message must not be empty")
        namespace = parse_namespace(body.namespace or f"api:{uuid.uuid4()}")
        metadata = dict(body.metadata)
        if body.agent:
            metadata["agent"] = body.agent
        inbound = InboundMessage(namespace, Message.user(body.message), metadata)
        router = daemon.require_router()
        with trio.move_on_after(API_REPLY_TIMEOUT_S):
            reply = await router.call(inbound)
            if isinstance(reply, OutboundMessage):
                return json_response(200, reply_body(reply, str(uuid.uuid4()),
                                                     daemon.config.instance))
            raise HTTPError(STATUS_FOR_CODE.get(reply.code, 502), reply.code, reply.error)
        raise HTTPError(504, "timeout", f"no reply within {API_REPLY_TIMEOUT_S:g}s")

    async def list_sessions(request: Request) -> Response:
        prefix = request.query.get("prefix", [""])[0]
        infos = await daemon.store.list(parse_namespace(prefix) if prefix else None)
        return json_response(200, [msgspec.to_builtins(i) for i in infos])

    async def get_session(request: Request) -> Response:
        namespace = parse_namespace(request.path_params["namespace"])
        session = await daemon.store.load(namespace)
        if session is None:
            raise HTTPError(404, "not_found", f"no session {namespace.key}")
        return json_response(200, {
            "namespace": session.namespace,
            "messages": msgspec.to_builtins(session.messages),
        })

    async def delete_session(request: Request) -> Response:
        namespace = parse_namespace(request.path_params["namespace"])
        # Under the namespace's lock: a run in progress finishes (and saves) first, so the
        # delete is not undone by that run's save.
        async with daemon.locks.hold(namespace):
            deleted = await daemon.store.delete(namespace)
        if not deleted:
            raise HTTPError(404, "not_found", f"no session {namespace.key}")
        return json_response(200, {"namespace": namespace.key, "deleted": True})

    async def metrics(request: Request) -> Response:
        text = METRICS.render(daemon.gauge_lines())
        return Response(200, [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        text.encode())

    router.add("GET", "/healthz", healthz)
    router.add("HEAD", "/healthz", healthz)
    router.add("GET", "/readyz", readyz)
    router.add("HEAD", "/readyz", readyz)
    router.add("GET", "/metrics", metrics)
    router.add("GET", "/v1/status", protected(status))
    router.add("POST", "/v1/reload", protected(reload))
    router.add("POST", "/v1/messages", protected(messages))
    router.add("GET", "/v1/sessions", protected(list_sessions))
    # {namespace:path}: an encoded "/" in the key is a bad namespace (400), not a 404.
    router.add("GET", "/v1/sessions/{namespace:path}", protected(get_session))
    router.add("DELETE", "/v1/sessions/{namespace:path}", protected(delete_session))
    return router


def uptime(started_at: float) -> float:
    return round(time.time() - started_at, 3)
