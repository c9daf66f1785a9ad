"""Discord's REST API over one ``httpx.AsyncClient``, within Discord's rate limits.

Rate limits are learned from the headers of every response, never hard-coded
(``developers/topics/rate-limits``):

- **Buckets**: a route (method + path template) maps to the opaque ``X-RateLimit-Bucket``
  hash once a response names it; the limit applies per bucket *and* major parameter
  (channel id), so a busy channel never slows another. Requests on one bucket go one at a
  time, and when ``Remaining`` reaches 0 the next waits ``Reset-After`` seconds, so a 429
  should not happen at all. When the hash is learned, the bucket the route used so far is
  registered under it (requests already queued on it stay in the same line), and a request
  that waited on a bucket replaced meanwhile moves to the current one.
- **429**: the body's ``retry_after`` blocks the bucket (``Scope: user``/``shared``) or all
  requests (``global``); the request is then retried. A 429 without a JSON
  ``retry_after`` is Cloudflare's IP ban: every request stops for a long cool-down
  (``on_ban`` is told how long).
- **Global**: at most ``global_per_second`` requests per second, proactively.
- **Invalid requests** (401, 403, 429 other than ``shared``): Discord bans an IP after
  10,000 in 10 minutes. We count our own and stop well before (``invalid_limit``).
- **5xx / network errors**: retried with jittered exponential backoff (tenacity). Every
  message carries a nonce with ``enforce_nonce`` so a retry after a lost response cannot
  post twice.
- **401** (and 403 on token-level routes): the token is wrong; a
  :class:`~orrad.errors.FatalChannelError` is raised now and for every later call, with no
  further request. The gateway does the same through :meth:`RestClient.mark_fatal` when it
  is closed with a fatal code (4004 and the like).

A wait longer than ``max_wait_s`` is not waited out: the call fails with
:class:`RateLimitTooLong`, so a reply is not silently held for an hour.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import trio
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from orrad import safejson
from orrad.errors import ChannelSendError, FatalChannelError
from orrad.version import __version__

__all__ = [
    "USER_AGENT",
    "Bucket",
    "GatewayBot",
    "RateLimitInfo",
    "RateLimitTooLong",
    "RestClient",
    "RestError",
    "RestOptions",
    "SessionStartLimit",
]

log = logging.getLogger(__name__)

USER_AGENT = f"DiscordBot (https://github.com/orrad/orrad, {__version__}) orrad"
MESSAGES_ROUTE = "/channels/{channel_id}/messages"
TYPING_ROUTE = "/channels/{channel_id}/typing"
GATEWAY_BOT_ROUTE = "/gateway/bot"
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


class RestError(ChannelSendError):
    """A Discord REST call failed. ``retryable`` is true when a later attempt may succeed
    (rate limits, server errors, network), false when the request itself was refused."""

    def __init__(
        self, message: str, *, status: int | None = None, code: int | None = None,
        retryable: bool = False,
    ) -> None:
        self.status = status
        self.code = code
        super().__init__(message, retryable=retryable)


class RateLimitTooLong(RestError):
    """Discord asked for a longer wait than ``max_wait_s`` (or we are banned); not waited."""

    def __init__(self, message: str, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(message, status=429, retryable=True)


class _Retry(Exception):
    """Internal: a 5xx or network failure that tenacity retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class SessionStartLimit(msgspec.Struct):
    total: int = 1000
    remaining: int = 1000
    reset_after: int = 0  # milliseconds
    max_concurrency: int = 1


class GatewayBot(msgspec.Struct):
    """``GET /gateway/bot``: where to connect and how many sessions may still start."""

    url: str
    shards: int = 1
    session_start_limit: SessionStartLimit = msgspec.field(default_factory=SessionStartLimit)


@dataclass(frozen=True)
class RateLimitInfo:
    """The ``X-RateLimit-*`` headers of one response (absent ones are ``None``)."""

    bucket: str | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None
    is_global: bool = False
    scope: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo:
        def number(name: str) -> float | None:
            value = headers.get(name)
            try:
                return None if value is None else float(value)
            except ValueError:
                return None

        limit, remaining = number("x-ratelimit-limit"), number("x-ratelimit-remaining")
        return cls(
            bucket=headers.get("x-ratelimit-bucket") or None,
            limit=None if limit is None else int(limit),
            remaining=None if remaining is None else int(remaining),
            reset_after=number("x-ratelimit-reset-after"),
            is_global=headers.get("x-ratelimit-global", "").lower() == "true",
            scope=headers.get("x-ratelimit-scope"),
        )


@dataclass
class Bucket:
    """One rate limit (bucket hash + major parameter). Times are ``trio.current_time()``.

    ``remaining`` is ``None`` until a response tells it. Requests on a bucket are serialised
    by ``lock``, so a response's ``Remaining`` is never raced by a concurrent request.
    """

    remaining: int | None = None
    reset_at: float = 0.0
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False, compare=False)

    def delay(self, now: float) -> float:
        """How long the next request must wait (0 when it may go now)."""
        if self.remaining is not None and self.remaining <= 0 and self.reset_at > now:
            return self.reset_at - now
        return 0.0

    def update(self, info: RateLimitInfo, now: float) -> None:
        """Take the state a response reported."""
        if info.remaining is not None:
            self.remaining = info.remaining
        if info.reset_after is not None:
            self.reset_at = now + info.reset_after
        if self.remaining is not None and self.remaining <= 0 and self.reset_at <= now:
            # The window already passed: the next request may go.
            self.remaining = None

    def block(self, seconds: float, now: float) -> None:
        """A 429 for this bucket: nothing more until ``seconds`` have passed."""
        self.remaining = 0
        self.reset_at = max(self.reset_at, now + seconds)


@dataclass
class RestOptions:
    """Knobs of :class:`RestClient` (tests shrink the times)."""

    timeout_s: float = 15.0
    max_attempts: int = 4  # for 5xx and network errors (the first try included)
    retry_multiplier_s: float = 0.5
    retry_max_s: float = 8.0
    max_rate_limit_tries: int = 5
    max_wait_s: float = 60.0
    global_per_second: int = 50
    invalid_limit: int = 1000  # Discord's ban threshold is 10,000 per 10 minutes
    invalid_window_s: float = 600.0
    ban_cooldown_s: float = 1800.0


def _json(response: httpx.Response) -> Any:
    try:
        return safejson.decode(response.content)
    except msgspec.DecodeError:
        return None


class RestClient:
    """Discord REST for one bot token.

    ``where`` names the configuration to fix in fatal errors (never the token itself).
    The underlying ``httpx.AsyncClient`` is opened on first use and closed by
    :meth:`aclose`; a later call opens a new one, so replies still in flight after the
    gateway stopped can be delivered.
    """

    def __init__(
        self,
        token: str,
        api_base: str,
        *,
        where: str = "the channel file",
        options: RestOptions | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._token = token
        self.api_base = api_base.rstrip("/")
        self.where = where
        self.options = options or RestOptions()
        self._transport = transport
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._route_buckets: dict[str, str] = {}
        self._buckets: dict[str, Bucket] = {}
        self._global_until = 0.0
        self._recent: deque[float] = deque()
        self._invalid: deque[float] = deque()
        self._banned_until = 0.0
        self._fatal: FatalChannelError | None = None
        # Called with the length of the pause (seconds) when a Cloudflare ban starts.
        self.on_ban: Callable[[float], None] | None = None
        self.invalid_count = 0  # lifetime total, for logs and tests

    # -- lifecycle ---------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.api_base,
                headers={
                    "Authorization": f"Bot {self._token}",
                    "User-Agent": USER_AGENT,
                },
                timeout=httpx.Timeout(self.options.timeout_s),
                # One connection per concurrent request to Discord is plenty: requests on a
                # bucket are serialised and the global limit is 50/s.
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
                transport=self._transport,
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def fatal(self) -> FatalChannelError | None:
        """The fatal error seen so far (a rejected token), if any."""
        return self._fatal

    def mark_fatal(self, error: FatalChannelError) -> None:
        """Refuse every later call with ``error``, sending nothing (the gateway rejected the
        token or the configuration for good)."""
        if self._fatal is None:
            self._fatal = error

    def banned_for(self) -> float:
        """Seconds left of a Cloudflare ban pause (0 when none)."""
        return max(0.0, self._banned_until - trio.current_time())

    # -- endpoints ---------------------------------------------------------------------

    async def get_gateway_bot(self) -> GatewayBot:
        """``GET /gateway/bot``: the gateway URL and the session start limit."""
        response = await self.request("GET", GATEWAY_BOT_ROUTE)
        try:
            return safejson.decode(response.content, type=GatewayBot)
        except msgspec.DecodeError as exc:
            raise RestError(f"GET /gateway/bot: unexpected answer ({exc})",
                            retryable=True) from exc

    async def create_message(
        self, channel_id: str, content: str, *, reply_to: str | None, nonce: str
    ) -> dict[str, Any]:
        """Post ``content`` in ``channel_id``, as a reply to ``reply_to`` when given.

        It pings nobody (``allowed_mentions`` parses nothing, the replied-to user
        included), degrades to a plain message when the replied-to message is gone, and
        sends ``nonce`` with ``enforce_nonce`` so Discord returns the already created
        message instead of a second copy when a retry repeats the nonce.
        """
        body: dict[str, Any] = {
            "content": content,
            "allowed_mentions": {"parse": [], "replied_user": False},
            "nonce": nonce,
            "enforce_nonce": True,
        }
        if reply_to is not None:
            body["message_reference"] = {"message_id": reply_to, "fail_if_not_exists": False}
        response = await self.request("POST", MESSAGES_ROUTE, channel_id=channel_id, json=body)
        data = _json(response)
        return data if isinstance(data, dict) else {}

    async def trigger_typing(self, channel_id: str) -> None:
        """Show "typing…" in ``channel_id`` for ~10 s. Best effort: no retries, no long
        waits (a typing indicator that comes late is worthless)."""
        await self.request("POST", TYPING_ROUTE, channel_id=channel_id, best_effort=True)

    # -- the request pipeline ----------------------------------------------------------

    async def request(
        self,
        method: str,
        route: str,
        *,
        channel_id: str | None = None,
        json: Any = None,
        best_effort: bool = False,
    ) -> httpx.Response:
        """Send one request within the rate limits; raise :class:`RestError` on failure.

        ``route`` is a path template (``/channels/{channel_id}/messages``); ``channel_id``
        is its major parameter. ``best_effort`` skips retries and waits longer than a
        couple of seconds.
        """
        path = route.format(channel_id=channel_id) if channel_id is not None else route
        attempts = 1 if best_effort else self.options.max_attempts
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retry),
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(
                multiplier=self.options.retry_multiplier_s, max=self.options.retry_max_s),
            sleep=trio.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(method, route, path, channel_id or "", json,
                                            best_effort)
        except _Retry as exc:
            raise RestError(f"{method} {route}: {exc} (gave up after {attempts} tries)",
                            status=exc.status, retryable=True) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _bucket(self, route_key: str, major: str) -> Bucket:
        key = f"{self._route_buckets.get(route_key, route_key)}:{major}"
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket()
        return bucket

    def _expire(self, now: float) -> None:
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        while self._invalid and self._invalid[0] <= now - self.options.invalid_window_s:
            self._invalid.popleft()

    def _wait_needed(self, bucket: Bucket, now: float) -> tuple[float, str]:
        self._expire(now)
        waits = [(bucket.delay(now), "route rate limit"),
                 (self._global_until - now, "global rate limit")]
        if len(self._recent) >= self.options.global_per_second:
            waits.append((self._recent[0] + 1.0 - now, "global request pace"))
        if len(self._invalid) >= self.options.invalid_limit:
            waits.append((self._invalid[0] + self.options.invalid_window_s - now,
                          "too many invalid requests (ban guard)"))
        return max(waits)

    async def _wait_turn(self, bucket: Bucket, route: str, best_effort: bool) -> None:
        max_wait = min(2.0, self.options.max_wait_s) if best_effort else self.options.max_wait_s
        while True:
            now = trio.current_time()
            if self._banned_until > now:
                raise RateLimitTooLong(
                    f"{route}: Discord has blocked this IP (Cloudflare ban); all requests "
                    f"paused for {self._banned_until - now:.0f}s", self._banned_until - now)
            wait, why = self._wait_needed(bucket, now)
            if wait <= 0:
                self._recent.append(now)
                return
            if wait > max_wait:
                raise RateLimitTooLong(f"{route}: {why} asks for {wait:.1f}s, more than "
                                       f"{max_wait:g}s", wait)
            log.debug("%s: waiting %.2fs for the %s", route, wait, why)
            await trio.sleep(wait)

    def _count_invalid(self, now: float) -> None:
        self._invalid.append(now)
        self.invalid_count += 1
        if len(self._invalid) in (self.options.invalid_limit // 2, self.options.invalid_limit):
            log.warning("%d invalid Discord requests (401/403/429) in the last %gs",
                        len(self._invalid), self.options.invalid_window_s)

    async def _send(
        self, method: str, route: str, path: str, major: str, json: Any, best_effort: bool
    ) -> httpx.Response:
        if self._fatal is not None:
            raise self._fatal
        route_key = f"{method} {route}"
        tries = 0
        while tries < self.options.max_rate_limit_tries:
            bucket = self._bucket(route_key, major)
            async with bucket.lock:
                if self._bucket(route_key, major) is not bucket:
                    continue  # the route moved to another bucket while we waited: join it
                if self._fatal is not None:
                    raise self._fatal  # became fatal while this request waited
                await self._wait_turn(bucket, route_key, best_effort)
                try:
                    response = await self._http().request(method, path, json=json)
                except httpx.TransportError as exc:
                    # Timeouts included: the request may have been applied; the retry
                    # repeats the nonce, so Discord dedupes it.
                    raise _Retry(f"{type(exc).__name__}: {exc}") from exc
                now = trio.current_time()
                info = RateLimitInfo.from_headers(response.headers)
                if info.bucket is not None and self._route_buckets.get(route_key) != info.bucket:
                    # The route's bucket has a name now. The requests queued behind this
                    # one wait on this Bucket object: register it under the name, so they
                    # and the requests to come share one line. (Another route may have
                    # named the same bucket first: then that one is the line, and the
                    # waiters here move to it, see above.)
                    self._route_buckets[route_key] = info.bucket
                    bucket = self._buckets.setdefault(f"{info.bucket}:{major}", bucket)
                bucket.update(info, now)
                if response.status_code == 429:
                    tries += 1
                    self._on_429(response, info, bucket, route_key, now, best_effort)
                    continue
            return self._check(response, method, route, major)
        raise RestError(f"{route_key}: still rate limited after "
                        f"{self.options.max_rate_limit_tries} tries", status=429, retryable=True)

    def _on_429(
        self, response: httpx.Response, info: RateLimitInfo, bucket: Bucket, route: str,
        now: float, best_effort: bool,
    ) -> None:
        body = _json(response)
        retry_after = body.get("retry_after") if isinstance(body, dict) else None
        if not isinstance(retry_after, int | float):
            # Cloudflare's ban page has no JSON retry_after: stop everything for a long
            # while rather than feed the ban.
            self._count_invalid(now)
            self._banned_until = now + self.options.ban_cooldown_s
            log.error("Discord blocked our requests (429 without retry_after, likely a "
                      "Cloudflare IP ban); pausing all REST calls for %gs",
                      self.options.ban_cooldown_s)
            if self.on_ban is not None:
                self.on_ban(self.options.ban_cooldown_s)
            raise RateLimitTooLong(f"{route}: blocked by Discord (Cloudflare ban)",
                                   self.options.ban_cooldown_s)
        is_global = info.is_global or (isinstance(body, dict) and bool(body.get("global")))
        if info.scope != "shared":
            self._count_invalid(now)
        if is_global or info.scope == "global":
            self._global_until = max(self._global_until, now + float(retry_after))
        else:
            bucket.block(float(retry_after), now)
        log.warning("%s: rate limited (%s), retry after %.2fs", route,
                    "global" if is_global else info.scope or "route", retry_after)
        if best_effort and retry_after > 2.0:
            raise RateLimitTooLong(f"{route}: rate limited for {retry_after:.1f}s",
                                   float(retry_after))

    def _check(self, response: httpx.Response, method: str, route: str,
               major: str) -> httpx.Response:
        status = response.status_code
        if status < 400:
            return response
        if status in _RETRY_STATUSES:
            raise _Retry(f"HTTP {status}", status)
        body = _json(response)
        code = body.get("code") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        detail = f"{method} {route}: HTTP {status}" + (
            f" (Discord code {code}: {message})" if code is not None else "")
        if status in (401, 403):
            self._count_invalid(trio.current_time())
        # 401 always means the token. A 403 on a route with no channel is about the token
        # too; on a channel route it is a permission missing in that one channel, which
        # must not stop the others.
        if status == 401 or (status == 403 and not major):
            self._fatal = FatalChannelError(
                f"Discord rejected the bot token (HTTP {status}): fix `token` in {self.where}")
            log.error("%s", self._fatal)
            raise self._fatal
        log.warning("%s%s", detail, f" in channel {major}" if major else "")
        retryable = status == 408
        raise RestError(detail, status=status, code=code if isinstance(code, int) else None,
                        retryable=retryable)
