"""The daemon API on ``api.listen`` (CONTRACT §5): health, status, reload, messages,
sessions and metrics, served by orrad's own HTTP server.

``/healthz``, ``/readyz`` and ``/metrics`` are always open; ``/v1/*`` needs
``Authorization: Bearer <api.token>`` when a token is configured.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec
import trio

from orrad import safejson
from orrad.config.agents import BadAgentChoice, requested_agent
from orrad.delivery import Reply, reply_body, status_for_code
from orrad.errors import DaemonStopping, InvalidNamespace, StoreError
from orrad.http import HTTPError, Request, Response, Router, json_response
from orrad.metrics import CONTENT_TYPE, Metrics
from orrad.model import InboundMessage, Message, Namespace, OutboundMessage
from orrad.runtime.sessions import SessionInfo, SessionStore
from orrad.timefmt import utc_iso

__all__ = ["DaemonView", "build_api_router"]

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

API_REPLY_TIMEOUT_S = 600.0
MAX_ID_LENGTH = 256


class FileOutcome(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class DaemonView(Protocol):
    """What the API needs of the daemon (and nothing more)."""

    @property
    def instance(self) -> str: ...

    @property
    def api_token(self) -> str: ...

    @property
    def store(self) -> SessionStore: ...

    def status_json(self) -> dict[str, Any]: ...

    def not_ready(self) -> list[dict[str, Any]]:
        """Why the daemon is not ready (empty when it is)."""
        ...

    async def reload(self) -> Sequence[FileOutcome]: ...

    async def call(self, inbound: InboundMessage) -> Reply:
        """Run ``inbound`` through the pipeline (source ``api``) and return its reply."""
        ...

    def agent_error(self, name: str) -> str | None:
        """Why ``name`` (``agent`` or ``agent@peer``) cannot be used, or ``None``."""
        ...

    def hold_namespace(self, namespace: Namespace) -> AbstractAsyncContextManager[None]:
        """Wait for the namespace's run in progress, and keep new ones out meanwhile."""
        ...

    @property
    def metrics(self) -> Metrics:
        """The daemon's instruments (its registry includes the live states)."""
        ...


class MessageRequest(msgspec.Struct):
    """Body of ``POST /v1/messages`` (the webhook's synchronous shape)."""

    message: str
    namespace: str | None = None
    agent: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


def decode_body(request: Request, type_: type[msgspec.Struct]) -> Any:
    """The body as ``type_``; 400 ``bad_request`` for bad JSON (too deep included) or a bad
    field."""
    try:
        return safejson.decode(request.body, type=type_)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, "bad_request", f"invalid field: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "bad_request", f"invalid JSON: {exc}") from None


def store_unavailable(request: Request, exc: StoreError) -> HTTPError:
    """A read or write of the store failed (a damaged database included): logged, and
    answered 503 without the details (they name files)."""
    log.error("api: %s %s: %s", request.method, request.path, exc)
    return HTTPError(503, "unavailable", "the state store is unavailable; retry later")


def parse_namespace(key: str) -> Namespace:
    try:
        return Namespace.parse(key)
    except InvalidNamespace as exc:
        raise HTTPError(400, "bad_request", str(exc)) from None


def session_info_json(info: SessionInfo) -> dict[str, Any]:
    """One line of a session listing, its times in the one format (``orrad.timefmt``)."""
    return {"namespace": info.namespace, "message_count": info.message_count,
            "created_at": utc_iso(info.created_at), "updated_at": utc_iso(info.updated_at)}


def messages_json(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """A session's messages as JSON, each ``timestamp`` in the one format."""
    out = []
    for message in messages:
        item: dict[str, Any] = msgspec.to_builtins(message)
        if "timestamp" in item:
            item["timestamp"] = utc_iso(message.timestamp)
        out.append(item)
    return out


def build_api_router(daemon: DaemonView) -> Router:
    router = Router()
    token = daemon.api_token

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
        not_ready = daemon.not_ready()
        if not_ready:
            return json_response(503, {"status": "not_ready", "channels": not_ready})
        return json_response(200, {"status": "ready"})

    async def status(request: Request) -> Response:
        status = daemon.status_json()
        for channel in status.get("channels", []):  # one timestamp format (orrad.timefmt)
            if channel.get("since"):
                channel["since"] = utc_iso(channel["since"])
        return json_response(200, status)

    async def reload(request: Request) -> Response:
        try:
            results = await daemon.reload()
        except DaemonStopping:
            raise HTTPError(503, "unavailable", "the daemon is stopping") from None
        return json_response(200, {"files": [r.to_json() for r in results]})

    async def messages(request: Request) -> Response:
        body: MessageRequest = decode_body(request, MessageRequest)
        if not body.message.strip():
            raise HTTPError(400, "bad_request", "message must not be empty")
        request_id = request.header("idempotency-key") or str(uuid.uuid4())
        if len(request_id) > MAX_ID_LENGTH or not request_id.isprintable():
            raise HTTPError(400, "bad_request", "invalid Idempotency-Key")
        namespace = parse_namespace(body.namespace or f"api:{uuid.uuid4()}")
        try:
            # Refused before anything is stored (a 4xx stores nothing); the webhook's check.
            requested_agent(body.agent, body.metadata, daemon.agent_error)
        except BadAgentChoice as exc:
            raise HTTPError(400, "unknown_agent", str(exc)) from None
        metadata = dict(body.metadata)
        if body.agent:
            metadata["agent"] = body.agent
        inbound = InboundMessage(namespace, Message.user(body.message), metadata,
                                 delivery_id=request_id)
        with trio.move_on_after(API_REPLY_TIMEOUT_S):
            try:
                reply = await daemon.call(inbound)
            except StoreError as exc:
                raise store_unavailable(request, exc) from None
            if isinstance(reply, OutboundMessage):
                return json_response(200, reply_body(reply, request_id, daemon.instance))
            raise HTTPError(status_for_code(reply.code), reply.code, reply.error)
        raise HTTPError(504, "timeout", f"no reply within {API_REPLY_TIMEOUT_S:g}s")

    async def list_sessions(request: Request) -> Response:
        prefix = request.query.get("prefix", [""])[0]
        try:
            infos = await daemon.store.list(parse_namespace(prefix) if prefix else None)
        except StoreError as exc:
            raise store_unavailable(request, exc) from None
        return json_response(200, [session_info_json(i) for i in infos])

    async def get_session(request: Request) -> Response:
        namespace = parse_namespace(request.path_params["namespace"])
        try:
            session = await daemon.store.load(namespace)
        except StoreError as exc:
            raise store_unavailable(request, exc) from None
        if session is None:
            raise HTTPError(404, "not_found", f"no session {namespace.key}")
        return json_response(200, {
            "namespace": session.namespace,
            "messages": messages_json(session.messages),
        })

    async def delete_session(request: Request) -> Response:
        namespace = parse_namespace(request.path_params["namespace"])
        # Under the namespace's lock: a run in progress finishes (and saves) first, so the
        # delete is not undone by that run's save.
        try:
            async with daemon.hold_namespace(namespace):
                deleted = await daemon.store.delete(namespace)
        except StoreError as exc:
            raise store_unavailable(request, exc) from None
        if not deleted:
            raise HTTPError(404, "not_found", f"no session {namespace.key}")
        return json_response(200, {"namespace": namespace.key, "deleted": True})

    async def metrics(request: Request) -> Response:
        return Response(200, [("content-type", CONTENT_TYPE)], daemon.metrics.exposition())

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
