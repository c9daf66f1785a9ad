"""The Discord gateway: one session kept alive across disconnects, resumed when possible.

Lifecycle (``discord.md`` §1): ``GET /gateway/bot`` gives the URL and the identify budget;
the client connects with ``?v=10&encoding=json``, waits for Hello (op 10), starts
heartbeating after ``interval × random()``, then sends Identify (op 2) or, when it holds a
session, Resume (op 6) to the session's ``resume_gateway_url`` with the last sequence
number, which makes the gateway replay what was missed before RESUMED.

What ends a connection, and what comes next:

- op 7 Reconnect (also in place of Hello), a server close with a resumable code, a dropped
  TCP connection (1006), no Hello in time, a zombie connection (no heartbeat ACK between
  two of our beats): reconnect and **resume**.
- op 9 Invalid Session: ``d = true`` → resume; ``d = false`` → forget the session, wait a
  random 1–5 s, identify again. Close codes 4003/4007/4009 also need a fresh identify.
- 4004 (bad token) and 4010–4014 (shard, version, intents): nothing a retry can fix;
  :meth:`GatewayClient.run` raises :class:`~orrad.errors.FatalChannelError` with a message
  saying what to change, and sends nothing more.

Every close *we* initiate uses a non-1000 code (4000), which keeps the session resumable
(1000/1001 end it); only :meth:`GatewayClient.close` with 1000 ends it for good.
Reconnects wait a full-jitter exponential backoff that resets once a connection stayed up
``healthy_after_s``. Identifies are paced (``identify_interval_s``), budgeted per hour, and
held back while ``session_start_limit.remaining`` is 0: running out of the daily 1000
resets the bot's token.

Dispatches are handed to ``on_dispatch`` by a separate task, in order, through an
unbounded queue: the reader never waits for a slow handler, so heartbeat ACKs, op 1, op 7
and op 9 are always seen in time. The resume state (session id, resume URL, user id, the
intents and API base it was made with, and the sequence number of the last dispatch
*handled*) is saved through a :class:`SessionPersistence` right after a dispatch whose
handler stored something durable (``on_dispatch`` returned true: a claimed message), and
otherwise at most every ``seq_save_every`` dispatches or ``seq_save_interval_s``, so a
restarted daemon resumes where the previous process stopped handling, and the gateway
replays the rest (a replayed event it had already handled is harmless: handling is
idempotent).

A stored session is only resumed when it was made with the same token, intents and API
base: a session keeps the intents it was identified with, so a changed ``filter`` needs a
new one. A resume URL that could not be reached ``max_failed_resumes`` times in a row is
given up for a fresh identify once ``resume_window_s`` has passed since the last
established connection (or since the start, for a stored session): by then the session
is presumably gone anyway, and before then an outage of the gateway (or of our network)
must not cost a session that may still be resumed.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import platform
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from orrad import safejson
from orrad.channels.discord.rest import RestClient, RestError
from orrad.errors import ChannelClosed, FatalChannelError, StoreError
from orrad.state.kv import KeyValueStore

__all__ = [
    "FATAL_CLOSE_CODES",
    "CloseAction",
    "GatewayClient",
    "GatewayOptions",
    "KVSessionPersistence",
    "MemorySessionPersistence",
    "ResumeState",
    "SessionPersistence",
    "classify_close",
    "gateway_url",
]

log = logging.getLogger(__name__)

API_VERSION = 10
MAX_PAYLOAD_BYTES = 4096
RESUMABLE_CLOSE = 4000  # what we close with whenever we intend to resume

# Close codes Discord marks "do not reconnect", with what the operator must change.
FATAL_CLOSE_CODES: Mapping[int, str] = MappingProxyType({
    4004: "Discord rejected the bot token (4004 authentication failed): fix `token` in {where}",
    4010: "Discord rejected the shard (4010 invalid shard): orrad connects a single shard; "
          "check the bot's sharding settings",
    4011: "Discord requires sharding for this bot (4011 sharding required): it is in too "
          "many guilds for one connection, which orrad does not support yet",
    4012: "Discord rejected the gateway API version (4012 invalid API version): orrad "
          "speaks v10; check `api_base` in {where}",
    4013: "Discord rejected the gateway intents (4013 invalid intents): this is an orrad "
          "bug, please report it",
    4014: "Discord refused a privileged intent (4014 disallowed intents): enable MESSAGE "
          "CONTENT INTENT for this bot in the Developer Portal (Bot > Privileged Gateway "
          "Intents), or use `filter: mentions` or `filter: dm` in {where}",
})
# Codes that mean the session is gone: identify again instead of resuming.
_IDENTIFY_CLOSE_CODES = frozenset({4003, 4007, 4009})
# Codes that mean we sent something wrong; reconnecting is right, but it is our bug.
_CLIENT_BUG_CLOSE_CODES = frozenset({4001, 4002, 4003, 4005, 4008})


class CloseAction(enum.Enum):
    RESUME = "resume"
    IDENTIFY = "identify"
    FATAL = "fatal"


def classify_close(code: int) -> CloseAction:
    """What a close with ``code`` from the server calls for (``discord.md`` §1.8).

    Anything not listed (4000, 4001, 4002, 4005, 4008, 1000/1001 from the server, 1006 for
    a connection that died without a close frame) is worth a resume: the gateway answers
    with op 9 if the session cannot be resumed after all.
    """
    if code in FATAL_CLOSE_CODES:
        return CloseAction.FATAL
    if code in _IDENTIFY_CLOSE_CODES:
        return CloseAction.IDENTIFY
    return CloseAction.RESUME


def gateway_url(url: str) -> str:
    """``url`` with ``v=10&encoding=json`` (replacing any ``v``/``encoding``/``compress``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query)
             if k not in ("v", "encoding", "compress")]
    query = [("v", str(API_VERSION)), ("encoding", "json"), *query]
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


# -- resume state persistence ------------------------------------------------------------


class ResumeState(msgspec.Struct, frozen=True):
    """What a new connection (or a new process) needs to resume a session."""

    session_id: str
    resume_url: str
    seq: int | None
    user_id: str | None = None
    username: str | None = None
    token_tag: str | None = None  # which token made the session (a hash, not the token)
    intents: int | None = None  # the intents the session was identified with
    api_base: str | None = None  # the REST API base it was discovered through


class SessionPersistence(Protocol):
    """Where the resume state lives between connections and processes."""

    async def load(self) -> ResumeState | None: ...

    async def save(self, state: ResumeState) -> None: ...

    async def clear(self) -> None: ...


class MemorySessionPersistence:
    """Resume state kept in memory only (no restart survival); for tests and db-less use."""

    def __init__(self, state: ResumeState | None = None) -> None:
        self.state = state

    async def load(self) -> ResumeState | None:
        return self.state

    async def save(self, state: ResumeState) -> None:
        self.state = state

    async def clear(self) -> None:
        self.state = None


class KVSessionPersistence:
    """Resume state in the daemon's key-value store, under ``key`` of the store's scope."""

    def __init__(self, kv: KeyValueStore, key: str = "gateway_session") -> None:
        self.kv = kv
        self.key = key

    async def load(self) -> ResumeState | None:
        value = await self.kv.get(self.key)
        if value is None:
            return None
        try:
            return msgspec.convert(value, ResumeState)
        except msgspec.ValidationError as exc:
            log.warning("ignoring unreadable stored gateway session: %s", exc)
            return None

    async def save(self, state: ResumeState) -> None:
        await self.kv.put(self.key, msgspec.to_builtins(state))

    async def clear(self) -> None:
        await self.kv.delete(self.key)


# -- options and internal records --------------------------------------------------------


@dataclass
class GatewayOptions:
    """Timing knobs (seconds). The defaults follow Discord's docs; tests shrink them."""

    connect_timeout_s: float = 20.0
    hello_timeout_s: float = 30.0
    close_timeout_s: float = 2.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 30.0
    identify_interval_s: float = 5.0  # Discord: max_concurrency identifies per 5 s
    identify_budget: tuple[int, float] = (30, 3600.0)  # our own breaker: 30 per hour
    invalid_session_delay_s: tuple[float, float] = (1.0, 5.0)
    min_limit_wait_s: float = 1.0  # never poll /gateway/bot faster while the budget is 0
    max_failed_resumes: int = 3  # then give up on the session and identify
    resume_window_s: float = 120.0  # how long an unreachable resume URL is tried
    send_limit: tuple[int, float] = (120, 60.0)  # Discord closes 4008 above this
    heartbeat_reserve: int = 3  # sends of that limit only heartbeats may use
    dispatch_queue_size: int = 1024  # dispatches waiting for the handler: warn above this
    seq_save_every: int = 100  # save the resume point at least every N handled dispatches
    seq_save_interval_s: float = 1.0  # ... or this long after the first unsaved one
    max_message_size: int = 64 * 1024 * 1024  # a big guild's GUILD_CREATE exceeds 1 MiB


class _Mode(enum.Enum):
    IDENTIFY = "identify"
    RESUME = "resume"


@dataclass
class _Outcome:
    """How one connection ended and what the next one should do."""

    reason: str
    forget: bool = False  # the session is dead: identify next time
    delay: float | None = None  # fixed wait before reconnecting; None = backoff
    fatal: str | None = None
    established_at: float | None = None  # when READY/RESUMED arrived, if it did
    unreachable: bool = False  # no Hello: the URL could not be reached or said nothing


@dataclass
class _Live:
    """State shared by the reader and the heartbeat task of one connection."""

    acked: bool = True
    beats: int = 0
    outcome: _Outcome | None = None
    established_at: float | None = None


@dataclass(frozen=True)
class _Dispatch:
    session_id: str | None
    seq: int | None
    event: str
    data: dict[str, Any]


class _SendLimiter:
    """At most ``limit`` payloads per ``window`` on a connection; the last ``reserve`` slots
    are for heartbeats, so a burst of other payloads can never delay one."""

    def __init__(self, limit: int, window: float, reserve: int) -> None:
        self.limit, self.window, self.reserve = limit, window, reserve
        self._times: deque[float] = deque()

    async def acquire(self, *, priority: bool) -> None:
        cap = self.limit if priority else self.limit - self.reserve
        while True:
            now = trio.current_time()
            while self._times and self._times[0] <= now - self.window:
                self._times.popleft()
            if len(self._times) < cap:
                self._times.append(now)
                return
            await trio.sleep(self._times[0] + self.window - now)


class _Conn:
    def __init__(self, ws: WebSocketConnection, limiter: _SendLimiter) -> None:
        self.ws = ws
        self.limiter = limiter

    async def send(self, payload: dict[str, Any], *, priority: bool = False) -> None:
        data = msgspec.json.encode(payload)
        if len(data) > MAX_PAYLOAD_BYTES:
            # Discord would close with 4002; refuse to send it instead.
            raise ValueError(f"gateway payload op {payload.get('op')} is {len(data)} bytes")
        await self.limiter.acquire(priority=priority)
        await self.ws.send_message(data.decode())


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        value = safejson.decode(raw)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


# Returns true when handling stored something durable (e.g. claimed a message): the resume
# point is then saved at once.
OnDispatch = Callable[[str, dict[str, Any]], Awaitable[bool | None]]


# -- the client --------------------------------------------------------------------------


@dataclass
class _Counters:
    identifies: int = 0
    resumes: int = 0
    connections: int = 0
    identify_times: deque[float] = field(default_factory=deque)


class GatewayClient:
    """One bot session on the Discord gateway (a single shard).

    :meth:`run` connects and keeps the session alive until :meth:`close`, reconnecting as
    needed; it raises :class:`~orrad.errors.FatalChannelError` for failures a retry cannot
    fix. Callbacks: ``on_dispatch(event, data)`` (awaited, in order, off the reader; it
    returns true when it stored something durable, and an exception other than
    :class:`~orrad.errors.StoreError` or :class:`~orrad.errors.ChannelClosed` skips the
    event),
    ``on_ready(resumed)`` when a connection is established (READY or RESUMED),
    ``on_down(reason)`` when a connection is lost or cannot be made. ``where`` names the
    configuration to fix in fatal errors; the token never appears in a message or log.

    A client runs once: make a new one to start again.
    """

    def __init__(
        self,
        token: str,
        intents: int,
        rest: RestClient,
        *,
        persistence: SessionPersistence | None = None,
        on_dispatch: OnDispatch | None = None,
        on_ready: Callable[[bool], None] | None = None,
        on_down: Callable[[str], None] | None = None,
        options: GatewayOptions | None = None,
        rng: random.Random | None = None,
        where: str = "the channel file",
    ) -> None:
        self._token = token
        # A session belongs to the token that made it: resuming it with an edited token
        # would be refused (4004). Only a short hash is stored.
        self._token_tag = hashlib.sha256(token.encode()).hexdigest()[:16]
        self.intents = intents
        self.rest = rest
        self.persistence = persistence or MemorySessionPersistence()
        self.on_dispatch = on_dispatch
        self.on_ready = on_ready
        self.on_down = on_down
        self.options = options or GatewayOptions()
        self._rng = rng or random.Random()
        self.where = where
        self.session_id: str | None = None
        self.resume_url: str | None = None
        self.seq: int | None = None
        self.user_id: str | None = None
        self.username: str | None = None
        self.base_url: str | None = None
        self.counters = _Counters()
        self._failed_resumes = 0
        self._unreachable_resumes = 0
        self._last_established = 0.0
        self._resume_sent = False
        self._last_identify: float | None = None
        self._saved: ResumeState | None = None
        self._unsaved: ResumeState | None = None  # handled but not yet saved
        self._unsaved_count = 0
        self._unsaved_since = 0.0
        self._scope = trio.CancelScope()
        self._closing = False
        self._close_code = RESUMABLE_CLOSE
        self._running = False
        self._stopped = trio.Event()
        self._ws: WebSocketConnection | None = None

    # -- public ----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the session alive until :meth:`close`; raise on fatal errors."""
        if self._running:
            raise RuntimeError("a GatewayClient runs once")
        self._running = True
        fatal: FatalChannelError | None = None
        try:
            with self._scope:
                self._last_established = trio.current_time()
                await self._load()
                # Unbounded: the reader must never wait for the handler (see the module
                # docstring); _on_dispatch_frame warns when the backlog grows large.
                send, recv = trio.open_memory_channel[_Dispatch](math.inf)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._consume, recv)
                    try:
                        await self._connect_loop(send)
                    except FatalChannelError as exc:
                        fatal = exc
                    nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()
        if fatal is not None:
            raise fatal

    async def close(self, code: int = RESUMABLE_CLOSE) -> None:
        """Close the connection with ``code`` and make :meth:`run` return.

        1000/1001 end the Discord session (the bot goes offline) and delete the stored
        resume state: use them when the channel is removed. Any other code keeps the
        session resumable for a few minutes, so a restarted daemon resumes it.
        """
        self._closing = True
        self._close_code = code
        ws = self._ws
        if ws is not None:
            # Close from here, before cancelling: the cancellation would also stop
            # trio-websocket's reader, and the close handshake could not complete.
            with trio.move_on_after(self.options.close_timeout_s):
                await ws.aclose(code)
        self._scope.cancel()
        if self._running:
            await self._stopped.wait()
        if code in (1000, 1001):
            self.session_id = self.resume_url = None
            self.seq = None
            self._unsaved = None
            await self.persistence.clear()
        else:
            # Keep what was handled since the last save: the restart resumes from there.
            try:
                await self._save_unsaved()
            except StoreError as exc:
                log.warning("cannot store the gateway resume point (%s)", exc)

    @property
    def identifies(self) -> int:
        return self.counters.identifies

    @property
    def resumes(self) -> int:
        return self.counters.resumes

    # -- session bookkeeping ---------------------------------------------------------

    async def _load(self) -> None:
        try:
            state = await self.persistence.load()
        except StoreError as exc:
            log.warning("cannot read the stored gateway session (%s); identifying", exc)
            state = None
        if state is None:
            return
        if state.token_tag != self._token_tag:
            log.info("the stored gateway session belongs to another token; identifying")
            await self.persistence.clear()
            return
        if state.intents != self.intents or state.api_base != self.rest.api_base:
            # A resumed session keeps its old intents (a changed `filter` would silently
            # not get the events it needs), and a session of another API is not ours.
            log.info("the stored gateway session was made with other intents or another "
                     "api_base; identifying")
            await self.persistence.clear()
            return
        self.session_id, self.resume_url, self.seq = state.session_id, state.resume_url, state.seq
        self.user_id, self.username = state.user_id, state.username
        self._saved = state
        log.info("found a stored gateway session (seq %s); resuming it", state.seq)

    async def _forget_session(self) -> None:
        self.session_id = self.resume_url = None
        self.seq = None
        self._failed_resumes = 0
        self._unreachable_resumes = 0
        self._saved = self._unsaved = None
        await self.persistence.clear()

    async def _consume(self, recv: trio.MemoryReceiveChannel[_Dispatch]) -> None:
        while True:
            try:
                if self._unsaved is None:
                    item = await recv.receive()
                else:
                    # Save what was handled once the interval is up, even if nothing else
                    # arrives.
                    deadline = self._unsaved_since + self.options.seq_save_interval_s
                    with trio.move_on_at(deadline) as waited:
                        item = await recv.receive()
                    if waited.cancelled_caught:  # nothing received (receive is atomic)
                        await self._save_unsaved()
                        continue
            except trio.EndOfChannel:
                return
            await self._handle(item)

    async def _handle(self, item: _Dispatch) -> None:
        durable = False
        if self.on_dispatch is not None:
            try:
                durable = bool(await self.on_dispatch(item.event, item.data))
            except (StoreError, ChannelClosed):
                # Not stored (the store is broken, or the channel is closing): never move
                # the resume point past it, so Discord replays it.
                raise
            except Exception:
                # A malformed event (or a bug in handling it) must not kill the gateway:
                # the resume would replay it and die again. Skip it, and move past it.
                log.exception("gateway event %s (seq %s) could not be handled; skipped",
                              item.event, item.seq)
        # Only now is the event handled (durably, when on_dispatch stores it), so only
        # now may a restarted process skip it on resume.
        if (item.seq is None or item.session_id is None
                or item.session_id != self.session_id or self.resume_url is None):
            return
        state = ResumeState(item.session_id, self.resume_url, item.seq, self.user_id,
                            self.username, self._token_tag, self.intents, self.rest.api_base)
        if state == self._saved:
            return
        if self._unsaved is None:
            self._unsaved_since = trio.current_time()
        self._unsaved = state
        self._unsaved_count += 1
        if durable or self._unsaved_count >= self.options.seq_save_every:
            await self._save_unsaved()

    async def _save_unsaved(self) -> None:
        state, self._unsaved = self._unsaved, None
        self._unsaved_count = 0
        if state is not None and state != self._saved and state.session_id == self.session_id:
            await self.persistence.save(state)
            self._saved = state

    def _down(self, reason: str) -> None:
        if self.on_down is not None:
            self.on_down(reason)

    # -- the reconnect loop ----------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        cap = min(self.options.backoff_max_s, self.options.backoff_base_s * 2.0**attempt)
        return self._rng.uniform(0.0, cap)

    async def _connect_loop(self, dispatch: trio.MemorySendChannel[_Dispatch]) -> None:
        attempt = 0
        while True:
            resume = self.session_id is not None and self.resume_url is not None
            if resume and self._failed_resumes >= self.options.max_failed_resumes:
                log.warning("%d resume attempts failed in a row; starting a new session",
                            self._failed_resumes)
                await self._forget_session()
                resume = False
            if (resume and self._unreachable_resumes >= self.options.max_failed_resumes
                    and trio.current_time() - self._last_established
                    >= self.options.resume_window_s):
                log.warning("the session's resume URL could not be reached %d times in a "
                            "row and its resume window has passed; starting a new session",
                            self._unreachable_resumes)
                await self._forget_session()
                resume = False
            if resume:
                assert self.resume_url is not None
                self._resume_sent = False
                outcome = await self._connect_once(self.resume_url, _Mode.RESUME, dispatch)
                # A resume the gateway saw and never confirmed counts against the session;
                # a resume URL that cannot be reached counts separately (see the module
                # docstring).
                if outcome.established_at is None and not outcome.forget:
                    if self._resume_sent:
                        self._failed_resumes += 1
                    elif outcome.unreachable:
                        self._unreachable_resumes += 1
            else:
                try:
                    url = await self._prepare_identify()
                except RestError as exc:
                    outcome = _Outcome(f"GET /gateway/bot failed: {exc}")
                else:
                    outcome = await self._connect_once(url, _Mode.IDENTIFY, dispatch)
            if self._closing:
                return
            if outcome.fatal is not None:
                log.error("%s", outcome.fatal)
                error = FatalChannelError(outcome.fatal)
                # Nothing more goes to Discord from this channel, REST included (answers
                # still being computed fail locally instead of sending the rejected token).
                self.rest.mark_fatal(error)
                # The session cannot be used again; the next start (after the operator's
                # fix) identifies afresh.
                await self._forget_session()
                raise error
            if outcome.forget:
                await self._forget_session()
            now = trio.current_time()
            if (outcome.established_at is not None
                    and now - outcome.established_at >= self.options.healthy_after_s):
                attempt = 0
            if outcome.delay is not None and (outcome.delay > 0 or outcome.established_at):
                delay = outcome.delay
            else:
                # Also for "reconnect now" from a connection that never got going: an
                # immediate retry there could loop tightly.
                delay = self._backoff(attempt)
                attempt += 1
            nxt = "resume" if self.session_id is not None else "identify"
            if outcome.delay == 0 and outcome.established_at is not None:
                # A reconnect Discord asked for (op 7 every few hours is normal): not an
                # outage, so no "down" report; if it fails, that failure is reported.
                log.info("%s; %s now", outcome.reason, nxt)
            else:
                log.warning("gateway connection lost: %s; %s in %.2fs", outcome.reason, nxt,
                            delay)
                self._down(outcome.reason)
            await trio.sleep(delay)

    async def _prepare_identify(self) -> str:
        """Wait until an identify is allowed and return the URL to identify on."""
        while True:
            info = await self.rest.get_gateway_bot()
            self.base_url = info.url
            limit = info.session_start_limit
            if limit.remaining > 0:
                break
            wait = max(limit.reset_after / 1000.0, self.options.min_limit_wait_s)
            reason = (f"Discord's session start limit is used up ({limit.total} per day); "
                      f"waiting {wait:.0f}s before identifying")
            log.warning("%s", reason)
            self._down(reason)
            await trio.sleep(wait)
        now = trio.current_time()
        waits = [0.0]
        if self._last_identify is not None:
            waits.append(self._last_identify + self.options.identify_interval_s - now)
        budget, window = self.options.identify_budget
        times = self.counters.identify_times
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) >= budget:
            wait = times[0] + window - now
            log.error("%d identifies in %gs: holding the next one back %.0fs to protect the "
                      "bot's daily identify limit (its token is reset when it runs out)",
                      len(times), window, wait)
            waits.append(wait)
        if max(waits) > 0:
            await trio.sleep(max(waits))
        return info.url

    # -- one connection --------------------------------------------------------------

    async def _connect_once(
        self, url: str, mode: _Mode, dispatch: trio.MemorySendChannel[_Dispatch]
    ) -> _Outcome:
        target = gateway_url(url)
        self.counters.connections += 1
        log.info("connecting to the gateway (%s)", mode.value)
        result: _Outcome | None = None
        try:
            async with open_websocket_url(
                target,
                connect_timeout=self.options.connect_timeout_s,
                disconnect_timeout=self.options.close_timeout_s,
                max_message_size=self.options.max_message_size,
            ) as ws:
                self._ws = ws
                try:
                    result = await self._session(ws, mode, dispatch)
                finally:
                    self._ws = None
                    # trio-websocket would close with 1000 on leaving the block, which
                    # ends the session: close first, with 4000, unless told otherwise.
                    code = self._close_code if self._closing else RESUMABLE_CLOSE
                    # Cancelled, the reader is gone and no close reply can arrive: send
                    # the close frame and do not wait long for the reply.
                    cancelled = trio.current_effective_deadline() == -math.inf
                    timeout = min(0.1, self.options.close_timeout_s) if cancelled else (
                        self.options.close_timeout_s)
                    with trio.move_on_after(timeout, shield=True):
                        await ws.aclose(code)
        except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
            if result is None:
                return _Outcome(f"cannot connect to the gateway: {exc!r}", unreachable=True)
        assert result is not None
        return result

    async def _session(
        self, ws: WebSocketConnection, mode: _Mode, dispatch: trio.MemorySendChannel[_Dispatch]
    ) -> _Outcome:
        live = _Live()
        try:
            with trio.move_on_after(self.options.hello_timeout_s):
                hello = None
                while hello is None:
                    hello = _decode(await ws.get_message())
            if hello is None:
                return _Outcome(f"no Hello within {self.options.hello_timeout_s:g}s",
                                unreachable=True)
        except ConnectionClosed as exc:
            outcome = self._closed(exc, live)
            outcome.unreachable = outcome.fatal is None
            return outcome
        op = hello.get("op")
        if op == 7:
            # A draining node may say Reconnect before (or instead of) Hello.
            return _Outcome("op 7 Reconnect instead of Hello")
        d = hello.get("d")
        interval_ms = d.get("heartbeat_interval") if isinstance(d, dict) else None
        if op != 10 or not isinstance(interval_ms, int | float) or interval_ms <= 0:
            return _Outcome(f"expected Hello, got op {op}")
        interval = interval_ms / 1000.0
        limit, window = self.options.send_limit
        conn = _Conn(ws, _SendLimiter(limit, window, self.options.heartbeat_reserve))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, conn, interval, live, nursery.cancel_scope)
            try:
                await self._authenticate(conn, mode)
                live.outcome = await self._read(ws, conn, live, dispatch)
            except ConnectionClosed as exc:
                live.outcome = self._closed(exc, live)
            nursery.cancel_scope.cancel()
        assert live.outcome is not None
        live.outcome.established_at = live.established_at
        return live.outcome

    def _closed(self, exc: ConnectionClosed, live: _Live) -> _Outcome:
        code = exc.reason.code if exc.reason is not None else 1006
        text = exc.reason.reason if exc.reason is not None else None
        what = f"gateway closed the connection with {code}" + (f" ({text})" if text else "")
        action = classify_close(code)
        if action is CloseAction.FATAL:
            return _Outcome(what, fatal=FATAL_CLOSE_CODES[code].format(where=self.where))
        if code in _CLIENT_BUG_CLOSE_CODES:
            log.error("%s: the gateway says orrad sent something wrong (a bug)", what)
        if action is CloseAction.IDENTIFY:
            return _Outcome(what, forget=True)
        return _Outcome(what, established_at=live.established_at)

    async def _authenticate(self, conn: _Conn, mode: _Mode) -> None:
        if mode is _Mode.RESUME:
            self.counters.resumes += 1
            log.info("resuming gateway session at seq %s", self.seq)
            await conn.send({"op": 6, "d": {
                "token": self._token, "session_id": self.session_id, "seq": self.seq}})
            self._resume_sent = True
            return
        now = trio.current_time()
        self._last_identify = now
        self.counters.identifies += 1
        self.counters.identify_times.append(now)
        log.info("identifying (intents %d)", self.intents)
        await conn.send({"op": 2, "d": {
            "token": self._token,
            "intents": self.intents,
            "properties": {"os": platform.system().lower() or "linux",
                           "browser": "orrad", "device": "orrad"},
            "large_threshold": 50,
        }})

    async def _heartbeat(
        self, conn: _Conn, interval: float, live: _Live, scope: trio.CancelScope
    ) -> None:
        try:
            # Jitter the first beat so many clients reconnecting at once do not beat in
            # step (Discord's docs; discord.py and hikari beat at once).
            await trio.sleep(interval * self._rng.random())
            while True:
                if live.beats and not live.acked:
                    live.outcome = _Outcome(
                        f"zombie connection: no heartbeat ACK within {interval:g}s")
                    scope.cancel()
                    return
                live.acked = False
                await conn.send({"op": 1, "d": self.seq}, priority=True)
                live.beats += 1
                await trio.sleep(interval)
        except ConnectionClosed:
            return  # the reader sees the close and decides what comes next

    async def _read(
        self, ws: WebSocketConnection, conn: _Conn, live: _Live,
        dispatch: trio.MemorySendChannel[_Dispatch],
    ) -> _Outcome:
        while True:
            payload = _decode(await ws.get_message())
            if payload is None:
                log.debug("ignoring an undecodable gateway frame")
                continue
            op = payload.get("op")
            if op == 0:
                self._on_dispatch_frame(payload, live, dispatch)
            elif op == 11:
                live.acked = True
            elif op == 1:
                # The gateway asks for a beat now; the regular cadence is unchanged.
                await conn.send({"op": 1, "d": self.seq}, priority=True)
            elif op == 7:
                return _Outcome("gateway asked to reconnect (op 7)", delay=0.0)
            elif op == 9:
                if payload.get("d") is True:
                    return _Outcome("invalid session (op 9, resumable)", delay=0.0)
                low, high = self.options.invalid_session_delay_s
                return _Outcome("invalid session (op 9, not resumable)", forget=True,
                                delay=self._rng.uniform(low, high))
            elif op != 10:
                log.debug("ignoring gateway op %r", op)

    def _on_dispatch_frame(
        self, payload: dict[str, Any], live: _Live, dispatch: trio.MemorySendChannel[_Dispatch]
    ) -> None:
        seq, event, data = payload.get("s"), payload.get("t"), payload.get("d")
        seq = seq if isinstance(seq, int) else None
        if event == "READY" and isinstance(data, dict):
            user = data.get("user") if isinstance(data.get("user"), dict) else {}
            assert isinstance(user, dict)
            session_id, resume_url = data.get("session_id"), data.get("resume_gateway_url")
            if isinstance(session_id, str) and isinstance(resume_url, str):
                self.session_id, self.resume_url = session_id, resume_url
            self.user_id = str(user.get("id")) if user.get("id") else self.user_id
            self.username = str(user.get("username") or self.username or "")
            self._established(live, resumed=False)
        elif event == "RESUMED":
            self._established(live, resumed=True)
        if isinstance(event, str) and isinstance(data, dict):
            # Never blocks (unbounded queue).
            dispatch.send_nowait(_Dispatch(self.session_id, seq, event, data))
            waiting = dispatch.statistics().current_buffer_used
            if waiting == self.options.dispatch_queue_size:
                log.warning("%d gateway events are waiting for the handler", waiting)
        # Only once the event is queued: a resume from this seq must not skip an event
        # that was never going to be handled.
        if seq is not None:
            self.seq = seq

    def _established(self, live: _Live, *, resumed: bool) -> None:
        live.established_at = self._last_established = trio.current_time()
        self._failed_resumes = self._unreachable_resumes = 0
        log.info("gateway session %s", "resumed" if resumed else "ready")
        if self.on_ready is not None:
            self.on_ready(resumed)
