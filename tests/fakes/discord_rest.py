"""REST half of the fake Discord: records, rate-limit buckets, scripted faults, error bodies.

Pure data and helpers; :class:`tests.fakes.discord.FakeDiscord` runs the HTTP server and
uses them. See ``/work/shared/reference/discord.md`` §3 and §5.2.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

__all__ = [
    "BAN_MESSAGE",
    "CLOUDFLARE_HTML",
    "VIA",
    "BucketState",
    "ChannelInfo",
    "RestFault",
    "RestRecord",
    "RouteLimit",
    "bucket_hash",
    "compute_pings",
    "default_error_body",
    "discord_error",
    "form_error",
    "ratelimit_headers",
    "retry_after_header",
]

VIA = ("via", "1.1 google")
"""Real Discord responses carry it; a 429 *without* it is the Cloudflare-ban signal."""

BAN_MESSAGE = (
    "You are being blocked from accessing our API temporarily due to exceeding our rate "
    "limits frequently. Please read our docs at "
    "https://discord.com/developers/docs/topics/rate-limits to prevent this moving forward."
)

CLOUDFLARE_HTML = (
    "<!DOCTYPE html><html><head><title>{status} {phrase}</title></head><body>"
    "<center><h1>{status} {phrase}</h1></center><hr><center>cloudflare</center>"
    "</body></html>"
)


@dataclass
class RestRecord:
    """One REST request as the fake received and answered it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-cased names; a repeated header keeps its first value."""
    json: Any
    """The decoded JSON body, None when there was no body or it was not JSON."""
    time: float
    status: int = 0
    response: Any = None
    """The decoded JSON response body (None for 204 or non-JSON answers)."""
    response_headers: dict[str, str] = field(default_factory=dict)
    route: str | None = None
    """The route template, e.g. ``"POST /channels/{channel_id}/messages"``."""
    bucket: str | None = None
    """``"<bucket hash>:<major param>"`` for rate-limited routes."""
    fault: str | None = None
    """Set when a scripted fault (or ban mode) answered instead of the real handler."""


@dataclass
class RouteLimit:
    """A route's rate limit: ``limit`` requests per ``per_s`` per major parameter.

    Routes whose ``bucket`` names are equal share one limit (and one ``X-RateLimit-Bucket``
    hash) per major parameter, as Discord's shared buckets do.
    """

    limit: int
    per_s: float
    bucket: str


@dataclass
class BucketState:
    """A fixed window starting at the first request, like Discord's buckets."""

    limit: int
    per_s: float
    remaining: int
    reset_at: float | None = None

    def refresh(self, now: float) -> None:
        """Start a new window once the old one is over."""
        if self.reset_at is not None and now >= self.reset_at:
            self.remaining = self.limit
            self.reset_at = None

    def consume(self, now: float) -> bool:
        """Take one request from the window; False when it is exhausted (a 429)."""
        self.refresh(now)
        if self.remaining <= 0:
            return False
        if self.reset_at is None:
            self.reset_at = now + self.per_s
        self.remaining -= 1
        return True

    def reset_after(self, now: float) -> float:
        """Seconds until the window resets."""
        return self.per_s if self.reset_at is None else max(0.0, self.reset_at - now)


@dataclass
class RestFault:
    """A scripted REST answer (see :meth:`FakeDiscord.rest_fail_next`)."""

    status: int
    times: int
    retry_after: float | None = None
    global_: bool = False
    scope: str = "user"
    route: str | None = None
    body: Any = None
    commit: bool = False
    delay_s: float = 0.0
    cloudflare: bool = False
    slow_only: bool = False
    """Only delay, then answer normally (:meth:`FakeDiscord.rest_delay_next`)."""

    def matches(self, method: str, path: str, template: str | None) -> bool:
        """``route`` is ``"[METHOD ]PATTERN"``; PATTERN is a template or an fnmatch glob.

        Paths are compared without the ``/api/v10`` prefix, e.g. ``"POST /channels/*/messages"``,
        ``"/gateway/bot"`` or ``"POST /channels/{channel_id}/typing"``.
        """
        if self.route is None:
            return True
        want_method, _, pattern = self.route.partition(" ")
        if not pattern:
            want_method, pattern = "", want_method
        if want_method and want_method.upper() != method:
            return False
        short = path.removeprefix("/api/v10")
        pattern = pattern.removeprefix("/api/v10")
        if template is not None and pattern == template.partition(" ")[2]:
            return True
        return fnmatchcase(short, pattern)

    def describe(self) -> str:
        """A short label for :attr:`RestRecord.fault`."""
        if self.slow_only:
            return f"delay {self.delay_s}s"
        parts = [str(self.status)]
        if self.cloudflare:
            parts.append("cloudflare")
        elif self.status == 429:
            parts.append("global" if self.global_ else self.scope)
        if self.commit:
            parts.append("after commit")
        if self.delay_s:
            parts.append(f"after {self.delay_s}s")
        return " ".join(parts)


@dataclass
class ChannelInfo:
    """A channel the fake knows. ``guild_id`` None means a DM (type 1)."""

    id: str
    type: int = 0
    guild_id: str | None = None
    name: str | None = None
    parent_id: str | None = None
    can_view: bool = True
    """False: GET/POST answer 403 50001 Missing Access."""
    can_send: bool = True
    """False: POST messages/typing answer 403 50013 Missing Permissions."""

    def to_json(self, bot_user: dict[str, Any]) -> dict[str, Any]:
        """The channel object as ``GET /channels/{id}`` returns it."""
        obj: dict[str, Any] = {"id": self.id, "type": self.type, "flags": 0}
        if self.guild_id is None:
            obj["recipients"] = [bot_user]
            obj["last_message_id"] = None
        else:
            obj.update(
                guild_id=self.guild_id, name=self.name or f"channel-{self.id}", position=0,
                permission_overwrites=[], nsfw=False, topic=None, last_message_id=None,
                rate_limit_per_user=0,
            )
            if self.parent_id is not None:
                obj["parent_id"] = self.parent_id
        return obj


def bucket_hash(name: str) -> str:
    """An opaque, stable bucket hash like Discord's ``X-RateLimit-Bucket``."""
    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


def discord_error(message: str, code: int = 0, errors: dict[str, Any] | None = None) -> Any:
    """Discord's error body ``{"message", "code"[, "errors"]}``."""
    body: dict[str, Any] = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return body


def form_error(field_name: str, code: str, message: str) -> Any:
    """400 50035 Invalid Form Body with one ``errors.<field>._errors`` entry."""
    return discord_error(
        "Invalid Form Body", 50035,
        {field_name: {"_errors": [{"code": code, "message": message}]}},
    )


_DEFAULT_ERRORS: dict[int, tuple[str, int]] = {
    400: ("400: Bad Request", 0),
    401: ("401: Unauthorized", 0),
    403: ("Missing Permissions", 50013),
    404: ("Unknown Channel", 10003),
    405: ("405: Method Not Allowed", 0),
    500: ("500: Internal Server Error", 0),
}


def default_error_body(status: int) -> Any:
    """The JSON body a scripted ``status`` gets when the test gives none."""
    message, code = _DEFAULT_ERRORS.get(status, (f"{status}: error", 0))
    return discord_error(message, code)


def ratelimit_headers(
    state: BucketState, bucket: str, now: float, epoch0: float, *,
    remaining: int | None = None, reset_after: float | None = None,
) -> list[tuple[str, str]]:
    """``X-RateLimit-*`` headers formatted like Discord's (Reset epoch and Reset-After with
    3 decimals)."""
    after = state.reset_after(now) if reset_after is None else reset_after
    left = state.remaining if remaining is None else remaining
    return [
        ("x-ratelimit-limit", str(state.limit)),
        ("x-ratelimit-remaining", str(max(0, left))),
        ("x-ratelimit-reset", f"{epoch0 + now + after:.3f}"),
        ("x-ratelimit-reset-after", f"{after:.3f}"),
        ("x-ratelimit-bucket", bucket),
    ]


def retry_after_header(seconds: float) -> tuple[str, str]:
    """``Retry-After`` is whole seconds, rounded up (docs: header 65 vs body 64.57)."""
    return ("retry-after", str(max(1, math.ceil(seconds))))


_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def compute_pings(
    content: str, allowed: Any, replied_author: str | None,
) -> tuple[list[str], list[str], bool]:
    """Who a message would notify: ``(user ids, role ids, everyone)``.

    Without ``allowed_mentions`` Discord parses users, roles and @everyone/@here and pings
    the replied-to author; with it only what ``parse``/``users``/``roles``/``replied_user``
    allow (discord.md §3.2).
    """
    users = list(dict.fromkeys(_USER_MENTION.findall(content)))
    roles = list(dict.fromkeys(_ROLE_MENTION.findall(content)))
    everyone = "@everyone" in content or "@here" in content
    if not isinstance(allowed, dict):
        pinged_users = users
        if replied_author is not None and replied_author not in pinged_users:
            pinged_users = [*pinged_users, replied_author]
        return pinged_users, roles, everyone
    parse = allowed.get("parse") or []
    allow_users = {str(u) for u in allowed.get("users") or []}
    allow_roles = {str(r) for r in allowed.get("roles") or []}
    pinged_users = [u for u in users if "users" in parse or u in allow_users]
    if replied_author is not None and allowed.get("replied_user") is True \
            and replied_author not in pinged_users:
        pinged_users.append(replied_author)
    pinged_roles = [r for r in roles if "roles" in parse or r in allow_roles]
    return pinged_users, pinged_roles, everyone and "everyone" in parse
