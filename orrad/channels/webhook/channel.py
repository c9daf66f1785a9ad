"""``webhook``: authenticated HTTP ingress with synchronous and asynchronous replies.

``POST {path}`` takes ``{"message", "namespace"?, "agent"?, "metadata"?, "callback_url"?,
"id"?}``. Checks run cheapest first and nothing is stored before all pass: body size (the
server answers 413 before reading), content type, credentials over the raw body, JSON and
fields, namespace. Then the request's id is claimed in the inbox (committed before any 2xx),
so a repeated id never runs the agent twice, also across restarts: a synchronous repeat gets
the stored reply (409 ``in_progress`` while the first still runs), an asynchronous repeat
the same 202. Replies of asynchronous requests are POSTed to ``callback_url``, signed and
retried with backoff.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

import httpx
import msgspec
import trio

from orrad.api import STATUS_FOR_CODE, reply_body
from orrad.channels.base import BaseChannel, ChannelContext
from orrad.channels.webhook.auth import WebhookAuth
from orrad.channels.webhook.callbacks import CallbackSender
from orrad.config import ChannelConfig, WebhookChannelConfig
from orrad.errors import InvalidNamespace, StoreError
from orrad.http import (
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Router,
    ServerLimits,
    json_response,
)
from orrad.model import InboundMessage, Message, Namespace, OutboundError, OutboundMessage
from orrad.state import Database, Inbox
from orrad.state.inbox import InboxState

__all__ = ["WebhookChannel"]

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
# The whole body must arrive within this (slow senders cannot hold the listener); idle
# keep-alive connections are closed after KEEPALIVE_S.
BODY_TIMEOUT_S = 10.0
KEEPALIVE_S = 5.0
ID_METADATA_KEY = "webhook_id"


class WebhookRequest(msgspec.Struct):
    message: str
    namespace: str | None = None
    agent: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    callback_url: str | None = None
    id: str | None = None


class _Pending:
    """A synchronous request waiting for its reply."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = 0
        self.body: dict[str, Any] = {}


# Ids whose run is in progress in this process, per inbox source. Shared across channel
# generations: after a crash-restart the new generation must not re-run a message the
# router is still working on for the old one.
_RUNNING: dict[str, set[str]] = {}
# The callback sender of the generation currently serving each source: a reply that an
# older generation's run produces goes to the live sender, not to a dead one.
_LIVE_SENDERS: dict[str, CallbackSender] = {}


def _valid_callback(raw: str) -> bool:
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL:
        return False
    return (url.scheme in ("http", "https") and bool(url.host) and " " not in raw
            and (url.port is None or 0 < url.port < 65536))


def _error_body(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


class WebhookChannel(BaseChannel):
    kind: ClassVar[str] = "webhook"
    config_type: ClassVar[type[ChannelConfig]] = WebhookChannelConfig

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, WebhookChannelConfig)
        self.cfg = config
        self.prefix = Namespace.parse(config.namespace_prefix or f"webhook:{self.name}")
        self.auth = WebhookAuth(config.auth)
        if context.db is None:
            raise StoreError("the webhook channel needs the state database")
        self.db: Database = context.db
        self.inbox = Inbox(context.db)
        self.source = f"webhook:{self.name}"
        self._running = _RUNNING.setdefault(self.source, set())
        self._pending: dict[str, _Pending] = {}
        self._callback_urls: dict[str, str] = {}
        self._recovered = trio.Event()
        self._server: HTTPServer | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        router = Router()
        router.add("POST", self.cfg.path, self._handle, max_body_bytes=self.cfg.max_body_bytes)
        limits = ServerLimits(max_body_bytes=self.cfg.max_body_bytes,
                              body_timeout_s=BODY_TIMEOUT_S, header_timeout_s=BODY_TIMEOUT_S,
                              keepalive_timeout_s=KEEPALIVE_S)
        self._server = HTTPServer(router, limits=limits, name=f"webhook:{self.name}")
        callbacks: CallbackSender | None = None
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client, \
                    trio.open_nursery() as nursery:
                callbacks = CallbackSender(client, self.auth, self.inbox, self.source,
                                           self.name)
                await nursery.start(callbacks.serve)
                _LIVE_SENDERS[self.source] = callbacks
                self.address = await nursery.start(self._server.serve, self.cfg.listen)
                log.info("webhook %s listening on http://%s:%d%s", self.name, *self.address,
                         self.cfg.path)
                task_status.started()
                # After started(): recovered messages go through receive(), which the
                # supervisor only starts pumping once the channel is up. New requests wait
                # for recovery so a namespace's older messages keep their place.
                await self._recover()
                self._recovered.set()
        finally:
            if callbacks is not None and _LIVE_SENDERS.get(self.source) is callbacks:
                del _LIVE_SENDERS[self.source]

    async def aclose(self, *, removed: bool = False) -> None:
        """Refuse new requests and let in-flight ones get their replies (server drain)."""
        if self._server is not None:
            await self._server.stop()

    async def _recover(self) -> None:
        """Finish what a previous process accepted: rerun unanswered messages (or answer
        them with an error, per ``routing.rerun_interrupted``) and redeliver callbacks."""
        rerun = self.context.daemon.routing.rerun_interrupted
        for entry in await self.inbox.open_entries(self.source):
            # Answered ones are the callback sender's (it scans the inbox itself).
            if entry.delivery_id in self._running or entry.state != "received":
                continue
            callback = entry.payload.get("callback_url")
            if rerun:
                log.info("webhook %s: re-running interrupted request %s", self.name,
                         entry.delivery_id)
                await self._submit(entry.delivery_id, Namespace.parse(entry.namespace),
                                   entry.payload)
            else:
                await self._store_reply(entry.delivery_id, callback, 503, _error_body(
                    entry.delivery_id, "interrupted", "the daemon restarted before answering"))

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        encoding = (request.header("content-encoding") or "identity").lower()
        if encoding != "identity":
            raise HTTPError(415, "unsupported_media_type",
                            f"content-encoding {encoding} is not accepted")
        content_type = (request.header("content-type") or "application/json").lower()
        if content_type.split(";")[0].strip() != "application/json":
            raise HTTPError(415, "unsupported_media_type", "send application/json")
        self.auth.check(request)
        body = self._parse(request)
        request_id = (request.header("webhook-id") or request.header("idempotency-key")
                      or body.id or str(uuid.uuid4()))
        if len(request_id) > MAX_ID_LENGTH or not request_id.isprintable():
            raise HTTPError(400, "bad_request", "invalid request id")
        namespace = self._namespace(body.namespace)
        self._check_agent(body.agent if body.agent else body.metadata.get("agent"))
        await self._recovered.wait()
        payload = {
            "message": body.message,
            "agent": body.agent,
            "metadata": body.metadata,
            "callback_url": body.callback_url,
        }
        try:
            new, entry = await self.inbox.claim(self.source, request_id, namespace.key, payload)
        except StoreError as exc:
            log.error("webhook %s cannot store request %s: %s", self.name, request_id, exc)
            raise HTTPError(503, "unavailable", "the state store is unavailable") from None
        if not new:
            return self._repeat(request_id, entry.payload, entry.reply)
        if body.callback_url:
            await self._submit(request_id, namespace, payload)
            return json_response(202, {"id": request_id, "status": "accepted"})
        pending = self._pending[request_id] = _Pending()
        try:
            await self._submit(request_id, namespace, payload)
            with trio.move_on_after(self.cfg.reply_timeout_s):
                await pending.done.wait()
                return json_response(pending.status, pending.body)
        finally:
            self._pending.pop(request_id, None)
        raise HTTPError(504, "timeout",
                        f"no reply within {self.cfg.reply_timeout_s:g}s; retry with the same "
                        "id to get it later")

    def _parse(self, request: Request) -> WebhookRequest:
        try:
            body = msgspec.json.decode(request.body, type=WebhookRequest)
        except msgspec.ValidationError as exc:
            raise HTTPError(400, "bad_request", f"invalid field: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, "bad_request", f"invalid JSON: {exc}") from None
        if not body.message.strip():
            raise HTTPError(400, "bad_request", "message must not be empty")
        if body.callback_url is not None and not _valid_callback(body.callback_url):
            raise HTTPError(400, "bad_request", "callback_url must be an http(s) URL")
        return body

    def _check_agent(self, name: Any) -> None:
        """A request naming an agent that does not exist is refused before anything is
        stored (a 4xx stores nothing), so a corrected retry with the same id can run."""
        if name is None:
            return
        known = {agent.lower() for agent in self.context.daemon.agents}
        if not isinstance(name, str) or name.lower() not in known:
            raise HTTPError(400, "unknown_agent",
                            f"unknown agent {name!r}; known agents: {', '.join(sorted(known))}")

    def _namespace(self, requested: str | None) -> Namespace:
        """Always under the channel's prefix: the request names only the part below it."""
        if requested is None:
            return self.prefix.child(str(uuid.uuid4()))
        try:
            return self.prefix.join(requested)
        except InvalidNamespace as exc:
            raise HTTPError(400, "bad_request", f"invalid namespace: {exc}") from None

    def _repeat(self, request_id: str, payload: dict[str, Any],
                reply: dict[str, Any] | None) -> Response:
        if payload.get("callback_url"):
            return json_response(202, {"id": request_id, "status": "accepted"})
        if reply is not None:
            return json_response(int(reply["status"]), reply["body"])
        raise HTTPError(409, "in_progress", f"request {request_id} is still running")

    async def _submit(self, request_id: str, namespace: Namespace,
                      payload: dict[str, Any]) -> None:
        metadata = dict(payload.get("metadata") or {})
        if payload.get("agent"):
            metadata["agent"] = payload["agent"]
        metadata[ID_METADATA_KEY] = request_id
        if payload.get("callback_url"):
            self._callback_urls[request_id] = payload["callback_url"]
        self._running.add(request_id)
        await self.deliver(InboundMessage(namespace, Message.user(payload["message"]), metadata))

    # -- replies -------------------------------------------------------------------------

    async def send(self, response: OutboundMessage) -> None:
        request_id = str(response.metadata[ID_METADATA_KEY])
        body = reply_body(response, request_id, self.context.instance)
        await self._finish(request_id, 200, body)

    async def send_error(self, error: OutboundError) -> None:
        request_id = str(error.metadata[ID_METADATA_KEY])
        status = STATUS_FOR_CODE.get(error.code, 502)
        await self._finish(request_id, status, _error_body(request_id, error.code, error.error))

    async def _finish(self, request_id: str, status: int, body: dict[str, Any]) -> None:
        callback = self._callback_urls.pop(request_id, None)
        try:
            await self._store_reply(request_id, callback, status, body)
        finally:
            self._running.discard(request_id)
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.status, pending.body = status, body
            pending.done.set()

    async def _store_reply(self, request_id: str, callback: str | None, status: int,
                           body: dict[str, Any]) -> None:
        reply = {"status": status, "body": body}
        # Sync replies count as delivered once stored: a client that missed the response
        # gets it on retry. Async ones are delivered when the callback succeeds.
        state: InboxState = "answered" if callback else "delivered"
        await self.inbox.record(self.source, request_id, state, reply)
        sender = _LIVE_SENDERS.get(self.source)
        if callback and sender is not None:
            sender.offer(request_id, callback, body)
