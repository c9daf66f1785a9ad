"""REST client: headers, bucket math, 429s (bucket, global, shared, ban), 5xx retries,
fatal 401, the invalid-request guard. Driven through ``httpx.MockTransport`` so virtual
time (autojump) measures every wait exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
import trio
from trio.testing import MockClock

from orrad.channels.discord.rest import (
    USER_AGENT,
    Bucket,
    RateLimitInfo,
    RateLimitTooLong,
    RestClient,
    RestError,
    RestOptions,
)
from orrad.errors import FatalChannelError


class Server:
    """Answers with scripted responses, recording each request and its (virtual) time."""

    def __init__(self, script: Callable[[httpx.Request, int], httpx.Response] | None = None
                 ) -> None:
        self.script = script or (lambda request, n: ok())
        self.requests: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((trio.current_time(), request))
        return self.script(request, len(self.requests))

    def times(self) -> list[float]:
        return [t for t, _ in self.requests]

    def body(self, i: int) -> Any:
        return msgspec.json.decode(self.requests[i][1].content)


def ok(bucket: str = "b1", remaining: int = 4, reset_after: float = 5.0,
       body: Any = None, status: int = 200) -> httpx.Response:
    headers = {"x-ratelimit-bucket": bucket, "x-ratelimit-limit": "5",
               "x-ratelimit-remaining": str(remaining),
               "x-ratelimit-reset-after": str(reset_after), "via": "1.1 google"}
    return httpx.Response(status, json=body if body is not None else {"id": "1"},
                          headers=headers)


def limited(retry_after: float, *, scope: str = "user", is_global: bool = False,
            remaining: int = 0) -> httpx.Response:
    headers = {"retry-after": str(int(retry_after) + 1), "x-ratelimit-scope": scope,
               "via": "1.1 google"}
    if is_global:
        headers["x-ratelimit-global"] = "true"
    else:
        headers.update({"x-ratelimit-bucket": "b1", "x-ratelimit-remaining": str(remaining),
                        "x-ratelimit-reset-after": str(retry_after)})
    return httpx.Response(429, json={"message": "You are being rate limited.",
                                     "retry_after": retry_after, "global": is_global},
                          headers=headers)


def client(server: Server, **options: Any) -> RestClient:
    knobs: dict[str, Any] = {"retry_multiplier_s": 0.1, "retry_max_s": 1.0}
    knobs.update(options)
    return RestClient("secret-token", "https://discord.test/api/v10", where="bot.yaml",
                      options=RestOptions(**knobs), transport=httpx.MockTransport(server))


async def post(rest: RestClient, channel: str = "200", nonce: str = "n1") -> dict[str, Any]:
    return await rest.create_message(channel, "hi", reply_to=None, nonce=nonce)


# -- pure bucket math ---------------------------------------------------------------------


def test_rate_limit_headers_parse() -> None:
    info = RateLimitInfo.from_headers(httpx.Headers({
        "X-RateLimit-Bucket": "abc", "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset-After": "64.57", "X-RateLimit-Global": "true",
        "X-RateLimit-Scope": "shared"}))
    assert info == RateLimitInfo("abc", 5, 0, 64.57, True, "shared")
    assert RateLimitInfo.from_headers({}) == RateLimitInfo()
    assert RateLimitInfo.from_headers({"x-ratelimit-remaining": "x"}).remaining is None


def test_bucket_waits_only_when_exhausted() -> None:
    bucket = Bucket()
    assert bucket.delay(0.0) == 0.0  # unknown: go
    bucket.update(RateLimitInfo(remaining=1, reset_after=2.0), now=10.0)
    assert bucket.delay(10.0) == 0.0
    bucket.update(RateLimitInfo(remaining=0, reset_after=2.0), now=10.5)
    assert bucket.delay(10.5) == pytest.approx(2.0)
    assert bucket.delay(12.0) == pytest.approx(0.5)
    assert bucket.delay(12.5) == 0.0


def test_bucket_block_keeps_the_later_reset() -> None:
    bucket = Bucket()
    bucket.update(RateLimitInfo(remaining=0, reset_after=5.0), now=0.0)
    bucket.block(1.0, now=0.0)
    assert bucket.delay(0.0) == pytest.approx(5.0)
    bucket.block(9.0, now=1.0)
    assert bucket.delay(1.0) == pytest.approx(9.0)


def test_bucket_with_passed_reset_is_open() -> None:
    bucket = Bucket()
    bucket.update(RateLimitInfo(remaining=0, reset_after=0.0), now=3.0)
    assert bucket.remaining is None and bucket.delay(3.0) == 0.0


# -- the client ---------------------------------------------------------------------------


async def test_create_message_headers_and_body(autojump_clock: MockClock) -> None:
    server = Server()
    rest = client(server)
    await rest.create_message("200", "hello", reply_to="99", nonce="abc")
    _, request = server.requests[0]
    assert request.method == "POST"
    assert request.url == "https://discord.test/api/v10/channels/200/messages"
    assert request.headers["authorization"] == "Bot secret-token"
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("DiscordBot (https://github.com/orrad/orrad, ")
    assert request.headers["content-type"] == "application/json"
    assert server.body(0) == {
        "content": "hello", "allowed_mentions": {"parse": [], "replied_user": False},
        "nonce": "abc", "enforce_nonce": True,
        "message_reference": {"message_id": "99", "fail_if_not_exists": False}}
    await rest.aclose()


async def test_exhausted_bucket_waits_reset_after_and_never_429s(
    autojump_clock: MockClock,
) -> None:
    server = Server(lambda r, n: ok(remaining=0 if n == 1 else 4, reset_after=2.0))
    rest = client(server)
    await post(rest)
    await post(rest)
    t = server.times()
    assert t[1] - t[0] == pytest.approx(2.0)
    await rest.aclose()


async def test_channels_have_separate_limits(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: ok(remaining=0, reset_after=3.0))
    rest = client(server)
    await post(rest, "A")
    await post(rest, "B")  # same bucket hash, other major parameter: no wait
    assert server.times() == [0.0, 0.0]
    await post(rest, "A")
    assert server.times()[2] == pytest.approx(3.0)
    await rest.aclose()


async def test_routes_sharing_a_bucket_hash_share_the_limit(autojump_clock: MockClock) -> None:
    def script(request: httpx.Request, n: int) -> httpx.Response:
        return ok(bucket="shared", remaining=0 if n == 2 else 3, reset_after=2.0)

    server = Server(script)
    rest = client(server)
    await rest.trigger_typing("200")  # learns: typing -> "shared"
    await post(rest)  # learns: messages -> "shared", remaining 0
    await rest.trigger_typing("200")
    t = server.times()
    assert t[2] - t[1] == pytest.approx(2.0)
    await rest.aclose()


async def test_bucket_429_waits_retry_after_and_retries_once(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: limited(1.5) if n == 1 else ok())
    rest = client(server)
    await post(rest)
    t = server.times()
    assert len(t) == 2 and t[1] - t[0] == pytest.approx(1.5)
    assert server.body(0) == server.body(1)  # same nonce: no double post possible
    assert rest.invalid_count == 1
    await rest.aclose()


async def test_global_429_pauses_every_route(autojump_clock: MockClock) -> None:
    def script(request: httpx.Request, n: int) -> httpx.Response:
        return limited(2.0, scope="global", is_global=True) if n == 1 else ok()

    server = Server(script)
    rest = client(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, rest, "A")
        await trio.sleep(0.5)
        await post(rest, "B")  # another channel, another bucket: still held
    t = server.times()
    assert t[0] == 0.0 and min(t[1:]) == pytest.approx(2.0)
    await rest.aclose()


async def test_shared_scope_429_is_not_counted_as_invalid(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: limited(1.0, scope="shared", remaining=9) if n == 1 else ok())
    rest = client(server)
    await post(rest)
    assert rest.invalid_count == 0
    assert server.times()[1] == pytest.approx(1.0)
    await rest.aclose()


async def test_sub_limit_429_with_remaining_obeys_retry_after(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: limited(0.7, remaining=3) if n == 1 else ok())
    rest = client(server)
    await post(rest)
    assert server.times()[1] == pytest.approx(0.7)
    await rest.aclose()


async def test_very_long_retry_after_fails_instead_of_blocking(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: limited(3600.0))
    rest = client(server, max_wait_s=60.0)
    with pytest.raises(RateLimitTooLong):
        await post(rest)
    assert len(server.requests) == 1
    assert trio.current_time() < 1.0
    await rest.aclose()


async def test_cloudflare_ban_stops_all_requests(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: httpx.Response(429, text="<html>1015</html>"))
    rest = client(server)
    with pytest.raises(RateLimitTooLong, match="Cloudflare"):
        await post(rest)
    with pytest.raises(RateLimitTooLong, match="Cloudflare"):
        await post(rest, "other")
    assert len(server.requests) == 1  # the second never went out
    await rest.aclose()


async def test_server_errors_are_retried_with_the_same_nonce(autojump_clock: MockClock) -> None:
    def script(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(502, text="bad gateway") if n <= 2 else ok()

    server = Server(script)
    rest = client(server)
    await post(rest, nonce="same")
    assert len(server.requests) == 3
    assert {server.body(i)["nonce"] for i in range(3)} == {"same"}
    t = server.times()
    assert t[1] > t[0] and t[2] > t[1]  # backed off
    await rest.aclose()


async def test_server_errors_give_up_after_max_attempts(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: httpx.Response(503))
    rest = client(server, max_attempts=3)
    with pytest.raises(RestError) as info:
        await post(rest)
    assert info.value.retryable and info.value.status == 503
    assert len(server.requests) == 3
    await rest.aclose()


async def test_network_errors_are_retried(autojump_clock: MockClock) -> None:
    def script(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return ok()

    server = Server(script)
    rest = client(server)
    await post(rest)
    assert len(server.requests) == 2
    await rest.aclose()


async def test_401_is_fatal_and_stops_all_requests(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: httpx.Response(401, json={"message": "401: Unauthorized",
                                                           "code": 0}))
    rest = client(server)
    with pytest.raises(FatalChannelError, match=r"rejected the bot token.*bot\.yaml"):
        await post(rest)
    with pytest.raises(FatalChannelError):
        await rest.get_gateway_bot()
    assert len(server.requests) == 1
    assert rest.fatal is not None
    assert "secret-token" not in str(rest.fatal)
    await rest.aclose()


async def test_403_in_a_channel_is_not_fatal_but_403_on_the_token_is(
    autojump_clock: MockClock,
) -> None:
    server = Server(lambda r, n: httpx.Response(403, json={"message": "Missing Permissions",
                                                           "code": 50013}))
    rest = client(server)
    with pytest.raises(RestError) as info:
        await post(rest)
    assert not isinstance(info.value, FatalChannelError)
    assert info.value.code == 50013 and not info.value.retryable
    with pytest.raises(FatalChannelError):
        await rest.get_gateway_bot()
    await rest.aclose()


async def test_other_4xx_are_not_retried(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: httpx.Response(404, json={"message": "Unknown Channel",
                                                           "code": 10003}))
    rest = client(server)
    with pytest.raises(RestError, match="10003"):
        await post(rest)
    assert len(server.requests) == 1
    await rest.aclose()


async def test_invalid_request_guard_stops_before_the_ban(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: httpx.Response(403, json={"message": "Missing Access",
                                                           "code": 50001}))
    rest = client(server, invalid_limit=3, max_wait_s=60.0)
    for _ in range(3):
        with pytest.raises(RestError):
            await post(rest)
    with pytest.raises(RateLimitTooLong, match="invalid requests"):
        await post(rest)
    assert len(server.requests) == 3
    await rest.aclose()


async def test_typing_is_best_effort(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: limited(30.0) if n == 1 else ok())
    rest = client(server)
    with pytest.raises(RateLimitTooLong):
        await rest.trigger_typing("200")
    assert len(server.requests) == 1
    server.script = lambda r, n: httpx.Response(500)
    with pytest.raises(RestError):
        await rest.trigger_typing("201")
    assert len(server.requests) == 2  # no retries
    await rest.aclose()


async def test_gateway_bot_is_decoded(autojump_clock: MockClock) -> None:
    body = {"url": "wss://gw.test", "shards": 1, "session_start_limit": {
        "total": 1000, "remaining": 0, "reset_after": 1500, "max_concurrency": 1}}
    rest = client(Server(lambda r, n: ok(body=body)))
    info = await rest.get_gateway_bot()
    assert info.url == "wss://gw.test"
    assert info.session_start_limit.remaining == 0
    assert info.session_start_limit.reset_after == 1500
    await rest.aclose()


async def test_client_reopens_after_aclose(autojump_clock: MockClock) -> None:
    server = Server()
    rest = client(server)
    await post(rest)
    await rest.aclose()
    await post(rest)  # a reply finishing after the channel stopped still goes out
    assert len(server.requests) == 2
    await rest.aclose()


# -- review fixes -------------------------------------------------------------------------


async def test_learning_the_bucket_hash_keeps_one_line_per_bucket(
    autojump_clock: MockClock,
) -> None:
    # A server bucket of 2 requests per 1 s window; a request beyond that gets a real 429.
    window = {"start": -10.0, "count": 0}
    sent: list[float] = []
    violations: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        if now >= window["start"] + 1.0 - 1e-9:
            window.update(start=now, count=0)
        if window["count"] >= 2:
            violations.append(now)
            return limited(window["start"] + 1.0 - now)
        window["count"] += 1
        sent.append(now)
        await trio.sleep(0.2)  # the answer (and its headers) takes a while
        return ok(remaining=2 - int(window["count"]),
                  reset_after=window["start"] + 1.0 - trio.current_time())

    rest = RestClient("secret-token", "https://discord.test/api/v10",
                      options=RestOptions(retry_multiplier_s=0.1, retry_max_s=1.0),
                      transport=httpx.MockTransport(handler))
    async with trio.open_nursery() as nursery:
        for i in range(4):  # queued before any response named the bucket
            nursery.start_soon(post, rest, "200", f"a{i}")
        await trio.sleep(0.3)  # the first response (with the hash) is back
        for i in range(4):  # these look the bucket up by its hash
            nursery.start_soon(post, rest, "200", f"b{i}")
    assert violations == []
    assert len(sent) == 8 and rest.invalid_count == 0
    await rest.aclose()


async def test_marked_fatal_client_sends_nothing(autojump_clock: MockClock) -> None:
    server = Server()
    rest = client(server)
    rest.mark_fatal(FatalChannelError("Discord rejected the bot token (4004)"))
    with pytest.raises(FatalChannelError, match="4004"):
        await post(rest)
    with pytest.raises(FatalChannelError):
        await rest.get_gateway_bot()
    rest.mark_fatal(FatalChannelError("another"))  # the first reason stays
    assert "4004" in str(rest.fatal)
    assert server.requests == []
    await rest.aclose()


async def test_requests_queued_on_a_bucket_fail_once_it_turns_fatal(
    autojump_clock: MockClock,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(1.0)
        return ok()

    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> None:
        seen.append(request)

    rest = RestClient("secret-token", "https://discord.test/api/v10",
                      transport=httpx.MockTransport(handler),
                      options=RestOptions())
    rest._http().event_hooks["request"] = [_async(record)]
    errors: list[BaseException] = []

    async def second() -> None:
        try:
            await post(rest, nonce="second")
        except FatalChannelError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, rest)
        await trio.sleep(0.1)
        nursery.start_soon(second)  # waits for the bucket behind the first
        await trio.sleep(0.1)
        rest.mark_fatal(FatalChannelError("gateway said 4004"))
    assert len(seen) == 1 and len(errors) == 1
    await rest.aclose()


def _async(fn: Callable[[httpx.Request], None]) -> Callable[[httpx.Request], Any]:
    async def hook(request: httpx.Request) -> None:
        fn(request)

    return hook


async def test_cloudflare_ban_is_reported_with_its_length(autojump_clock: MockClock) -> None:
    server = Server(lambda r, n: httpx.Response(429, text="<html>1015</html>"))
    rest = client(server, ban_cooldown_s=1800.0)
    bans: list[float] = []
    rest.on_ban = bans.append
    with pytest.raises(RateLimitTooLong):
        await post(rest)
    assert bans == [1800.0]
    assert rest.banned_for() == pytest.approx(1800.0)
    await trio.sleep(1800.0)
    assert rest.banned_for() == 0.0
    await rest.aclose()
