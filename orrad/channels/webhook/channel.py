"""``webhook``: authenticated HTTP ingress with synchronous and asynchronous replies.

``POST {path}`` takes ``{"message", "namespace"?, "agent"?, "metadata"?, "callback_url"?,
"id"?}``. Checks run cheapest first and nothing is stored before all pass: body size (the
server answers 413 before reading), content type, credentials over the raw body, JSON and
fields, namespace, agent. Then the message goes to the pipeline under its request id and
is answered only once the pipeline's ledger has recorded it (a full disk is a 503, never a
2xx), so a repeated id never runs the agent twice, also across restarts: a synchronous
repeat gets the stored reply (409 ``in_progress`` while the first still runs), an
asynchronous repeat the same 202. Replies of asynchronous requests are POSTed to
``callback_url`` (refused at intake, and again for every resolved address at send time,
when it points where callbacks may not go: see :mod:`orrad.channels.webhook.policy`),
signed and retried; the ledger delivers an unconfirmed one again after a
restart, with the same ``webhook-id`` and body.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import trio

from orrad import safejson
from orrad.channels.base import BaseChannel, ChannelContext
from orrad.channels.outbound import OnDemandClient
from orrad.channels.webhook.auth import WebhookAuth
from orrad.channels.webhook.callbacks import CallbackGuard, post_callback
from orrad.channels.webhook.policy import CallbackPolicy
from orrad.channels.webhook.waiting import Pending, ReplyWaits
from orrad.config import ChannelConfig, WebhookChannelConfig
from orrad.config.agents import BadAgentChoice, agent_choice_problem, requested_agent
from orrad.delivery import error_body, reply_body, status_for_code
from orrad.errors import ChannelClosed, ChannelSendError, InvalidNamespace
from orrad.http import (
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Router,
    ServerLimits,
    json_response,
)
from orrad.model import (
    InboundMessage,
    Message,
    Namespace,
    OutboundError,
    OutboundMessage,
    Receipt,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookChannel"]

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
# The whole body must arrive within this (slow senders cannot hold the listener); idle
# keep-alive connections are closed after KEEPALIVE_S.
BODY_TIMEOUT_S = 10.0
KEEPALIVE_S = 5.0
CALLBACK_TIMEOUT_S = 30.0


class WebhookRequest(msgspec.Struct):
    message: str
    namespace: str | None = None
    agent: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    callback_url: str | None = None
    id: str | None = None


class WebhookChannel(BaseChannel):
    kind: ClassVar[str] = "webhook"
    config_type: ClassVar[type[ChannelConfig]] = WebhookChannelConfig

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, WebhookChannelConfig)
        self.cfg = config
        self.prefix = Namespace.parse(config.namespace_prefix or f"webhook:{self.name}")
        self.auth = WebhookAuth(config.auth)
        # Where callbacks may go (checked at intake and again for every address at send
        # time); its resolver is replaceable so tests resolve names offline.
        self.callback_guard = CallbackGuard(CallbackPolicy.from_allow(config.callback_allow))
        self._pending: dict[str, Pending] = {}
        self._waits = ReplyWaits(config.reply_timeout_s)
        self._server: HTTPServer | None = None
        self._client: OnDemandClient | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        router = Router()
        router.add("POST", self.cfg.path, self._handle, max_body_bytes=self.cfg.max_body_bytes)
        limits = ServerLimits(max_body_bytes=self.cfg.max_body_bytes,
                              body_timeout_s=BODY_TIMEOUT_S, header_timeout_s=BODY_TIMEOUT_S,
                              keepalive_timeout_s=KEEPALIVE_S)
        self._server = HTTPServer(router, limits=limits, name=f"webhook:{self.name}")
        async with contextlib.AsyncExitStack() as stack:
            # Callbacks may be sent after this generation ends (the pipeline delivers to
            # the live generation, and drains at shutdown): prefer the daemon's client.
            client = self.context.http or await stack.enter_async_context(
                OnDemandClient(_callback_client))
            self._client = client
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self._waits.run)
            try:
                self.address = await nursery.start(self._server.serve, self.cfg.listen)
                log.info("webhook %s listening on http://%s:%d%s", self.name, *self.address,
                         self.cfg.path)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._client = None
                self.close_intake()

    async def aclose(self, *, removed: bool = False) -> None:
        """Refuse new requests and let in-flight ones get their replies (server drain)."""
        if self._server is not None:
            await self._server.stop()

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
        self._check_agent(body)
        metadata = dict(body.metadata)
        if body.agent:
            metadata["agent"] = body.agent
        reply_to = {"callback_url": body.callback_url} if body.callback_url else {}
        inbound = InboundMessage(namespace, Message.user(body.message), metadata,
                                 delivery_id=request_id, reply_to=reply_to)
        # Registered before the message is handed over: the answer can be ready before the
        # receipt is read. Only the request that registered it removes it.
        pending = self._pending.get(request_id)
        owner = pending is None and not body.callback_url
        if owner:
            pending = self._pending[request_id] = Pending()
        try:
            try:
                if owner:
                    assert pending is not None
                    return await self._answer_when_done(inbound, pending)
                receipt = await self.accept(inbound)
            except ChannelClosed:
                raise HTTPError(503, "unavailable", "the channel is shutting down") from None
            not_run = self._not_running(request_id, receipt, bool(body.callback_url))
            if not_run is not None:
                return not_run
            if body.callback_url:
                return json_response(202, {"id": request_id, "status": "accepted"})
            # The same id is already waited for here: wait for the same answer.
            assert pending is not None
            if await self._waits.wait(pending):
                return json_response(pending.status, pending.body)
        finally:
            if owner:
                self._pending.pop(request_id, None)
        raise self._timed_out()

    async def _answer_when_done(self, inbound: InboundMessage, pending: Pending) -> Response:
        """A synchronous request's answer, with one wait: the receipt wakes it only when
        the message will not run now (a repeat, a refusal, a queue), else the reply does.
        The reply timeout counts from the hand-over (recording takes milliseconds)."""
        inbound.on_recorded = pending.recorded
        await self.hand_over(inbound)
        answered = await self._waits.wait(pending)
        receipt = pending.receipt
        if receipt is None:  # not even recorded within the timeout; a retry will tell
            raise self._timed_out()
        not_run = self._not_running(inbound.delivery_id or "", receipt, False)
        if not_run is not None:
            return not_run
        if not answered:
            raise self._timed_out()
        return json_response(pending.status, pending.body)

    def _not_running(self, request_id: str, receipt: Receipt,
                     asynchronous: bool) -> Response | None:
        """The answer to a message the receipt says does not run now (refused: 503, a
        repeat, queued for a peer); ``None`` when it runs."""
        if receipt.error is not None:
            raise HTTPError(503, "unavailable", "the state store is unavailable; retry later")
        if not receipt.new:
            return self._repeat(request_id, receipt.reply, asynchronous)
        if receipt.queued:
            return json_response(202, {"id": request_id, "status": "queued"})
        return None

    def _timed_out(self) -> HTTPError:
        return HTTPError(504, "timeout", f"no reply within {self.cfg.reply_timeout_s:g}s; "
                         "retry with the same id to get it later")

    def _parse(self, request: Request) -> WebhookRequest:
        try:
            body = safejson.decode(request.body, type=WebhookRequest)
        except msgspec.ValidationError as exc:
            raise HTTPError(400, "bad_request", f"invalid field: {exc}") from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, "bad_request", f"invalid JSON: {exc}") from None
        if not body.message.strip():
            raise HTTPError(400, "bad_request", "message must not be empty")
        if body.callback_url is not None:
            problem = self.callback_guard.policy.url_problem(body.callback_url)
            if problem is not None:
                raise HTTPError(400, "bad_request", problem)
        return body

    def _check_agent(self, body: WebhookRequest) -> None:
        """A request choosing an agent that cannot be used (unknown, or not a string) is
        refused before anything is stored (a 4xx stores nothing), so a corrected retry
        with the same id can run. The same check as the daemon API's."""
        def problem(name: str) -> str | None:
            return agent_choice_problem(name, self.context.agent_names(),
                                        instance=self.context.instance,
                                        federation=self.context.daemon.federation)

        try:
            requested_agent(body.agent, body.metadata, problem)
        except BadAgentChoice as exc:
            raise HTTPError(400, "unknown_agent", str(exc)) from None

    def _namespace(self, requested: str | None) -> Namespace:
        """Always under the channel's prefix: the request names only the part below it."""
        if requested is None:
            return self.prefix.child(str(uuid.uuid4()))
        try:
            return self.prefix.join(requested)
        except InvalidNamespace as exc:
            raise HTTPError(400, "bad_request", f"invalid namespace: {exc}") from None

    def _repeat(self, request_id: str, reply: OutboundMessage | OutboundError | None,
                asynchronous: bool) -> Response:
        """A request id seen before: the same answer as the first time."""
        if reply is not None:
            asynchronous = bool(reply.reply_to.get("callback_url"))
        if asynchronous:
            return json_response(202, {"id": request_id, "status": "accepted"})
        if reply is not None:
            status, body = self._render(request_id, reply)
            return json_response(status, body)
        raise HTTPError(409, "in_progress", f"request {request_id} is still running")

    # -- replies -------------------------------------------------------------------------

    def _render(self, request_id: str,
                reply: OutboundMessage | OutboundError) -> tuple[int, dict[str, Any]]:
        if isinstance(reply, OutboundMessage):
            return 200, reply_body(reply, request_id, self.context.instance)
        return (status_for_code(reply.code),
                error_body(request_id, reply.code, reply.error))

    def queued(self, inbound: InboundMessage) -> None:
        """The message waits for an unavailable peer (``on_unavailable: queue``): a waiting
        synchronous request is answered ``202 queued`` now; its reply is kept for a retry
        with the same id (and POSTed to ``callback_url`` when there is one)."""
        pending = self._pending.get(inbound.delivery_id or "")
        if pending is not None:
            pending.answer(202, {"id": inbound.delivery_id, "status": "queued"})

    def stores_before_send(self, reply: OutboundMessage | OutboundError) -> bool:
        """A callback must be stored before it is POSTed; a synchronous reply is only
        handed to the waiting request (and stored with its outcome)."""
        return bool(reply.reply_to.get("callback_url"))

    async def send(self, response: OutboundMessage) -> None:
        await self._finish(response)

    async def send_error(self, error: OutboundError) -> None:
        await self._finish(error)

    async def _finish(self, reply: OutboundMessage | OutboundError) -> None:
        """Hand the reply to its waiting request, or POST it to its callback.

        A synchronous reply is delivered once the pipeline has it (stored, a retry of the
        request gets it); a callback only once the receiver accepted it.
        """
        request_id = reply.delivery_id or ""
        status, body = self._render(request_id, reply)
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.answer(status, body)
        url = reply.reply_to.get("callback_url")
        if not isinstance(url, str) or not url:
            return
        if self._client is None:
            raise ChannelSendError("the channel is not serving", retryable=True)
        await post_callback(self._client.get(), self.auth, self.name, request_id, url, body,
                            self.callback_guard, metrics=self.context.metrics)


def _callback_client() -> httpx.AsyncClient:
    """A client of the channel's own, when the daemon gave it none (tests, embedders)."""
    import httpx  # on first use: most daemons never send a callback

    return httpx.AsyncClient(timeout=httpx.Timeout(CALLBACK_TIMEOUT_S))
