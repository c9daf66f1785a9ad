"""A scriptable fake Discord (gateway over WebSocket + REST over HTTP) on 127.0.0.1.

It implements the spec in ``/work/shared/reference/discord.md`` §5 closely enough to test a
real client against it: v10 JSON gateway (optionally ``compress=zlib-stream``) with Hello,
heartbeats, IDENTIFY/READY, RESUME with replay of missed dispatches, op 7 / op 9 and the
documented close codes; REST with Discord-shaped bodies, validation, ``X-RateLimit-*``
buckets that are enforced, a global limit, nonce idempotency and an invalid-request (ban)
counter. Everything the client does is recorded, and faults can be injected.

Usage::

    async with FakeDiscord(heartbeat_interval_ms=100) as fake:
        # point the client at fake.api_base (REST) -- it discovers fake.gateway_url via
        # GET /gateway/bot; READY hands out fake.resume_gateway_url (a second listener)
        await fake.wait_for_identify()
        await fake.dispatch_message("hello")
        await fake.wait_for_posts(1)
        assert fake.messages_posted[0]["content"] == ...

Timing: every constant is a knob. The fake only uses ``trio.current_time()`` and
``trio.sleep*``, so it runs under pytest-trio's ``autojump_clock`` (probed: a missed-heartbeat
close lands at exactly 1.5 x 41.25 s of virtual time, bucket 429s behave); but autojump can in
principle jump while loopback bytes are in flight, so for timing-sensitive assertions prefer
real time with small values (``heartbeat_interval_ms`` 50-200, ``identify_must_wait_s``,
``reconnect_grace_s``, ``invalid_session_grace_s`` around 0.1-0.5).

Wait helpers never time out: wrap them in ``trio.fail_after``.

Scenario map (discord.md §5.4): G3 :meth:`~FakeDiscord.request_heartbeat`; G4
``ack_heartbeats = False``; G5 :meth:`~FakeDiscord.freeze_connection`; G6
:meth:`~FakeDiscord.drop_connection`; G7 :meth:`~FakeDiscord.send_reconnect` then dispatch;
G8 ``reconnect_instead_of_hello``; G9/G12/G13/G14/G15 :meth:`~FakeDiscord.close_connection`;
G10 :meth:`~FakeDiscord.expire_session` or ``invalid_session_on_resume = False``; G11/G31
:meth:`~FakeDiscord.invalid_session`; G18 ``identify_must_wait_s``; G19
``session_start_limit={"remaining": 0, ...}``; G20 ``gateway_send_limit``; G21
``max_payload_bytes``; G22 ``?compress=zlib-stream`` + ``zlib_split``; G23
``dispatch_message(message_id=...)`` twice; G24 ``replay_overlap``; G25
``dispatch_message(extra=..., omit=...)`` / :meth:`~FakeDiscord.dispatch`; G26
``withhold_hello``; G27 ``reject_upgrades`` / ``rest_fail_next(route="/gateway/bot")``; G28
``heartbeat_ack_delay_s``; R2/R4/R5 :meth:`~FakeDiscord.set_rate_limit`; R3/R6/R7/R8/R9/R25
``rest_fail_next(429, ...)``; R10/R11 ``rest_fail_next(502, commit=True)`` /
``delay_s`` / :meth:`~FakeDiscord.hold_rest` (held until the test releases it); R15
:meth:`~FakeDiscord.delete_message`; R17 ``add_channel(can_send=False)``;
R18 ``rest_fail_next(429, cloudflare=True)`` / :meth:`~FakeDiscord.ban`; R19
``invalid_request_limit``; R24 ``created_messages[i]["mentions"]``; X2
``GET /channels/{id}/messages?after=``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, wrap_server_stream

from orrad.http import HTTPServer, Request, Response, Router, json_response
from tests.fakes.background import ServesInBackground
from tests.fakes.discord_gateway import (
    CLIENT_OPS,
    DIRECT_MESSAGE_TYPING,
    DIRECT_MESSAGES,
    GUILD_MESSAGE_TYPING,
    GUILD_MESSAGES,
    GUILDS,
    INVALIDATING_CLOSE_CODES,
    MESSAGE_CONTENT,
    OP_DISPATCH,
    OP_HEARTBEAT,
    OP_HEARTBEAT_ACK,
    OP_HELLO,
    OP_IDENTIFY,
    OP_INVALID_SESSION,
    OP_RECONNECT,
    OP_RESUME,
    PRIVILEGED_INTENTS,
    VALID_INTENTS,
    ConnectionRecord,
    GatewayFrame,
    LiveConnection,
    Session,
    compress_chunks,
    encode_payload,
    parse_client_frames,
)
from tests.fakes.discord_rest import (
    BAN_MESSAGE,
    CLOUDFLARE_HTML,
    VIA,
    BucketState,
    ChannelInfo,
    RestFault,
    RestRecord,
    RouteLimit,
    bucket_hash,
    compute_pings,
    default_error_body,
    discord_error,
    form_error,
    ratelimit_headers,
    retry_after_header,
)

__all__ = [
    "ChannelInfo",
    "ConnectionRecord",
    "FakeDiscord",
    "GatewayFrame",
    "RestHold",
    "RestRecord",
    "RouteLimit",
]

logger = logging.getLogger(__name__)

DISCORD_EPOCH_MS = 1420070400000
_UA = re.compile(r"^DiscordBot \(.+, .+\)")
_MENTION = re.compile(r"<@!?(\d+)>")
_ALLOWED_FLAGS = (1 << 2) | (1 << 12)  # SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS
_PARSE_CHOICES = frozenset({"users", "roles", "everyone"})

RestHandler = Callable[[Request, RestRecord], Awaitable[Response]]


async def _nursery_holder(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """Open a nursery, hand it to the caller, keep it open until cancelled."""
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


def _default_route_limits() -> dict[str, RouteLimit]:
    five = (5, 5.0)
    return {
        "POST /channels/{channel_id}/messages": RouteLimit(*five, "channel-messages-create"),
        "GET /channels/{channel_id}/messages": RouteLimit(*five, "channel-messages-list"),
        "POST /channels/{channel_id}/typing": RouteLimit(*five, "channel-typing"),
        "GET /channels/{channel_id}": RouteLimit(*five, "channel-get"),
        "GET /gateway/bot": RouteLimit(*five, "gateway-bot"),
        "GET /users/@me": RouteLimit(*five, "users-me"),
    }


class _HeldRequest:
    """One request parked in a :class:`RestHold` and what :meth:`RestHold.release` decided."""

    def __init__(self, record: RestRecord) -> None:
        self.record = record
        self.released = trio.Event()
        self.commit = False
        self.status = 503


class RestHold:
    """Matching REST requests wait here until the test releases them (a controlled hang).

    Made by :meth:`FakeDiscord.hold_rest`. Every request that arrives while the hold is
    :attr:`active` and matches :attr:`route` is appended to :attr:`held` (its
    :class:`RestRecord`; the request is already in :attr:`FakeDiscord.rest_requests`) and
    waits, with nothing done yet (no rate-limit bucket consumed, no message created), until
    :meth:`release` decides: ``commit=True`` answers it normally from then on (a message is
    created, dispatched and remembered by nonce as usual; if the client is gone by then --
    killed -- the message exists but the client never learned it), ``commit=False`` answers
    ``status`` (Discord-shaped, as :meth:`FakeDiscord.rest_fail_next` would) and changes
    nothing. :meth:`stop` ends the hold (later requests pass) and releases what still waits.
    """

    def __init__(self, fake: FakeDiscord, route: str | None) -> None:
        self.route = route
        self.active = True
        self.held: list[RestRecord] = []
        """Every request this hold parked, in arrival order (released ones included)."""
        self._fake = fake
        self._probe = RestFault(0, 0, route=route)
        self._waiting: list[_HeldRequest] = []

    @property
    def waiting(self) -> list[RestRecord]:
        """The requests parked right now."""
        return [w.record for w in self._waiting]

    def matches(self, method: str, path: str, template: str | None) -> bool:
        return self.active and self._probe.matches(method, path, template)

    def release(self, *, commit: bool, status: int = 503,
                where: Callable[[RestRecord], bool] | None = None) -> int:
        """Let the waiting requests (those ``where`` accepts) go; returns how many."""
        chosen = [w for w in self._waiting if where is None or where(w.record)]
        for waiter in chosen:
            self._waiting.remove(waiter)
            waiter.commit, waiter.status = commit, status
            waiter.released.set()
        return len(chosen)

    def stop(self, *, commit: bool, status: int = 503) -> int:
        """End the hold and release everything still waiting; returns how many."""
        self.active = False
        if self in self._fake._holds:
            self._fake._holds.remove(self)
        return self.release(commit=commit, status=status)

    async def park(self, record: RestRecord) -> _HeldRequest:
        waiter = _HeldRequest(record)
        self.held.append(record)
        self._waiting.append(waiter)
        record.fault = "held"
        self._fake._notify()
        await waiter.released.wait()
        return waiter


class FakeDiscord(ServesInBackground):
    """Fake Discord gateway + REST API for one bot token. Use as ``async with``.

    Public state (read it in assertions): :attr:`frames_received`, :attr:`frames_sent`,
    :attr:`connections`, :attr:`rest_requests`, :attr:`messages_posted`,
    :attr:`created_messages`, :attr:`channel_messages`, :attr:`typing_posts`,
    :attr:`invalid_requests`, :attr:`identify_count`, :attr:`resume_count`,
    :attr:`heartbeat_count`, :attr:`identifies`, :attr:`resumes`, :attr:`events_lost`,
    :attr:`protocol_notes`, :attr:`token_resets`, :attr:`nonce_hits`,
    :attr:`rate_limit_violations`.

    Knobs are plain attributes (set them any time); see ``__init__`` for the list.
    """

    def __init__(
        self,
        *,
        token: str = "test-token",
        bot_user_id: str = "1000",
        bot_username: str = "orrad-bot",
        heartbeat_interval_ms: int = 41250,
        session_start_limit: dict[str, int] | None = None,
        application_id: str | None = None,
        seed: int = 0,
    ) -> None:
        """Configure the bot identity, the Hello interval and ``/gateway/bot``'s limits.

        ``session_start_limit`` keys (defaults): ``total`` 1000, ``remaining`` 1000,
        ``reset_after`` (ms until the budget refills to ``total``) 86_400_000,
        ``max_concurrency`` 1. ``seed`` makes session ids and tokens deterministic.
        """
        self.token = token
        self.bot_user_id = bot_user_id
        self.bot_username = bot_username
        self.application_id = application_id or bot_user_id
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.session_start_limit: dict[str, int] = {
            "total": 1000, "remaining": 1000, "reset_after": 86_400_000, "max_concurrency": 1,
        }
        self.session_start_limit.update(session_start_limit or {})
        self._rng = random.Random(seed)

        # ---- gateway knobs ---------------------------------------------------------------
        self.ack_heartbeats = True
        """False: heartbeats are recorded but never ACKed (zombie; dispatches still flow)."""
        self.heartbeat_ack_delay_s = 0.0
        """Delay before each op 11 (G28)."""
        self.heartbeat_timeout_factor: float | None = 1.5
        """Close when no heartbeat arrived for ``interval x factor`` (None: never)."""
        self.heartbeat_timeout_close_code = 4000
        self.reconnect_instead_of_hello: int = 0
        """The next N connections (True = 1) get op 7 instead of Hello (G8)."""
        self.withhold_hello: int = 0
        """The next N connections get no Hello at all (G26)."""
        self.reject_upgrades: int = 0
        """The next N WebSocket upgrades are refused with ``reject_upgrade_status`` (G27)."""
        self.reject_upgrade_status = 502
        self.invalid_session_on_resume: bool | None = None
        """Not None: every RESUME is answered with op 9 carrying this value."""
        self.identify_must_wait_s = 5.0
        """Identify-concurrency window: more than ``max_concurrency`` IDENTIFYs within it
        are answered with op 9 ``false`` (discord.md §1.10/§5.3)."""
        self.reset_token_on_budget_exhausted = True
        """IDENTIFY with ``remaining == 0``: True resets the token (all sessions die with 4004,
        old token gets 401), False answers op 9 ``false``."""
        self.reconnect_grace_s: float | None = 5.0
        """After op 7, close after this long unless the client closed first (None: never)."""
        self.reconnect_close_code = 4000
        self.invalid_session_grace_s: float | None = 5.0
        """After op 9, close after this long unless the client closed first (None: never)."""
        self.invalid_session_close_code = 4000
        self.future_seq_close_code: int | None = 4007
        """RESUME with ``seq`` beyond the last one issued: close code (None: op 9 false)."""
        self.resume_window_s = 180.0
        """How long a detached session stays resumable."""
        self.replay_buffer_size = 1000
        self.replay_overlap = 0
        """Replay from ``seq - overlap + 1`` instead of ``seq + 1`` (G24 duplicates)."""
        self.gateway_send_limit = 120
        self.gateway_send_window_s = 60.0
        self.max_payload_bytes = 4096
        self.zlib_split = 1
        """zlib-stream: split every compressed payload over this many WS messages (G22)."""
        self.enabled_privileged_intents = MESSAGE_CONTENT
        """Privileged intents "enabled in the Developer Portal"; others close with 4014."""
        self.echo_own_messages = True
        """A successful POST is dispatched back as MESSAGE_CREATE, as Discord does."""
        self.close_timeout_s = 2.0
        """How long a server-initiated close waits for the client's close frame."""
        self.session_start_window_s = 86_400.0
        """Once ``reset_after`` has passed, ``remaining`` refills and a window this long starts."""
        self.shards = 1
        """``shards`` in ``GET /gateway/bot``."""
        self.guilds: dict[str, str] = {"300": "orrad-test"}
        """Guild id -> name; READY lists them, then one GUILD_CREATE each."""

        # ---- REST knobs ------------------------------------------------------------------
        self.require_user_agent = True
        """Requests whose User-Agent does not match ``DiscordBot (url, version)`` get 403
        40333 (the Cloudflare block)."""
        self.route_limits: dict[str, RouteLimit] = _default_route_limits()
        """``"METHOD /template"`` -> limit; enforced per major parameter (channel id)."""
        self.global_rate_limit: int | None = 50
        """Requests per second per token before a global 429 (None: unlimited)."""
        self.invalid_request_limit = 10_000
        self.invalid_request_window_s = 600.0
        self.ban_duration_s = 3600.0
        self.ban_html = False
        """Ban mode answers an HTML page instead of the JSON ban body."""
        self.nonce_window_s = 300.0
        self.content_max_length = 2000
        self.content_max_wording = 2000
        """The number in "Must be N or fewer in length." (reports show 4000 too)."""

        # ---- record ----------------------------------------------------------------------
        self.frames_received: list[GatewayFrame] = []
        self.frames_sent: list[GatewayFrame] = []
        self.connections: list[ConnectionRecord] = []
        self.rest_requests: list[RestRecord] = []
        self.messages_posted: list[dict[str, Any]] = []
        """Bodies of successful message creates plus ``channel_id`` and the new ``id``."""
        self.created_messages: list[dict[str, Any]] = []
        """The message objects those creates returned (with ``mentions`` = who was pinged)."""
        self.channel_messages: dict[str, list[dict[str, Any]]] = {}
        """Per channel, every message the fake knows (dispatched or posted), oldest first."""
        self.typing_posts: list[tuple[str, float]] = []
        self.identifies: list[Any] = []
        """Every IDENTIFY ``d`` received, accepted or not."""
        self.resumes: list[Any] = []
        """Every RESUME ``d`` received, accepted or not."""
        self.identify_count = 0
        """Successful IDENTIFYs (READY sent)."""
        self.resume_count = 0
        """Successful RESUMEs (RESUMED sent)."""
        self.heartbeat_count = 0
        self.invalid_requests = 0
        """REST answers 401/403/429 (429 with scope ``shared`` excluded), as Cloudflare counts."""
        self.rate_limit_violations = 0
        """Real (not scripted) 429s: requests on an exhausted bucket or past the global limit,
        i.e. the client ignored what the headers told it (invariant 6)."""
        self.bans = 0
        self.nonce_hits = 0
        self.token_resets = 0
        self.events_lost: list[tuple[str, Any]] = []
        """Dispatches made while the current session was dead (lost, as on Discord)."""
        self.events_filtered: list[tuple[str, Any]] = []
        """Dispatches the session's intents did not allow."""
        self.protocol_notes: list[str] = []
        """Non-fatal oddities in what the client sent (deprecated keys, ...)."""

        # ---- state -----------------------------------------------------------------------
        self.api_base = ""
        self.gateway_url = ""
        self.resume_gateway_url = ""
        self.channels: dict[str, ChannelInfo] = {
            "200": ChannelInfo("200", 0, "300", "general"),
            "400": ChannelInfo("400", 1, None),
        }
        self._users: dict[str, dict[str, Any]] = {self.bot_user_id: self.bot_user}
        self._by_id: dict[tuple[str, str], dict[str, Any]] = {}
        self._nonces: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._conns: list[LiveConnection] = []
        self._sessions: dict[str, Session] = {}
        self._session: Session | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._identify_times: deque[float] = deque()
        self._start_reset_at = 0.0
        self._faults: list[RestFault] = []
        self._holds: list[RestHold] = []
        self._buckets: dict[str, BucketState] = {}
        self._global_times: deque[float] = deque()
        self._global_blocked_until = float("-inf")
        self._invalid_times: deque[float] = deque()
        self._banned_until = float("-inf")
        self._epoch0 = time.time()
        self._last_snowflake = 0
        self._changed = trio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run REST and both gateway listeners until cancelled; started once all listen."""
        now = trio.current_time()
        self._epoch0 = time.time() - now
        self._start_reset_at = now + self.session_start_limit["reset_after"] / 1000
        server = HTTPServer(self._build_router(), name="fake-discord", server_header="cloudflare")
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1:0")
            self.api_base = f"http://{host}:{port}/api/v10"
            gw_port = await nursery.start(self._serve_gateway, "gateway")
            resume_port = await nursery.start(self._serve_gateway, "resume")
            self.gateway_url = f"ws://127.0.0.1:{gw_port}"
            self.resume_gateway_url = f"ws://127.0.0.1:{resume_port}"
            task_status.started()

    # -- identity and channels ---------------------------------------------------------------

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot's user object (READY ``user``, ``GET /users/@me``, message authors)."""
        return {
            "id": self.bot_user_id, "username": self.bot_username, "discriminator": "0",
            "global_name": None, "avatar": None, "bot": True, "flags": 0,
            "public_flags": 0, "verified": True, "mfa_enabled": False,
        }

    def add_channel(
        self, channel_id: str, *, guild_id: str | None = "300", type: int | None = None,
        name: str | None = None, parent_id: str | None = None, can_view: bool = True,
        can_send: bool = True,
    ) -> ChannelInfo:
        """Register (or replace) a channel; ``guild_id`` None makes it a DM (type 1).

        Threads: ``type`` 11 with ``parent_id``. ``can_view``/``can_send`` False make REST
        answer 403 50001 / 50013.
        """
        kind = type if type is not None else (0 if guild_id is not None else 1)
        if guild_id is not None and guild_id not in self.guilds:
            self.guilds[guild_id] = f"guild-{guild_id}"
        info = ChannelInfo(channel_id, kind, guild_id, name, parent_id, can_view, can_send)
        self.channels[channel_id] = info
        return info

    def delete_message(self, channel_id: str, message_id: str) -> None:
        """Forget a message, so replies to it get 50035 REPLIES_UNKNOWN_MESSAGE (R15)."""
        self._by_id.pop((channel_id, message_id), None)
        msgs = self.channel_messages.get(channel_id, [])
        self.channel_messages[channel_id] = [m for m in msgs if m.get("id") != message_id]

    @property
    def live_connection(self) -> LiveConnection | None:
        """The most recently opened connection that is still open."""
        for conn in reversed(self._conns):
            if conn.record.closed_at is None:
                return conn
        return None

    @property
    def session(self) -> Session | None:
        """The newest gateway session (None before the first successful IDENTIFY)."""
        return self._session

    def gateway_frames(
        self, direction: Literal["recv", "sent"], *, op: int | None = None,
        connection: int | None = None, t: str | None = None,
    ) -> list[GatewayFrame]:
        """Filter :attr:`frames_received` / :attr:`frames_sent`."""
        frames = self.frames_received if direction == "recv" else self.frames_sent
        return [
            f for f in frames
            if (op is None or f.op == op) and (connection is None or f.connection == connection)
            and (t is None or f.t == t)
        ]

    # -- waiting -----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every recorded change."""
        while not predicate():
            await self._changed.wait()

    async def wait_for_identify(self, count: int = 1) -> None:
        """Until ``count`` IDENTIFYs succeeded (READY and GUILD_CREATEs already sent)."""
        await self.wait_until(lambda: self.identify_count >= count)

    async def wait_for_resume(self, count: int = 1) -> None:
        """Until ``count`` RESUMEs succeeded (replay and RESUMED already sent)."""
        await self.wait_until(lambda: self.resume_count >= count)

    async def wait_for_connection(self, count: int) -> None:
        """Until ``count`` WebSocket connections were opened (rejected upgrades included)."""
        await self.wait_until(lambda: len(self.connections) >= count)

    async def wait_for_posts(self, count: int) -> None:
        """Until :attr:`messages_posted` holds ``count`` messages."""
        await self.wait_until(lambda: len(self.messages_posted) >= count)

    async def wait_for_heartbeats(self, count: int) -> None:
        """Until ``count`` op 1 heartbeats arrived (all connections together)."""
        await self.wait_until(lambda: self.heartbeat_count >= count)

    async def wait_for_close(self, connection_index: int) -> None:
        """Until connection ``connection_index`` exists and is closed (either side)."""
        await self.wait_until(
            lambda: len(self.connections) > connection_index
            and self.connections[connection_index].closed_at is not None
        )

    async def wait_for_typing(self, count: int) -> None:
        """Until ``count`` successful ``POST /channels/{id}/typing`` calls."""
        await self.wait_until(lambda: len(self.typing_posts) >= count)

    async def wait_for_held(self, hold: RestHold, count: int) -> None:
        """Until ``hold`` has parked ``count`` requests (released ones included)."""
        await self.wait_until(lambda: len(hold.held) >= count)

    async def wait_for_requests(self, count: int, route: str | None = None) -> None:
        """Until ``count`` REST requests (matching ``route``, as in :meth:`rest_fail_next`)."""
        probe = RestFault(0, 0, route=route)
        await self.wait_until(lambda: sum(
            1 for r in self.rest_requests if probe.matches(r.method, r.path, r.route)
        ) >= count)

    # -- producing traffic -------------------------------------------------------------------

    async def dispatch(self, event_name: str, data: dict[str, Any]) -> int:
        """Send a dispatch (op 0) in the current session; returns its ``s``.

        The event is buffered for RESUME replay; while the client is disconnected (but the
        session is resumable) it is only buffered. Returns 0 when no ``s`` was assigned:
        before the first IDENTIFY the event is queued and delivered right after the first
        READY (a test convenience); when the session is dead it is lost
        (:attr:`events_lost`), as on Discord; when the session's intents exclude it, it is
        dropped (:attr:`events_filtered`).
        """
        if event_name == "MESSAGE_CREATE":
            self._remember_message(data)
        session = self._session
        if session is None:
            self._pending.append((event_name, data))
            return 0
        async with session.lock:
            if not session.alive(trio.current_time()):
                self.events_lost.append((event_name, data))
                self._notify()
                return 0
            return await self._emit(session, event_name, data)

    async def dispatch_message(
        self, content: str, *, channel_id: str = "200", guild_id: str | None = "300",
        author_id: str = "500", author_name: str = "alice", bot: bool = False,
        mentions_bot: bool = True, message_id: str | None = None,
        reply_to: str | None = None, extra: dict[str, Any] | None = None,
        omit: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A user's message as MESSAGE_CREATE; returns the message object.

        ``guild_id`` None makes it a DM (no ``guild_id``/``member``, ``channel_type`` 1).
        With ``mentions_bot`` the content gets a ``<@BOT_ID> `` prefix unless it already
        mentions the bot (``mentions`` is always derived from the content, as on Discord).
        ``reply_to`` makes it a reply (type 19) to that message id (``referenced_message``
        null when the fake does not know it). ``extra`` is merged in last and ``omit`` keys
        are removed (G25 shapes: ``omit=("member", "channel_type", "referenced_message")``).
        Reusing ``message_id`` re-dispatches the same message (G23).
        """
        channel = self.channels.get(channel_id)
        if channel is None:
            channel = self.add_channel(channel_id, guild_id=guild_id)
        bot_mention = re.compile(rf"<@!?{re.escape(self.bot_user_id)}>")
        if mentions_bot and not bot_mention.search(content):
            content = f"<@{self.bot_user_id}> {content}"
        author: dict[str, Any] = {
            "id": author_id, "username": author_name, "discriminator": "0",
            "global_name": author_name.title(), "avatar": None, "public_flags": 0,
        }
        if bot:
            author["bot"] = True
        self._users.setdefault(author_id, author)
        msg: dict[str, Any] = {
            "id": message_id or self.snowflake(), "channel_id": channel_id,
            "author": author, "content": content, "timestamp": self._timestamp(),
            "edited_timestamp": None, "tts": False,
            "mention_everyone": "@everyone" in content or "@here" in content,
            "mentions": [self._user_obj(uid) for uid in dict.fromkeys(_MENTION.findall(content))],
            "mention_roles": [], "attachments": [], "embeds": [], "pinned": False,
            "type": 0, "flags": 0, "components": [], "channel_type": channel.type,
        }
        if guild_id is not None:
            msg["guild_id"] = guild_id
            msg["member"] = self._member()
        if reply_to is not None:
            msg["type"] = 19
            msg["message_reference"] = {
                "type": 0, "message_id": reply_to, "channel_id": channel_id,
                **({"guild_id": guild_id} if guild_id is not None else {}),
            }
            msg["referenced_message"] = self._by_id.get((channel_id, reply_to))
        if extra:
            msg.update(extra)
        for key in omit:
            msg.pop(key, None)
        await self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def snowflake(self) -> str:
        """A new snowflake string from the (virtual) clock; strictly increasing."""
        ms = int((self._epoch0 + trio.current_time()) * 1000)
        value = max(((ms - DISCORD_EPOCH_MS) << 22) | (1 << 17), self._last_snowflake + 1)
        self._last_snowflake = value
        return str(value)

    # -- gateway fault injection -------------------------------------------------------------

    def _require_live(self) -> LiveConnection:
        conn = self.live_connection
        if conn is None:
            raise RuntimeError("FakeDiscord: no live gateway connection")
        return conn

    async def send_reconnect(self) -> None:
        """op 7 on the live connection; events from now on are buffered for the resume.

        The fake closes the connection itself after ``reconnect_grace_s`` (code
        ``reconnect_close_code``) unless the client closed first.
        """
        conn = self._require_live()
        await self._send(conn, OP_RECONNECT)
        self._detach(conn, invalidate=False)
        self._close_later(conn, self.reconnect_grace_s, self.reconnect_close_code, "reconnect")

    async def invalid_session(self, resumable: bool) -> None:
        """op 9 with ``d = resumable`` on the live connection (G11/G31).

        ``False`` kills the session (events dispatched afterwards are lost until a new
        IDENTIFY). The connection is closed after ``invalid_session_grace_s``.
        """
        await self._invalid_session(self._require_live(), resumable)

    async def close_connection(self, code: int, reason: str = "") -> None:
        """Close the live connection with ``code`` (e.g. 4000, 4004, 4007, 4009, 4014, 1000).

        Codes in :data:`INVALIDATING_CLOSE_CODES` kill the session; others keep it resumable.
        """
        await self._close(self._require_live(), code, reason)

    async def drop_connection(self) -> None:
        """Abrupt TCP reset of the live connection: no close frame, the client sees 1006."""
        await self._drop(self._require_live())

    async def request_heartbeat(self) -> None:
        """op 1 from the server: the client must answer with an op 1 at once (G3)."""
        await self._send(self._require_live(), OP_HEARTBEAT)

    def freeze_connection(self) -> None:
        """Half-open connection (G5): the fake stops sending (no ACKs, no dispatches; they
        are buffered for resume) and ignores what it receives, without closing."""
        conn = self._require_live()
        conn.frozen = True
        self._detach(conn, invalidate=False)
        if conn.ws_nursery is not None:
            conn.ws_nursery.cancel_scope.cancel()
        if conn.nursery is not None:
            conn.nursery.start_soon(self._drain_frozen, conn)

    async def _drain_frozen(self, conn: LiveConnection) -> None:
        """Read a frozen connection's raw bytes: record frames, answer nothing (no close
        echo, no pong), and mark it closed only when the client drops TCP."""
        buffer = bytearray()
        try:
            while True:
                try:
                    data = await conn.stream.receive_some(65536)
                except trio.BusyResourceError:  # trio-websocket's reader is still unwinding
                    await trio.lowlevel.checkpoint()
                    continue
                if not data:
                    break
                buffer += data
                for opcode, payload in parse_client_frames(buffer):
                    if opcode in (0x1, 0x2):
                        self._record_frame(conn, payload)
                    elif opcode == 0x8 and conn.record.client_close_code is None:
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                        conn.record.client_close_code = code
                        conn.record.client_close_reason = payload[2:].decode("utf-8", "replace")
                        self._notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        record = conn.record
        self._mark_closed(conn, record.client_close_code or 1006, record.client_close_reason)

    def expire_session(self) -> None:
        """Make the current session unresumable (resume window over): RESUME gets op 9 false."""
        if self._session is not None:
            self._session.invalidated = True

    # -- REST fault injection ----------------------------------------------------------------

    def rest_fail_next(
        self, status: int, *, times: int = 1, retry_after: float | None = None,
        global_: bool = False, route: str | None = None, body: Any = None,
        scope: str | None = None, commit: bool = False, delay_s: float = 0.0,
        cloudflare: bool = False,
    ) -> None:
        """Answer the next ``times`` matching REST requests with ``status``.

        ``route``: ``"[METHOD ]PATTERN"``, PATTERN a template
        (``"/channels/{channel_id}/messages"``) or glob (``"/channels/*/messages"``),
        without ``/api/v10``; None matches any request (including typing!).

        429: JSON ``{"message", "retry_after", "global"}``, ``Retry-After`` (whole seconds,
        rounded up), ``Via``; per-bucket (``scope`` "user", default) adds the bucket's
        ``X-RateLimit-*`` with ``Remaining: 0`` and blocks the bucket for ``retry_after``
        (requests in that window get real 429s); ``scope="shared"`` keeps the real
        ``Remaining`` and is not counted as invalid; ``global_`` adds
        ``X-RateLimit-Global: true`` / ``Scope: global`` and blocks every request for
        ``retry_after``. ``cloudflare``: the ban answer (429, no headers, no ``Via``).
        Other statuses: Discord-shaped JSON (401, 403 50013, 404 10003, 500), Cloudflare
        HTML for 502/503/504; ``body`` overrides it (JSON). ``commit``: run the real
        handler first (the message is created and dispatched), then answer the fault
        (R10 "commit then 502"). ``delay_s``: sleep before answering (R11 hangs).
        """
        self._faults.append(RestFault(
            status, times, retry_after, global_, scope or ("global" if global_ else "user"),
            route, body, commit, delay_s, cloudflare,
        ))

    def rest_delay_next(self, delay_s: float, *, times: int = 1, route: str | None = None) -> None:
        """Answer the next matching requests normally, but only after ``delay_s``."""
        self._faults.append(RestFault(0, times, route=route, delay_s=delay_s, slow_only=True))

    def hold_rest(self, route: str | None = None) -> RestHold:
        """Park every matching REST request until the test releases it (see :class:`RestHold`).

        ``route`` as in :meth:`rest_fail_next`. Holds are checked before scripted faults;
        the first active matching hold takes the request.
        """
        hold = RestHold(self, route)
        self._holds.append(hold)
        return hold

    def set_rate_limit(
        self, route: str, limit: int, per_s: float, bucket: str | None = None,
    ) -> None:
        """Change a route's limit (``route`` = ``"POST /channels/{channel_id}/messages"``).

        Routes given the same ``bucket`` name share one limit per major parameter (R5).
        """
        old = self.route_limits.get(route)
        name = bucket or (old.bucket if old else route)
        self.route_limits[route] = RouteLimit(limit, per_s, name)

    def ban(self, duration_s: float | None = None) -> None:
        """Enter Cloudflare ban mode now (every request: 429 without headers or ``Via``)."""
        now = trio.current_time()
        self._banned_until = now + (self.ban_duration_s if duration_s is None else duration_s)
        self.bans += 1

    @property
    def banned(self) -> bool:
        """Whether ban mode is active."""
        return trio.current_time() < self._banned_until

    # == gateway internals ===================================================================

    async def _serve_gateway(
        self, endpoint: Literal["gateway", "resume"], *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port: int = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            await self._on_tcp(endpoint, port, stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            task_status.started(port)

    async def _on_tcp(
        self, endpoint: Literal["gateway", "resume"], port: int, stream: trio.SocketStream,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                # trio-websocket's reader task runs in its own nursery so that freezing a
                # connection can stop it without touching the rest.
                ws_nursery: trio.Nursery = await nursery.start(_nursery_holder)
                try:
                    with trio.fail_after(10):
                        request = await wrap_server_stream(ws_nursery, stream)
                    await self._run_ws(endpoint, port, request, stream, ws_nursery)
                except (trio.TooSlowError, ConnectionClosed, trio.BrokenResourceError,
                        trio.ClosedResourceError):
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _run_ws(
        self, endpoint: Literal["gateway", "resume"], port: int, request: WebSocketRequest,
        stream: trio.SocketStream, ws_nursery: trio.Nursery,
    ) -> None:
        target = request.path
        path, _, qs = target.partition("?")
        query = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
        record = ConnectionRecord(
            index=len(self.connections), endpoint=endpoint,
            url=f"ws://127.0.0.1:{port}{target}", path=path, query=query,
            opened_at=trio.current_time(), compress=query.get("compress"),
        )
        self.connections.append(record)
        self._notify()
        if self.reject_upgrades > 0:
            self.reject_upgrades -= 1
            status = self.reject_upgrade_status
            record.rejected_status = status
            record.closed_at = trio.current_time()
            record.closed.set()
            self._notify()
            phrase = HTTPStatus(status).phrase
            html = CLOUDFLARE_HTML.format(status=status, phrase=phrase).encode()
            await request.reject(status, extra_headers=[(b"content-type", b"text/html")], body=html)
            return
        ws = await request.accept()
        conn = LiveConnection(record, ws, stream)
        conn.ws_nursery = ws_nursery
        self._conns.append(conn)
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                nursery.start_soon(self._reader, conn)
                await self._greet(conn)
                nursery.start_soon(self._watchdog, conn)
        finally:
            if record.closed_at is None:  # the fake is shutting down
                conn.closing = True
                self._mark_closed(conn, None, None)

    async def _greet(self, conn: LiveConnection) -> None:
        """Validate the query, then Hello (or op 7 / nothing, per knobs)."""
        query = conn.record.query
        if query.get("v") != "10":
            await self._close(conn, 4012, "Invalid API version")
            return
        if query.get("encoding", "json") != "json":
            await self._close(conn, 4002, "fake supports encoding=json only")
            return
        if query.get("compress") not in (None, "zlib-stream"):
            await self._close(conn, 4002, "fake supports compress=zlib-stream only")
            return
        if self.reconnect_instead_of_hello > 0:
            self.reconnect_instead_of_hello -= 1
            conn.record.first_op_sent = OP_RECONNECT
            await self._send(conn, OP_RECONNECT)
            self._close_later(conn, self.reconnect_grace_s, self.reconnect_close_code, "reconnect")
            return
        if self.withhold_hello > 0:
            self.withhold_hello -= 1
            return
        conn.hello_at = trio.current_time()
        conn.record.hello_sent = True
        conn.record.first_op_sent = OP_HELLO
        await self._send(conn, OP_HELLO, {
            "heartbeat_interval": self.heartbeat_interval_ms,
            "_trace": ['["fake-gateway-prd-1",{"micros":0.0}]'],
        })

    async def _watchdog(self, conn: LiveConnection) -> None:
        """Close connections whose client stopped heartbeating (knob-controlled)."""
        while True:
            interval = self.heartbeat_interval_ms / 1000
            factor = self.heartbeat_timeout_factor
            base = conn.last_beat if conn.last_beat is not None else conn.hello_at
            if factor is None or base is None or conn.frozen:
                await trio.sleep(max(interval, 0.01))
                continue
            deadline = base + interval * factor
            if trio.current_time() >= deadline:
                await self._close(conn, self.heartbeat_timeout_close_code, "heartbeat timeout")
                return
            await trio.sleep_until(deadline)

    async def _reader(self, conn: LiveConnection) -> None:
        while True:
            try:
                message = await conn.ws.get_message()
            except ConnectionClosed as exc:
                if conn.frozen:  # the raw drain task watches the socket from now on
                    return
                if not conn.closing:  # else the closing task records it
                    reason = exc.reason
                    code = reason.code if reason is not None else 1006
                    self._mark_closed(conn, code, reason.reason if reason is not None else None)
                return
            await self._on_payload(conn, message)

    def _record_frame(self, conn: LiveConnection, data: bytes) -> tuple[int | None, Any]:
        """Record one client payload in :attr:`frames_received`; returns ``(op, d)``."""
        now = trio.current_time()
        raw = data.decode("utf-8", "replace")
        try:
            obj: Any = msgspec.json.decode(data)
        except msgspec.DecodeError:
            obj = None
        op = obj.get("op") if isinstance(obj, dict) else None
        if not isinstance(op, int) or isinstance(op, bool):
            op = None
        d = obj.get("d") if isinstance(obj, dict) else None
        s = obj.get("s") if isinstance(obj, dict) else None
        t = obj.get("t") if isinstance(obj, dict) else None
        self.frames_received.append(GatewayFrame(
            "recv", conn.index, op, d, s if isinstance(s, int) else None,
            t if isinstance(t, str) else None, now, raw, conn.last_seq_sent,
        ))
        if op == OP_HEARTBEAT:
            self.heartbeat_count += 1
        self._notify()
        return op, d

    async def _on_payload(self, conn: LiveConnection, message: str | bytes) -> None:
        now = trio.current_time()
        data = message.encode() if isinstance(message, str) else message
        op, d = self._record_frame(conn, data)
        if conn.frozen:
            return
        window = conn.recv_times
        window.append(now)
        while window and window[0] <= now - self.gateway_send_window_s:
            window.popleft()
        if len(data) > self.max_payload_bytes or op is None:
            await self._close(conn, 4002, "Error while decoding payload.")
        elif len(window) > self.gateway_send_limit:
            await self._close(conn, 4008, "Rate limited.")
        elif op not in CLIENT_OPS:
            await self._close(conn, 4001, "Unknown opcode.")
        elif op == OP_HEARTBEAT:
            await self._on_heartbeat(conn, d)
        elif op == OP_IDENTIFY:
            await self._on_identify(conn, d)
        elif op == OP_RESUME:
            await self._on_resume(conn, d)
        elif not conn.authenticated:
            await self._close(conn, 4003, "Not authenticated.")
        # other client ops (presence, voice state, ...) are accepted and only recorded

    async def _on_heartbeat(self, conn: LiveConnection, d: Any) -> None:
        conn.last_beat = trio.current_time()
        if d is not None and (not isinstance(d, int) or isinstance(d, bool)):
            self._note(conn, f"heartbeat d is {d!r}, not an int or null")
        elif isinstance(d, int) and (conn.last_seq_sent is None or d > conn.last_seq_sent):
            self._note(conn, f"heartbeat d={d} is ahead of the last s sent ({conn.last_seq_sent})")
        if not self.ack_heartbeats:
            return
        if self.heartbeat_ack_delay_s > 0:
            assert conn.nursery is not None
            conn.nursery.start_soon(self._delayed_ack, conn, self.heartbeat_ack_delay_s)
        else:
            await self._send(conn, OP_HEARTBEAT_ACK)

    async def _delayed_ack(self, conn: LiveConnection, delay: float) -> None:
        await trio.sleep(delay)
        await self._send(conn, OP_HEARTBEAT_ACK)

    async def _on_identify(self, conn: LiveConnection, d: Any) -> None:
        record = conn.record
        self.identifies.append(d)
        if isinstance(d, dict):
            record.identify = d
        if conn.authenticated:
            await self._refuse(conn, 4005, "Already authenticated.")
            return
        if not isinstance(d, dict) or not isinstance(d.get("token"), str):
            await self._refuse(conn, 4002, "Error while decoding payload.")
            return
        if d["token"] != self.token:
            await self._refuse(conn, 4004, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0 \
                or intents & ~VALID_INTENTS:
            await self._refuse(conn, 4013, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~self.enabled_privileged_intents:
            await self._refuse(conn, 4014, "Disallowed intent(s).")
            return
        props = d.get("properties")
        if not isinstance(props, dict):
            await self._refuse(conn, 4002, "Error while decoding payload.")
            return
        if any(str(k).startswith("$") for k in props):
            self._note(conn, "identify properties use deprecated $-prefixed keys")
        missing = [k for k in ("os", "browser", "device") if not isinstance(props.get(k), str)]
        if missing:
            self._note(conn, f"identify properties lack {missing}")
        shard = d.get("shard")
        if shard is not None and not (
            isinstance(shard, list) and len(shard) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
            and 0 <= shard[0] < shard[1]
        ):
            await self._refuse(conn, 4010, "Invalid shard.")
            return
        if d.get("compress") is True:
            if record.compress == "zlib-stream":
                self._note(conn, "identify compress=true together with zlib-stream (ignored)")
            else:
                self._note(conn, "identify compress=true: payload compression unsupported, "
                                 "the fake sends plain JSON")
        threshold = d.get("large_threshold")
        if threshold is not None and not (isinstance(threshold, int) and 50 <= threshold <= 250):
            self._note(conn, f"large_threshold {threshold!r} outside 50..250")
        now = trio.current_time()
        window = self._identify_times
        while window and window[0] <= now - self.identify_must_wait_s:
            window.popleft()
        if len(window) >= self.session_start_limit["max_concurrency"]:
            self._note(conn, "identify concurrency exceeded (max_concurrency per "
                             f"{self.identify_must_wait_s}s): op 9 false")
            await self._invalid_session(conn, False)
            return
        limit = self._refresh_start_limit(now)
        if limit["remaining"] <= 0:
            self._note(conn, "identify with session_start_limit.remaining == 0")
            if self.reset_token_on_budget_exhausted:
                await self._reset_token(conn)
            else:
                await self._invalid_session(conn, False)
            return
        limit["remaining"] -= 1
        window.append(now)
        session = Session(
            session_id=f"{self._rng.getrandbits(128):032x}", token=self.token,
            intents=intents, identify_connection=conn.index, query=dict(record.query),
            shard=shard,
        )
        self._sessions[session.session_id] = session
        self._session = session
        conn.authenticated = True
        conn.session = session
        record.session_id = session.session_id
        record.outcome = "ready"
        async with session.lock:
            session.conn = conn
            session.seq = 1
            await self._send(conn, OP_DISPATCH, self._ready_payload(session), 1, "READY")
            if intents & GUILDS:
                for guild_id in self.guilds:
                    await self._emit(session, "GUILD_CREATE", self._guild_create(guild_id))
            pending, self._pending = self._pending, []
            for name, data in pending:
                await self._emit(session, name, data)
        self.identify_count += 1
        self._notify()

    async def _on_resume(self, conn: LiveConnection, d: Any) -> None:
        record = conn.record
        self.resumes.append(d)
        if isinstance(d, dict):
            record.resume = d
        if conn.authenticated:
            await self._refuse(conn, 4005, "Already authenticated.")
            return
        if not isinstance(d, dict) or not isinstance(d.get("token"), str) \
                or not isinstance(d.get("session_id"), str) \
                or not isinstance(d.get("seq"), int) or isinstance(d.get("seq"), bool):
            await self._refuse(conn, 4002, "Error while decoding payload.")
            return
        if d["token"] != self.token:
            await self._refuse(conn, 4004, "Authentication failed.")
            return
        session = self._sessions.get(d["session_id"])
        record.session_id = d["session_id"]
        seq: int = d["seq"]
        forced = self.invalid_session_on_resume
        if forced is not None:
            if session is not None and not forced:
                session.invalidated = True
            await self._invalid_session(conn, forced)
            return
        now = trio.current_time()
        if session is None or session.token != d["token"] or not session.alive(now):
            await self._invalid_session(conn, False)
            return
        if seq > session.seq:
            self._note(conn, f"resume seq {seq} is beyond the last issued {session.seq}")
            if self.future_seq_close_code is not None:
                session.invalidated = True
                await self._refuse(conn, self.future_seq_close_code, "Invalid seq.")
            else:
                await self._invalid_session(conn, False)
            return
        if seq < session.evicted_upto:
            await self._invalid_session(conn, False)
            return
        previous = session.conn
        conn.authenticated = True
        conn.session = session
        record.resume_query_matched = record.query == session.query
        async with session.lock:
            if previous is not None and previous is not conn:
                session.conn = None
                self._close_later(previous, 0, 4000, "session resumed elsewhere")
            start = seq - self.replay_overlap
            for frame in list(session.buffer):
                if frame["s"] > start:
                    await self._send(conn, OP_DISPATCH, frame["d"], frame["s"], frame["t"])
            session.seq += 1
            resumed = {"_trace": ["fake-gateway"]}
            await self._send(conn, OP_DISPATCH, resumed, session.seq, "RESUMED")
            session.conn = conn
            session.resumable_until = None
        record.outcome = "resumed"
        self.resume_count += 1
        self._notify()

    async def _emit(self, session: Session, name: str, data: dict[str, Any]) -> int:
        """Assign ``s``, buffer and deliver one dispatch. Caller holds ``session.lock``."""
        shaped = self._shape_for_intents(session.intents, name, data)
        if shaped is None:
            self.events_filtered.append((name, data))
            self._notify()
            return 0
        session.seq += 1
        seq = session.seq
        session.buffer.append({"op": OP_DISPATCH, "d": shaped, "s": seq, "t": name})
        while len(session.buffer) > self.replay_buffer_size:
            session.evicted_upto = session.buffer.popleft()["s"]
        if session.conn is not None:
            await self._send(session.conn, OP_DISPATCH, shaped, seq, name)
        return seq

    def _shape_for_intents(
        self, intents: int, name: str, data: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Drop or blank an event the way the session's intents would (discord.md §5.3)."""
        in_guild = data.get("guild_id") is not None
        if name in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"):
            if not intents & (GUILD_MESSAGES if in_guild else DIRECT_MESSAGES):
                return None
            if name == "MESSAGE_CREATE" and in_guild and not intents & MESSAGE_CONTENT:
                author = data.get("author") or {}
                mentioned = any(
                    isinstance(u, dict) and u.get("id") == self.bot_user_id
                    for u in data.get("mentions") or []
                )
                if author.get("id") != self.bot_user_id and not mentioned:
                    blank = dict(data, content="", embeds=[], attachments=[], components=[])
                    blank.pop("poll", None)
                    return blank
        elif name == "TYPING_START":
            if not intents & (GUILD_MESSAGE_TYPING if in_guild else DIRECT_MESSAGE_TYPING):
                return None
        elif name in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") and not intents & GUILDS:
            return None
        return data

    async def _send(
        self, conn: LiveConnection, op: int, d: Any = None, s: int | None = None,
        t: str | None = None,
    ) -> bool:
        """Send one payload (zlib-stream compressed if negotiated) and record it."""
        if conn.frozen or conn.closing or conn.record.closed_at is not None:
            return False
        raw = encode_payload(op, d, s, t)
        async with conn.send_lock:
            now = trio.current_time()
            previous_seq = conn.last_seq_sent
            if s is not None:
                conn.last_seq_sent = s
            try:
                if conn.compressor is not None:
                    for chunk in compress_chunks(conn.compressor, raw.encode(), self.zlib_split):
                        await conn.ws.send_message(chunk)
                else:
                    await conn.ws.send_message(raw)
            except ConnectionClosed:
                conn.last_seq_sent = previous_seq
                return False
            self.frames_sent.append(GatewayFrame("sent", conn.index, op, d, s, t, now, raw))
        self._notify()
        return True

    async def _refuse(self, conn: LiveConnection, code: int, reason: str) -> None:
        """Close in answer to an IDENTIFY/RESUME, recording the verdict."""
        if conn.record.outcome is None or conn.record.outcome in ("ready", "resumed"):
            conn.record.outcome = f"closed:{code}"
        await self._close(conn, code, reason)

    async def _invalid_session(self, conn: LiveConnection, resumable: bool) -> None:
        conn.record.outcome = f"invalid_session:{str(resumable).lower()}"
        await self._send(conn, OP_INVALID_SESSION, resumable)
        self._detach(conn, invalidate=not resumable)
        self._close_later(
            conn, self.invalid_session_grace_s, self.invalid_session_close_code,
            "invalid session",
        )

    def _close_later(
        self, conn: LiveConnection, delay: float | None, code: int, reason: str,
    ) -> None:
        if delay is None or conn.nursery is None or conn.record.closed_at is not None:
            return

        async def later() -> None:
            await trio.sleep(delay)
            await self._close(conn, code, reason)

        conn.nursery.start_soon(later)

    async def _close(self, conn: LiveConnection, code: int, reason: str = "") -> None:
        """Server-initiated close with ``code``; waits briefly for the client's echo."""
        record = conn.record
        if conn.closing or record.closed_at is not None:
            return
        conn.closing = True
        record.server_close_code = code
        record.server_close_reason = reason
        self._detach(conn, invalidate=code in INVALIDATING_CLOSE_CODES)
        try:
            with trio.move_on_after(self.close_timeout_s):
                await conn.ws.aclose(code, reason or None)
        finally:
            self._mark_closed(conn, None, None)

    async def _drop(self, conn: LiveConnection) -> None:
        if conn.closing or conn.record.closed_at is not None:
            return
        conn.closing = True
        conn.record.dropped_by_server = True
        self._detach(conn, invalidate=False)
        with contextlib.suppress(OSError):  # linger 0: close() sends a TCP RST
            conn.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        await trio.aclose_forcefully(conn.stream)
        self._mark_closed(conn, None, None)

    def _detach(self, conn: LiveConnection, *, invalidate: bool) -> None:
        """Stop delivering the session's events to ``conn``; it stays resumable unless
        ``invalidate``."""
        session = conn.session
        if session is None:
            return
        if invalidate:
            session.invalidated = True
        if session.conn is conn:
            session.conn = None
            session.resumable_until = trio.current_time() + self.resume_window_s

    def _mark_closed(self, conn: LiveConnection, code: int | None, reason: str | None) -> None:
        record = conn.record
        if record.closed_at is not None:
            return
        record.closed_at = trio.current_time()
        if not conn.closing:
            record.client_close_code = code
            record.client_close_reason = reason
        self._detach(conn, invalidate=not conn.closing and code in (1000, 1001))
        record.closed.set()
        if conn.nursery is not None:
            conn.nursery.cancel_scope.cancel()
        self._notify()

    async def _reset_token(self, conn: LiveConnection) -> None:
        """Daily identify budget blown: Discord resets the token and ends every session."""
        self.token_resets += 1
        self.token = f"reset-{self._rng.getrandbits(64):016x}"
        for session in self._sessions.values():
            session.invalidated = True
        conn.record.outcome = "closed:4004"
        for other in list(self._conns):
            if other.record.closed_at is None:
                await self._close(other, 4004, "Authentication failed.")

    def _refresh_start_limit(self, now: float) -> dict[str, int]:
        limit = self.session_start_limit
        if now >= self._start_reset_at:
            limit["remaining"] = limit["total"]
            self._start_reset_at = now + self.session_start_window_s
        limit["reset_after"] = max(0, int((self._start_reset_at - now) * 1000))
        return limit

    def _note(self, conn: LiveConnection, text: str) -> None:
        note = f"conn {conn.index}: {text}"
        self.protocol_notes.append(note)
        logger.info("fake discord: %s", note)

    def _ready_payload(self, session: Session) -> dict[str, Any]:
        ready: dict[str, Any] = {
            "v": 10, "user": self.bot_user, "user_settings": {},
            "guilds": [{"id": g, "unavailable": True} for g in self.guilds],
            "session_id": session.session_id, "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [], "relationships": [], "presences": [],
            "guild_join_requests": [], "geo_ordered_rtc_regions": ["fake"],
            "_trace": ['["fake-gateway-prd-1",{"micros":0.0}]'],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        return ready

    def _guild_create(self, guild_id: str) -> dict[str, Any]:
        channels = [
            c.to_json(self.bot_user) for c in self.channels.values() if c.guild_id == guild_id
        ]
        return {
            "id": guild_id, "name": self.guilds[guild_id], "unavailable": False,
            "owner_id": "1", "member_count": 2, "large": False, "joined_at": self._timestamp(),
            "channels": [c for c in channels if c["type"] not in (10, 11, 12)],
            "threads": [c for c in channels if c["type"] in (10, 11, 12)],
            "members": [], "roles": [{"id": guild_id, "name": "@everyone", "permissions": "0"}],
            "presences": [], "voice_states": [], "emojis": [], "stickers": [],
            "stage_instances": [], "guild_scheduled_events": [], "features": [],
        }

    def _remember_message(self, msg: dict[str, Any]) -> None:
        channel_id, message_id = msg.get("channel_id"), msg.get("id")
        if not isinstance(channel_id, str) or not isinstance(message_id, str):
            return
        if (channel_id, message_id) in self._by_id:
            return
        self._by_id[(channel_id, message_id)] = msg
        self.channel_messages.setdefault(channel_id, []).append(msg)

    def _user_obj(self, user_id: str) -> dict[str, Any]:
        return self._users.get(user_id) or {
            "id": user_id, "username": f"user{user_id}", "discriminator": "0",
            "global_name": None, "avatar": None, "public_flags": 0,
        }

    def _member(self) -> dict[str, Any]:
        return {
            "roles": [], "joined_at": self._timestamp(), "deaf": False, "mute": False,
            "flags": 0, "nick": None, "avatar": None, "premium_since": None, "pending": False,
        }

    def _timestamp(self) -> str:
        now = datetime.fromtimestamp(self._epoch0 + trio.current_time(), UTC)
        return now.isoformat(timespec="microseconds")

    # == REST internals ======================================================================

    def _build_router(self) -> Router:
        router = Router()

        def add(method: str, template: str, fn: RestHandler, *, auth: bool = True) -> None:
            route = f"{method} {template}"

            async def handler(req: Request) -> Response:
                return await self._rest_entry(req, route, fn, auth)

            router.add(method, "/api/v10" + template, handler)

        add("GET", "/gateway", self._h_gateway, auth=False)
        add("GET", "/gateway/bot", self._h_gateway_bot)
        add("GET", "/users/@me", self._h_me)
        add("GET", "/channels/{channel_id}", self._h_channel)
        add("GET", "/channels/{channel_id}/messages", self._h_messages_list)
        add("POST", "/channels/{channel_id}/messages", self._h_message_create)
        add("POST", "/channels/{channel_id}/typing", self._h_typing)

        async def not_found(req: Request) -> Response:
            return await self._rest_entry(req, None, self._h_not_found, False)

        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
            router.add(method, "/{rest:path}", not_found)
        return router

    async def _rest_entry(
        self, req: Request, route: str | None, fn: RestHandler, auth: bool,
    ) -> Response:
        now = trio.current_time()
        headers: dict[str, str] = {}
        for name, value in req.headers:
            headers.setdefault(name.lower(), value)
        body: Any = None
        if req.body:
            try:
                body = msgspec.json.decode(req.body)
            except msgspec.DecodeError:
                body = None
        record = RestRecord(req.method, req.path, req.query, headers, body, now, route=route)
        self.rest_requests.append(record)
        resp = await self._rest_pipeline(req, record, fn, auth)
        record.status = resp.status
        record.response_headers = {k.lower(): v for k, v in resp.headers}
        content_type = resp.header("content-type") or ""
        if resp.body and content_type.startswith("application/json"):
            try:
                record.response = msgspec.json.decode(resp.body)
            except msgspec.DecodeError:
                record.response = None
        self._count_invalid(resp, trio.current_time())
        self._notify()
        return resp

    async def _rest_pipeline(
        self, req: Request, record: RestRecord, fn: RestHandler, auth: bool,
    ) -> Response:
        if self.banned:
            record.fault = "ban"
            return self._ban_response()
        hold = next((h for h in self._holds if h.matches(req.method, req.path, record.route)),
                    None)
        if hold is not None:
            waiter = await hold.park(record)
            if not waiter.commit:
                record.fault = f"held, then {waiter.status}"
                return self._fault_response(RestFault(waiter.status, 1), req, record)
            record.fault = "held, then committed"
            return await self._rest_normal(req, record, fn, auth)
        fault = self._take_fault(req.method, req.path, record.route)
        if fault is None:
            return await self._rest_normal(req, record, fn, auth)
        record.fault = fault.describe()
        if fault.slow_only:
            await trio.sleep(fault.delay_s)
            return await self._rest_normal(req, record, fn, auth)
        if fault.commit:
            real = await self._rest_normal(req, record, fn, auth)
            if real.status >= 300:
                return real
        if fault.delay_s:
            await trio.sleep(fault.delay_s)
        return self._fault_response(fault, req, record)

    def _take_fault(self, method: str, path: str, route: str | None) -> RestFault | None:
        for fault in self._faults:
            if fault.matches(method, path, route):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _rest_normal(
        self, req: Request, record: RestRecord, fn: RestHandler, auth: bool,
    ) -> Response:
        now = trio.current_time()
        if self.global_rate_limit is not None:
            window = self._global_times
            while window and window[0] <= now - 1.0:
                window.popleft()
            full = len(window) >= self.global_rate_limit
            if now < self._global_blocked_until or full:
                retry = max(self._global_blocked_until - now,
                            (window[0] + 1.0 - now) if full else 0.0)
                self.rate_limit_violations += 1
                return self._global_429(retry)
            window.append(now)
        if self.require_user_agent and not _UA.match(record.headers.get("user-agent", "")):
            return json_response(403, discord_error(
                "Cloudflare is blocking your request: missing or invalid User-Agent "
                "(expected 'DiscordBot ($url, $versionNumber)').", 40333,
            ), [VIA])
        if auth and record.headers.get("authorization") != f"Bot {self.token}":
            return json_response(401, discord_error("401: Unauthorized", 0), [VIA])
        found = self._bucket_for(record.route, req.path_params)
        if found is not None:
            state, bucket, key = found
            record.bucket = key
            if not state.consume(now):
                retry = state.reset_after(now)
                self.rate_limit_violations += 1
                return json_response(
                    429,
                    {"message": "You are being rate limited.", "retry_after": round(retry, 3),
                     "global": False},
                    [VIA, retry_after_header(retry),
                     *ratelimit_headers(state, bucket, now, self._epoch0, remaining=0),
                     ("x-ratelimit-scope", "user")],
                )
        resp = await fn(req, record)
        if found is not None:
            resp.headers.extend(ratelimit_headers(found[0], found[1], now, self._epoch0))
        return resp

    def _bucket_for(
        self, route: str | None, params: dict[str, str],
    ) -> tuple[BucketState, str, str] | None:
        limit = self.route_limits.get(route) if route is not None else None
        if limit is None:
            return None
        major = params.get("channel_id") or params.get("guild_id") or ""
        hashed = bucket_hash(limit.bucket)
        key = f"{hashed}:{major}"
        state = self._buckets.get(key)
        if state is None or (state.limit, state.per_s) != (limit.limit, limit.per_s):
            state = BucketState(limit.limit, limit.per_s, limit.limit)
            self._buckets[key] = state
        return state, hashed, key

    def _global_429(self, retry: float) -> Response:
        return json_response(
            429,
            {"message": "You are being rate limited.", "retry_after": round(retry, 3),
             "global": True},
            [VIA, retry_after_header(retry), ("x-ratelimit-global", "true"),
             ("x-ratelimit-scope", "global")],
        )

    def _ban_response(self) -> Response:
        if self.ban_html:
            html = CLOUDFLARE_HTML.format(status="Error 1015", phrase="You are being rate limited")
            return Response(429, [("content-type", "text/html; charset=UTF-8")], html.encode())
        return json_response(429, {"code": 0, "message": BAN_MESSAGE})

    def _fault_response(self, fault: RestFault, req: Request, record: RestRecord) -> Response:
        now = trio.current_time()
        if fault.cloudflare:
            return self._ban_response()
        if fault.status == 429:
            retry = 1.0 if fault.retry_after is None else fault.retry_after
            body = fault.body if fault.body is not None else {
                "message": "You are being rate limited.", "retry_after": retry,
                "global": fault.global_,
            }
            if fault.global_:
                self._global_blocked_until = max(self._global_blocked_until, now + retry)
                resp = self._global_429(retry)
                return json_response(429, body, resp.headers[1:])
            headers = [VIA, retry_after_header(retry)]
            found = self._bucket_for(record.route, req.path_params)
            if found is not None:
                state, bucket, key = found
                record.bucket = key
            else:
                state, bucket = BucketState(1, retry, 1), bucket_hash(record.route or req.path)
            state.refresh(now)
            if fault.scope == "user":
                state.remaining = 0
                state.reset_at = max(state.reset_at or now, now + retry)
                headers += ratelimit_headers(state, bucket, now, self._epoch0, remaining=0,
                                             reset_after=retry)
            else:
                headers += ratelimit_headers(state, bucket, now, self._epoch0, reset_after=retry)
            headers.append(("x-ratelimit-scope", fault.scope))
            return json_response(429, body, headers)
        if fault.body is not None:
            return json_response(fault.status, fault.body, [VIA])
        if fault.status in (502, 503, 504):
            phrase = HTTPStatus(fault.status).phrase
            html = CLOUDFLARE_HTML.format(status=fault.status, phrase=phrase).encode()
            return Response(fault.status, [("content-type", "text/html")], html)
        return json_response(fault.status, default_error_body(fault.status), [VIA])

    def _count_invalid(self, resp: Response, now: float) -> None:
        scope = resp.header("x-ratelimit-scope")
        if resp.status not in (401, 403) and not (resp.status == 429 and scope != "shared"):
            return
        self.invalid_requests += 1
        window = self._invalid_times
        window.append(now)
        while window and window[0] <= now - self.invalid_request_window_s:
            window.popleft()
        if len(window) >= self.invalid_request_limit and not self.banned:
            self.ban()

    # -- REST handlers -----------------------------------------------------------------------

    async def _h_gateway(self, req: Request, record: RestRecord) -> Response:
        return json_response(200, {"url": self.gateway_url}, [VIA])

    async def _h_gateway_bot(self, req: Request, record: RestRecord) -> Response:
        limit = dict(self._refresh_start_limit(trio.current_time()))
        body = {"url": self.gateway_url, "shards": self.shards, "session_start_limit": limit}
        return json_response(200, body, [VIA])

    async def _h_me(self, req: Request, record: RestRecord) -> Response:
        return json_response(200, self.bot_user, [VIA])

    async def _h_not_found(self, req: Request, record: RestRecord) -> Response:
        return json_response(404, discord_error("404: Not Found", 0), [VIA])

    def _channel_or_error(self, req: Request, *, send: bool) -> ChannelInfo | Response:
        channel = self.channels.get(req.path_params["channel_id"])
        if channel is None:
            return json_response(404, discord_error("Unknown Channel", 10003), [VIA])
        if not channel.can_view:
            return json_response(403, discord_error("Missing Access", 50001), [VIA])
        if send and not channel.can_send:
            return json_response(403, discord_error("Missing Permissions", 50013), [VIA])
        return channel

    async def _h_channel(self, req: Request, record: RestRecord) -> Response:
        channel = self._channel_or_error(req, send=False)
        if isinstance(channel, Response):
            return channel
        return json_response(200, channel.to_json(self.bot_user), [VIA])

    async def _h_messages_list(self, req: Request, record: RestRecord) -> Response:
        channel = self._channel_or_error(req, send=False)
        if isinstance(channel, Response):
            return channel
        text = req.query.get("limit", ["50"])[-1]
        if not text.isdigit() or not 1 <= int(text) <= 100:
            return json_response(400, form_error(
                "limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 100."), [VIA])
        limit = int(text)
        msgs = self.channel_messages.get(channel.id, [])
        after = req.query.get("after", [None])[-1]
        before = req.query.get("before", [None])[-1]
        if after and after.isdigit():
            chosen = [m for m in msgs if int(m["id"]) > int(after)][:limit]
        elif before and before.isdigit():
            chosen = [m for m in msgs if int(m["id"]) < int(before)][-limit:]
        else:
            chosen = msgs[-limit:]
        return json_response(200, list(reversed(chosen)), [VIA])

    async def _h_typing(self, req: Request, record: RestRecord) -> Response:
        channel = self._channel_or_error(req, send=True)
        if isinstance(channel, Response):
            return channel
        now = trio.current_time()
        self.typing_posts.append((channel.id, now))
        event: dict[str, Any] = {
            "channel_id": channel.id, "user_id": self.bot_user_id,
            "timestamp": int(self._epoch0 + now),
        }
        if channel.guild_id is not None:
            event["guild_id"] = channel.guild_id
            event["member"] = dict(self._member(), user=self.bot_user)
        await self.dispatch("TYPING_START", event)
        return Response(204, [VIA])

    async def _h_message_create(self, req: Request, record: RestRecord) -> Response:
        channel = self._channel_or_error(req, send=True)
        if isinstance(channel, Response):
            return channel
        problem = self._validate_message(req, record, channel)
        if isinstance(problem, Response):
            return problem
        body, target = problem
        content: str = body.get("content") or ""
        nonce = body.get("nonce")
        now = trio.current_time()
        if body.get("enforce_nonce") is True and nonce is not None:
            hit = self._nonces.get((self.bot_user_id, str(nonce)))
            if hit is not None and now - hit[0] <= self.nonce_window_s:
                self.nonce_hits += 1
                return json_response(200, hit[1], [VIA])
        replied_author = target["author"]["id"] if target is not None else None
        users, roles, everyone = compute_pings(
            content, body.get("allowed_mentions"), replied_author,
        )
        msg: dict[str, Any] = {
            "id": self.snowflake(), "type": 19 if target is not None else 0,
            "content": content, "channel_id": channel.id, "author": self.bot_user,
            "attachments": [], "embeds": body.get("embeds") or [],
            "mentions": [self._user_obj(u) for u in users], "mention_roles": roles,
            "mention_everyone": everyone, "pinned": False, "tts": body.get("tts") is True,
            "timestamp": self._timestamp(), "edited_timestamp": None,
            "flags": body.get("flags") or 0, "components": body.get("components") or [],
        }
        if nonce is not None:
            msg["nonce"] = nonce
        if target is not None:
            msg["message_reference"] = {
                "type": 0, "message_id": target["id"], "channel_id": channel.id,
                **({"guild_id": channel.guild_id} if channel.guild_id is not None else {}),
            }
            msg["referenced_message"] = target
        if nonce is not None:
            self._nonces[(self.bot_user_id, str(nonce))] = (now, msg)
        self.created_messages.append(msg)
        self.messages_posted.append({**body, "channel_id": channel.id, "id": msg["id"]})
        self._remember_message(msg)
        self._notify()
        if self.echo_own_messages:
            echo = dict(msg, channel_type=channel.type)
            if channel.guild_id is not None:
                echo["guild_id"] = channel.guild_id
                echo["member"] = self._member()
            await self.dispatch("MESSAGE_CREATE", echo)
        return json_response(200, msg, [VIA])

    def _validate_message(
        self, req: Request, record: RestRecord, channel: ChannelInfo,
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | Response:
        """Discord's checks for a message create; returns ``(body, reply target)``."""

        def bad(body: Any) -> Response:
            return json_response(400, body, [VIA])

        if not record.headers.get("content-type", "").startswith("application/json"):
            return bad(discord_error("Invalid Form Body (fake accepts application/json only)",
                                     50035))
        body = record.json
        if body is None:
            return bad(discord_error("The request body contains invalid JSON.", 50109))
        if not isinstance(body, dict):
            return bad(form_error("_", "DICT_TYPE_CONVERT", "Only dictionaries may be used."))
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            return bad(form_error("content", "BASE_TYPE_STRING", "Could not interpret as string."))
        if content is not None and len(content) > self.content_max_length:
            return bad(form_error(
                "content", "BASE_TYPE_MAX_LENGTH",
                f"Must be {self.content_max_wording} or fewer in length.",
            ))
        nonce = body.get("nonce")
        if nonce is not None and (
            isinstance(nonce, bool) or not isinstance(nonce, (str, int))
            or (isinstance(nonce, str) and not 1 <= len(nonce) <= 25)
        ):
            return bad(form_error("nonce", "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 25 in length."))
        allowed = body.get("allowed_mentions")
        if allowed is not None:
            if not isinstance(allowed, dict):
                return bad(form_error("allowed_mentions", "DICT_TYPE_CONVERT",
                                      "Only dictionaries may be used in a DictType"))
            parse = allowed.get("parse") or []
            if not isinstance(parse, list) or not set(parse) <= _PARSE_CHOICES:
                return bad(form_error("allowed_mentions", "BASE_TYPE_CHOICES",
                                      "Value must be one of {'users', 'roles', 'everyone'}."))
            for kind in ("users", "roles"):
                if kind in parse and allowed.get(kind):
                    return bad(form_error(
                        "allowed_mentions", "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                        f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
                    ))
        flags = body.get("flags")
        if flags is not None and (not isinstance(flags, int) or flags & ~_ALLOWED_FLAGS):
            return bad(form_error("flags", "MESSAGE_CREATE_INVALID_FLAGS", "Invalid flags."))
        target: dict[str, Any] | None = None
        ref = body.get("message_reference")
        if ref is not None:
            if not isinstance(ref, dict) or ref.get("message_id") is None:
                return bad(form_error("message_reference", "BASE_TYPE_REQUIRED",
                                      "This field is required"))
            must_exist = ref.get("fail_if_not_exists", True) is not False
            ref_channel = str(ref.get("channel_id") or channel.id)
            if ref_channel != channel.id:
                if must_exist:
                    return bad(form_error(
                        "message_reference", "REPLIES_CANNOT_REFERENCE_OTHER_CHANNEL",
                        "Cannot reply to a message in a different channel",
                    ))
            else:
                target = self._by_id.get((channel.id, str(ref["message_id"])))
                if target is None and must_exist:
                    return bad(form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE",
                                          "Unknown message"))
        sendable = (isinstance(content, str) and content.strip()) or any(
            body.get(k) for k in ("embeds", "sticker_ids", "components", "poll", "attachments")
        )
        if not sendable:
            return bad(discord_error("Cannot send an empty message", 50006))
        return body, target
