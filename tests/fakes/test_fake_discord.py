"""Self-tests for the fake Discord: a tiny hand-written client (raw trio-websocket + httpx)
proves the fake behaves as discord.md §5 specifies. Real time, small intervals."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from tests.fakes.discord import FakeDiscord

TOKEN = "test-token"
UA = "DiscordBot (https://example.invalid/orrad, 0.1) selftest"
IDENTIFY: dict[str, Any] = {
    "token": TOKEN, "intents": 37377,
    "properties": {"os": "linux", "browser": "selftest", "device": "selftest"},
}
QUERY = "v=10&encoding=json"


class Client:
    """The least a gateway client needs: send payloads, receive (and inflate) them."""

    def __init__(self, ws: WebSocketConnection, compressed: bool) -> None:
        self.ws = ws
        self._inflate = zlib.decompressobj() if compressed else None
        self._buffer = bytearray()
        self.messages = 0

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = await self.ws.get_message()
            self.messages += 1
            if self._inflate is None:
                payload: dict[str, Any] = json.loads(msg)
                return payload
            assert isinstance(msg, bytes)
            self._buffer += msg
            if self._buffer.endswith(b"\x00\x00\xff\xff"):
                data = self._inflate.decompress(bytes(self._buffer))
                self._buffer.clear()
                payload = json.loads(data)
                return payload

    async def expect(self, op: int, t: str | None = None) -> dict[str, Any]:
        """The next payload with ``op`` (and ``t``), skipping heartbeat ACKs only."""
        while True:
            payload = await self.recv()
            if payload["op"] == 11 and op != 11:
                continue
            assert payload["op"] == op, payload
            if t is not None:
                assert payload["t"] == t, payload
            return payload

    async def send(self, op: int, d: Any = None) -> None:
        await self.ws.send_message(json.dumps({"op": op, "d": d}))

    async def closed_with(self) -> int:
        """Read until the server closes; the close code the client saw."""
        while True:
            try:
                await self.ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason.code

    async def login(self, identify: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hello, IDENTIFY, READY; returns READY's ``d``."""
        await self.expect(10)
        await self.send(2, identify or IDENTIFY)
        ready = await self.expect(0, "READY")
        data: dict[str, Any] = ready["d"]
        return data


@asynccontextmanager
async def connect(url: str, query: str = QUERY) -> AsyncIterator[Client]:
    async with open_websocket_url(f"{url}/?{query}") as ws:
        yield Client(ws, "compress=zlib-stream" in query)


@asynccontextmanager
async def rest(fake: FakeDiscord, token: str = TOKEN, ua: str | None = UA,
               ) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bot {token}"}
    if ua is not None:
        headers["User-Agent"] = ua
    async with httpx.AsyncClient(base_url=fake.api_base, headers=headers) as client:
        yield client


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fd = FakeDiscord(heartbeat_interval_ms=1000)
    fd.reconnect_grace_s = fd.invalid_session_grace_s = 0.2
    fd.identify_must_wait_s = 0.0
    async with fd:
        yield fd


async def soon(predicate: Callable[[], bool], fake: FakeDiscord, timeout: float = 2.0) -> None:
    with trio.fail_after(timeout):
        await fake.wait_until(predicate)


# == gateway ===================================================================================


async def test_hello_identify_ready_guild_create_and_recording(fake: FakeDiscord) -> None:
    early = await fake.dispatch_message("queued before identify")  # delivered after READY
    assert early["content"] == "<@1000> queued before identify"
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            hello = await c.expect(10)
            assert hello == {"op": 10, "d": hello["d"], "s": None, "t": None}
            assert hello["d"]["heartbeat_interval"] == 1000
            await c.send(1, None)  # an immediate first beat is accepted
            await c.expect(11)
            await c.send(2, IDENTIFY)
            ready = await c.expect(0, "READY")
            assert ready["s"] == 1
            d = ready["d"]
            assert d["v"] == 10 and d["user"]["id"] == "1000" and d["user"]["bot"] is True
            assert d["resume_gateway_url"] == fake.resume_gateway_url != fake.gateway_url
            assert d["guilds"] == [{"id": "300", "unavailable": True}]
            guild = await c.expect(0, "GUILD_CREATE")
            assert guild["s"] == 2 and guild["d"]["channels"][0]["id"] == "200"
            msg = await c.expect(0, "MESSAGE_CREATE")
            assert msg["s"] == 3 and msg["d"]["id"] == early["id"]
            assert msg["d"]["mentions"][0]["id"] == "1000" and msg["d"]["guild_id"] == "300"
            await fake.wait_for_identify(1)
            await c.ws.aclose(4000)
        await fake.wait_for_close(0)
    rec = fake.connections[0]
    assert rec.endpoint == "gateway" and rec.query == {"v": "10", "encoding": "json"}
    assert rec.identify == IDENTIFY and rec.session_id == d["session_id"]
    assert rec.client_close_code == 4000 and rec.server_close_code is None
    assert [f.op for f in fake.frames_received] == [1, 2]
    assert [(f.op, f.t) for f in fake.frames_sent] == [
        (10, None), (11, None), (0, "READY"), (0, "GUILD_CREATE"), (0, "MESSAGE_CREATE"),
    ]
    assert all(set(json.loads(f.raw)) == {"op", "d", "s", "t"} for f in fake.frames_sent)
    assert fake.session_start_limit["remaining"] == 999


async def test_heartbeat_carries_seq_and_zombie_knob(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            await c.login()
            await c.expect(0, "GUILD_CREATE")
            await c.send(1, 2)
            await c.expect(11)
            fake.ack_heartbeats = False  # zombie: no ACKs, dispatches keep flowing
            await c.send(1, 2)
            await fake.dispatch_message("still flowing")
            msg = await c.recv()
            assert msg["t"] == "MESSAGE_CREATE" and msg["s"] == 3  # not an ACK
            await c.send(1, 3)
            await fake.wait_for_heartbeats(3)
    beats = fake.gateway_frames("recv", op=1)
    assert [(b.d, b.server_seq) for b in beats] == [(2, 2), (2, 2), (3, 3)]
    assert len(fake.gateway_frames("sent", op=11)) == 1


async def test_server_requested_heartbeat(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            await c.login()
            await fake.request_heartbeat()
            assert (await c.expect(0, "GUILD_CREATE"))["s"] == 2
            assert await c.expect(1) == {"op": 1, "d": None, "s": None, "t": None}
            await c.send(1, 2)
            await c.expect(11)


async def test_missing_heartbeats_close_4000_and_session_stays_resumable() -> None:
    async with FakeDiscord(heartbeat_interval_ms=100) as fake:
        with trio.fail_after(2):
            async with connect(fake.gateway_url) as c:
                ready = await c.login()
                assert await c.closed_with() == 4000  # no beat within 1.5 x interval
            rec = fake.connections[0]
            assert rec.server_close_code == 4000 and rec.client_close_code is None
            assert rec.closed_at is not None and 0.15 <= rec.closed_at - rec.opened_at < 0.5
            async with connect(fake.resume_gateway_url) as c:
                await c.expect(10)
                await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 2})
                await c.expect(0, "RESUMED")


@pytest.mark.parametrize(
    ("query", "payloads", "code"),
    [
        (QUERY, [(3, {"status": "online"})], 4003),
        (QUERY, [(2, IDENTIFY), (2, IDENTIFY)], 4005),
        (QUERY, [(2, dict(IDENTIFY, token="wrong"))], 4004),
        (QUERY, [(2, dict(IDENTIFY, intents=1 << 30))], 4013),
        (QUERY, [(2, {k: v for k, v in IDENTIFY.items() if k != "intents"})], 4013),
        (QUERY, [(2, dict(IDENTIFY, intents=37377 | 2))], 4014),  # GUILD_MEMBERS not enabled
        (QUERY, [(2, dict(IDENTIFY, shard=[1, 1]))], 4010),
        (QUERY, [(5, None)], 4001),
        (QUERY, [(1, "x" * 5000)], 4002),
        ("v=9&encoding=json", [], 4012),
        ("v=10&encoding=etf", [], 4002),
    ],
)
async def test_protocol_violations_close_with_documented_codes(
    fake: FakeDiscord, query: str, payloads: list[tuple[int, Any]], code: int,
) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url, query) as c:
            for op, d in payloads:
                await c.send(op, d)
            assert await c.closed_with() == code
        await fake.wait_for_close(0)
    assert fake.connections[0].server_close_code == code
    assert fake.identify_count == (1 if code == 4005 else 0)


async def test_gateway_send_rate_limit_closes_4008(fake: FakeDiscord) -> None:
    fake.gateway_send_limit = 5
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            await c.login()
            for _ in range(6):
                await c.send(1, 1)
            assert await c.closed_with() == 4008


async def test_resume_replays_missed_messages_on_resume_url(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.expect(0, "GUILD_CREATE")
            live = await fake.dispatch_message("one")
            assert (await c.expect(0, "MESSAGE_CREATE"))["d"]["id"] == live["id"]
            await c.ws.aclose(4000)  # non-1000: session stays resumable
        await fake.wait_for_close(0)
        missed = [await fake.dispatch_message(f"missed {i}") for i in range(2)]
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 3})
            replayed = [await c.expect(0, "MESSAGE_CREATE") for _ in missed]
            assert [(p["s"], p["d"]["id"]) for p in replayed] == [(4, missed[0]["id"]),
                                                                  (5, missed[1]["id"])]
            resumed = await c.expect(0, "RESUMED")
            assert resumed["s"] == 6
            await fake.wait_for_resume(1)
            after = await fake.dispatch_message("after")
            live_again = await c.expect(0, "MESSAGE_CREATE")
            assert (live_again["s"], live_again["d"]["id"]) == (7, after["id"])
            assert await fake.dispatch("SOME_NEW_EVENT", {"x": 1}) == 8
    rec = fake.connections[1]
    assert rec.endpoint == "resume" and rec.resume_query_matched is True
    assert rec.outcome == "resumed" and fake.identify_count == 1 and fake.resume_count == 1


async def test_replay_overlap_knob_duplicates_last_event(fake: FakeDiscord) -> None:
    fake.replay_overlap = 1
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.expect(0, "GUILD_CREATE")
            await c.ws.aclose(4000)
        await fake.dispatch_message("missed")
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 2})
            assert (await c.expect(0, "GUILD_CREATE"))["s"] == 2  # overlap: seq itself again
            assert (await c.expect(0, "MESSAGE_CREATE"))["s"] == 3
            await c.expect(0, "RESUMED")


async def test_client_close_1000_invalidates_session(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.ws.aclose(1000)
        await fake.wait_for_close(0)
        lost = await fake.dispatch("MESSAGE_CREATE", {"id": "1", "channel_id": "200"})
        assert lost == 0 and len(fake.events_lost) == 1
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 1})
            assert await c.expect(9) == {"op": 9, "d": False, "s": None, "t": None}
            assert await c.closed_with() == 4000  # after invalid_session_grace_s
    assert fake.connections[0].client_close_code == 1000
    assert fake.connections[1].outcome == "invalid_session:false"


async def test_op7_reconnect_buffers_events_for_resume(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.expect(0, "GUILD_CREATE")
            await fake.send_reconnect()
            assert await c.expect(7) == {"op": 7, "d": None, "s": None, "t": None}
            queued = [await fake.dispatch_message(f"q{i}") for i in range(3)]
            assert await c.closed_with() == 4000  # the fake closes after the grace period
        assert fake.connections[0].server_close_code == 4000
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 2})
            got = [(await c.expect(0, "MESSAGE_CREATE"))["d"]["id"] for _ in queued]
            assert got == [m["id"] for m in queued]
            await c.expect(0, "RESUMED")
    sent_on_old = fake.gateway_frames("sent", connection=0, t="MESSAGE_CREATE")
    assert sent_on_old == []


async def test_op7_instead_of_hello(fake: FakeDiscord) -> None:
    fake.reconnect_instead_of_hello = True
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            assert (await c.recv())["op"] == 7
            await c.ws.aclose(4000)
        async with connect(fake.gateway_url) as c:
            await c.login()
    assert fake.connections[0].first_op_sent == 7 and not fake.connections[0].hello_sent
    assert fake.connections[1].hello_sent


async def test_invalid_session_resumable_and_not(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.expect(0, "GUILD_CREATE")
            await fake.invalid_session(True)
            assert (await c.expect(9))["d"] is True
            await c.ws.aclose(4000)
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 2})
            await c.expect(0, "RESUMED")
            await fake.invalid_session(False)
            assert (await c.expect(9))["d"] is False
            await fake.dispatch_message("lost in the gap")
            await c.ws.aclose(4000)
        assert len(fake.events_lost) == 1
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 3})
            assert (await c.expect(9))["d"] is False
        async with connect(fake.gateway_url) as c:
            fresh = await c.login()
            assert fresh["session_id"] != ready["session_id"]
    assert fake.identify_count == 2


@pytest.mark.parametrize(("code", "resumable"), [(4000, True), (1000, True), (4009, False)])
async def test_server_close_codes_and_resumability(
    fake: FakeDiscord, code: int, resumable: bool,
) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await fake.close_connection(code, "test")
            assert await c.closed_with() == code
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 1})
            if resumable:
                await c.expect(0, "GUILD_CREATE")
                await c.expect(0, "RESUMED")
            else:
                assert (await c.expect(9))["d"] is False


async def test_drop_connection_is_1006_and_resumable(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await fake.drop_connection()
            assert await c.closed_with() == 1006
        assert fake.connections[0].dropped_by_server
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 2})
            await c.expect(0, "RESUMED")


async def test_freeze_connection_is_half_open(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.expect(0, "GUILD_CREATE")
            fake.freeze_connection()
            await c.send(1, 2)
            await fake.dispatch_message("buffered, not sent")
            with trio.move_on_after(0.2) as scope:
                await c.recv()
            assert scope.cancelled_caught  # no ACK, no dispatch
            with trio.move_on_after(0.2) as scope:
                await c.ws.aclose(4000)  # no close echo either: the client must time out
            assert scope.cancelled_caught
        await fake.wait_for_close(0)
        assert fake.connections[0].client_close_code == 4000
        assert [f.op for f in fake.gateway_frames("recv", connection=0)] == [2, 1]
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 2})
            assert (await c.expect(0, "MESSAGE_CREATE"))["d"]["content"].endswith("not sent")
            await c.expect(0, "RESUMED")


async def test_resume_with_future_seq_closes_4007(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            ready = await c.login()
            await c.ws.aclose(4000)
        async with connect(fake.resume_gateway_url) as c:
            await c.expect(10)
            await c.send(6, {"token": TOKEN, "session_id": ready["session_id"], "seq": 99})
            assert await c.closed_with() == 4007


async def test_identify_concurrency_answers_op9() -> None:
    async with FakeDiscord(heartbeat_interval_ms=1000) as fake:
        fake.identify_must_wait_s = 5.0
        with trio.fail_after(2):
            async with connect(fake.gateway_url) as c:
                await c.login()
                await c.ws.aclose(4000)
            async with connect(fake.gateway_url) as c:
                await c.expect(10)
                await c.send(2, IDENTIFY)
                assert (await c.expect(9))["d"] is False
    assert fake.identify_count == 1 and len(fake.identifies) == 2


async def test_session_start_limit_exhausted_resets_token() -> None:
    limit = {"remaining": 0, "reset_after": 60_000}
    async with FakeDiscord(session_start_limit=limit) as fake, rest(fake) as http:
        resp = await http.get("/gateway/bot")
        body = resp.json()
        assert body["url"] == fake.gateway_url and body["shards"] == 1
        ssl_ = body["session_start_limit"]
        assert ssl_["remaining"] == 0 and 59_000 < ssl_["reset_after"] <= 60_000
        assert ssl_["total"] == 1000 and ssl_["max_concurrency"] == 1
        with trio.fail_after(2):
            async with connect(fake.gateway_url) as c:
                await c.expect(10)
                await c.send(2, IDENTIFY)
                assert await c.closed_with() == 4004
        assert fake.token_resets == 1 and fake.token != TOKEN
        assert (await http.get("/users/@me")).status_code == 401


async def test_zlib_stream_split_frames_and_fresh_inflater_per_connection(
    fake: FakeDiscord,
) -> None:
    fake.zlib_split = 3
    query = QUERY + "&compress=zlib-stream"
    with trio.fail_after(2):
        for _ in range(2):
            async with connect(fake.gateway_url, query) as c:
                await c.login()
                await c.expect(0, "GUILD_CREATE")
                assert c.messages >= 7  # 3 payloads, each in up to 3 binary messages
                await c.ws.aclose(4000)


async def test_intents_filter_and_blank_content(fake: FakeDiscord) -> None:
    no_content = dict(IDENTIFY, intents=1 | 512)  # GUILDS | GUILD_MESSAGES only
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            await c.login(no_content)
            await c.expect(0, "GUILD_CREATE")
            await fake.dispatch_message("secret", mentions_bot=False)
            assert await fake.dispatch_message("dm", guild_id=None, channel_id="400")
            await fake.dispatch_message("for you")
            blank = await c.expect(0, "MESSAGE_CREATE")
            assert blank["d"]["content"] == "" and blank["s"] == 3
            mention = await c.expect(0, "MESSAGE_CREATE")
            assert mention["d"]["content"] == "<@1000> for you" and mention["s"] == 4
    assert [name for name, _ in fake.events_filtered] == ["MESSAGE_CREATE"]


# == REST ======================================================================================


async def test_post_message_happy_path_headers_and_echo(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c, rest(fake) as http:
            await c.login()
            await c.expect(0, "GUILD_CREATE")
            resp = await http.post("/channels/200/messages", json={
                "content": "hi", "allowed_mentions": {"parse": []}, "nonce": "n1",
                "enforce_nonce": True,
            })
            assert resp.status_code == 200
            msg = resp.json()
            assert msg["content"] == "hi" and msg["author"]["id"] == "1000" and msg["id"]
            assert msg["nonce"] == "n1" and msg["type"] == 0
            h = resp.headers
            assert h["via"] == "1.1 google"
            assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == ("5", "4")
            assert float(h["x-ratelimit-reset-after"]) == 5.0 and h["x-ratelimit-bucket"]
            assert float(h["x-ratelimit-reset"]) > 1.7e9
            echo = await c.expect(0, "MESSAGE_CREATE")
            assert echo["d"]["id"] == msg["id"] and echo["d"]["guild_id"] == "300"
            await fake.wait_for_posts(1)
    assert fake.messages_posted == [{
        "content": "hi", "allowed_mentions": {"parse": []}, "nonce": "n1",
        "enforce_nonce": True, "channel_id": "200", "id": msg["id"],
    }]
    rec = fake.rest_requests[0]
    assert (rec.method, rec.path, rec.status) == ("POST", "/api/v10/channels/200/messages", 200)
    assert rec.headers["authorization"] == f"Bot {TOKEN}" and rec.json["content"] == "hi"
    assert rec.route == "POST /channels/{channel_id}/messages" and rec.bucket is not None


async def test_bad_token_and_missing_user_agent(fake: FakeDiscord) -> None:
    async with rest(fake, token="nope") as http:
        resp = await http.post("/channels/200/messages", json={"content": "x"})
        assert resp.status_code == 401 and resp.json() == {"message": "401: Unauthorized",
                                                           "code": 0}
    async with rest(fake, ua=None) as http:
        resp = await http.post("/channels/200/messages", json={"content": "x"})
        assert resp.status_code == 403 and resp.json()["code"] == 40333
    assert fake.invalid_requests == 2 and fake.messages_posted == []


async def test_content_length_counts_code_points_and_empty_is_rejected(
    fake: FakeDiscord,
) -> None:
    async with rest(fake) as http:
        ok = await http.post("/channels/200/messages", json={"content": "\U0001f600" * 2000})
        assert ok.status_code == 200
        long = await http.post("/channels/200/messages", json={"content": "a" * 2001})
        assert long.status_code == 400
        body = long.json()
        assert body["code"] == 50035
        assert body["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
        empty = await http.post("/channels/200/messages", json={"content": "  \n"})
        assert empty.status_code == 400 and empty.json()["code"] == 50006
        unknown = await http.post("/channels/999/messages", json={"content": "x"})
        assert unknown.status_code == 404 and unknown.json()["code"] == 10003
    assert len(fake.messages_posted) == 1


async def test_nonce_idempotency_and_commit_then_502(fake: FakeDiscord) -> None:
    fake.rest_fail_next(502, commit=True, route="POST /channels/*/messages")
    body = {"content": "once", "nonce": "abc", "enforce_nonce": True}
    async with rest(fake) as http:
        first = await http.post("/channels/200/messages", json=body)
        assert first.status_code == 502 and "text/html" in first.headers["content-type"]
        retry = await http.post("/channels/200/messages", json=body)
        again = await http.post("/channels/200/messages", json=body)
        assert retry.status_code == again.status_code == 200
        assert retry.json()["id"] == again.json()["id"]
        other = await http.post("/channels/200/messages", json=dict(body, nonce="other"))
        assert other.json()["id"] != retry.json()["id"]
    assert [m["content"] for m in fake.messages_posted] == ["once", "once"]
    assert len({m["id"] for m in fake.messages_posted}) == 2 and fake.nonce_hits == 2
    assert fake.rest_requests[0].fault == "502 after commit"


async def test_bucket_is_enforced_per_channel(fake: FakeDiscord) -> None:
    fake.set_rate_limit("POST /channels/{channel_id}/messages", 2, 0.3)
    fake.add_channel("201")
    async with rest(fake) as http:
        statuses = [(await http.post("/channels/200/messages", json={"content": "x"}))
                    for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert statuses[1].headers["x-ratelimit-remaining"] == "0"
        limited = statuses[2]
        assert limited.headers["x-ratelimit-scope"] == "user"
        assert limited.headers["retry-after"] == "1" and "x-ratelimit-global" not in limited.headers
        assert limited.json()["global"] is False and 0 < limited.json()["retry_after"] <= 0.3
        other = await http.post("/channels/201/messages", json={"content": "x"})
        assert other.status_code == 200  # major parameter isolation
        await trio.sleep(float(statuses[1].headers["x-ratelimit-reset-after"]))
        assert (await http.post("/channels/200/messages", json={"content": "x"})).status_code \
            == 200
    assert fake.invalid_requests == 1 and fake.rate_limit_violations == 1


async def test_injected_429s_bucket_global_shared(fake: FakeDiscord) -> None:
    route = "POST /channels/{channel_id}/messages"
    async with rest(fake) as http:
        fake.rest_fail_next(429, retry_after=0.2, route=route)
        first = await http.post("/channels/200/messages", json={"content": "x"})
        assert first.status_code == 429 and first.json()["retry_after"] == 0.2
        assert first.headers["x-ratelimit-remaining"] == "0"
        assert first.headers["x-ratelimit-reset-after"] == "0.200"
        during = await http.post("/channels/200/messages", json={"content": "x"})
        assert during.status_code == 429  # the bucket is blocked for retry_after
        await trio.sleep(0.21)
        fake.rest_fail_next(429, retry_after=0.1, global_=True)
        glob = await http.post("/channels/200/messages", json={"content": "x"})
        assert glob.headers["x-ratelimit-global"] == "true"
        assert glob.headers["x-ratelimit-scope"] == "global" and glob.json()["global"] is True
        blocked = await http.get("/users/@me")
        assert blocked.status_code == 429 and blocked.json()["global"] is True
        await trio.sleep(0.11)
        fake.rest_fail_next(429, retry_after=0.1, scope="shared", route=route)
        shared = await http.post("/channels/200/messages", json={"content": "x"})
        assert shared.headers["x-ratelimit-scope"] == "shared"
        assert int(shared.headers["x-ratelimit-remaining"]) > 0
        ok = await http.post("/channels/200/messages", json={"content": "x"})
        assert ok.status_code == 200
    assert fake.invalid_requests == 4  # the shared 429 does not count
    assert fake.rate_limit_violations == 2  # "during" and "blocked": sent inside a 429 window


async def test_cloudflare_ban_and_5xx_shapes(fake: FakeDiscord) -> None:
    fake.invalid_request_limit = 3
    fake.ban_duration_s = 0.2
    async with rest(fake) as http:
        fake.rest_fail_next(503, route="/users/@me")
        html = await http.get("/users/@me")
        assert html.status_code == 503 and html.text.startswith("<!DOCTYPE html>")
        fake.rest_fail_next(500, route="/users/@me")
        assert (await http.get("/users/@me")).json()["code"] == 0
        for _ in range(3):
            assert (await http.get("/gateway/bot", headers={"Authorization": "Bot x"})
                    ).status_code == 401
        banned = await http.get("/users/@me")
        assert banned.status_code == 429 and "via" not in banned.headers
        assert "retry_after" not in banned.json() and "x-ratelimit-limit" not in banned.headers
        assert fake.banned and fake.bans == 1
        await trio.sleep(0.21)
        assert (await http.get("/users/@me")).status_code == 200


async def test_replies_allowed_mentions_and_pings(fake: FakeDiscord) -> None:
    user_msg = await fake.dispatch_message("question")
    async with rest(fake) as http:
        reply = await http.post("/channels/200/messages", json={
            "content": "@everyone <@&77> <@500> answer",
            "message_reference": {"message_id": user_msg["id"]},
            "allowed_mentions": {"parse": [], "replied_user": False},
        })
        msg = reply.json()
        assert msg["type"] == 19 and msg["referenced_message"]["id"] == user_msg["id"]
        assert msg["message_reference"]["message_id"] == user_msg["id"]
        assert msg["mentions"] == [] and msg["mention_roles"] == []
        assert msg["mention_everyone"] is False
        pinged = await http.post("/channels/200/messages", json={
            "content": "<@500>", "allowed_mentions": {"parse": ["users"]}})
        assert [u["id"] for u in pinged.json()["mentions"]] == ["500"]
        exclusive = await http.post("/channels/200/messages", json={
            "content": "x", "allowed_mentions": {"parse": ["users"], "users": ["500"]}})
        assert exclusive.status_code == 400 and exclusive.json()["code"] == 50035
        fake.delete_message("200", user_msg["id"])
        gone = await http.post("/channels/200/messages", json={
            "content": "x", "message_reference": {"message_id": user_msg["id"]}})
        errors = gone.json()["errors"]["message_reference"]["_errors"]
        assert gone.status_code == 400 and errors[0]["code"] == "REPLIES_UNKNOWN_MESSAGE"
        plain = await http.post("/channels/200/messages", json={
            "content": "x", "message_reference": {"message_id": user_msg["id"],
                                                  "fail_if_not_exists": False}})
        assert plain.status_code == 200 and plain.json()["type"] == 0


async def test_typing_gateway_channel_history_and_unknown_route(fake: FakeDiscord) -> None:
    first = await fake.dispatch_message("one")
    second = await fake.dispatch_message("two")
    fake.add_channel("201", can_send=False)
    async with rest(fake) as http:
        typing = await http.post("/channels/200/typing")
        assert typing.status_code == 204 and fake.typing_posts[0][0] == "200"
        denied = await http.post("/channels/201/typing")
        assert denied.status_code == 403 and denied.json()["code"] == 50013
        history = await http.get("/channels/200/messages", params={"after": first["id"]})
        assert [m["id"] for m in history.json()] == [second["id"]]
        newest_first = await http.get("/channels/200/messages")
        assert [m["id"] for m in newest_first.json()] == [second["id"], first["id"]]
        channel = await http.get("/channels/200")
        assert channel.json()["guild_id"] == "300" and channel.json()["type"] == 0
        assert (await http.get("/gateway")).json() == {"url": fake.gateway_url}
        missing = await http.delete("/channels/200/nothing")
        assert missing.status_code == 404
        assert missing.json() == {"message": "404: Not Found", "code": 0}
    assert [r.status for r in fake.rest_requests] == [204, 403, 200, 200, 200, 200, 404]


async def test_upgrade_rejection_withheld_hello_and_delayed_ack(fake: FakeDiscord) -> None:
    fake.reject_upgrades = 1
    fake.withhold_hello = 1
    fake.heartbeat_ack_delay_s = 0.1
    with trio.fail_after(2):
        with pytest.raises(ConnectionRejected) as rejected:
            async with connect(fake.gateway_url):
                pass
        assert rejected.value.status_code == 502
        async with connect(fake.gateway_url) as c:
            with trio.move_on_after(0.2) as scope:
                await c.recv()
            assert scope.cancelled_caught  # G26: accepted, but no Hello
            await c.ws.aclose(4000)
        async with connect(fake.gateway_url) as c:
            await c.login()
            await c.expect(0, "GUILD_CREATE")
            sent_at = trio.current_time()
            await c.send(1, 2)
            await c.expect(11)
            assert trio.current_time() - sent_at >= 0.1
    assert fake.connections[0].rejected_status == 502
    assert not fake.connections[1].hello_sent and fake.connections[2].hello_sent


async def test_same_message_id_dispatched_twice_and_shape_knobs(fake: FakeDiscord) -> None:
    with trio.fail_after(2):
        async with connect(fake.gateway_url) as c:
            await c.login()
            await c.expect(0, "GUILD_CREATE")
            first = await fake.dispatch_message("dup", message_id="42")
            await fake.dispatch_message("dup", message_id="42")
            a, b = await c.expect(0, "MESSAGE_CREATE"), await c.expect(0, "MESSAGE_CREATE")
            assert a["d"]["id"] == b["d"]["id"] == first["id"] and b["s"] == a["s"] + 1
            dm = await fake.dispatch_message("dm", guild_id=None, channel_id="400",
                                             mentions_bot=False, reply_to="42",
                                             omit=("channel_type",))
            got = (await c.expect(0, "MESSAGE_CREATE"))["d"]
            assert got == dm and "guild_id" not in got and "member" not in got
            assert "channel_type" not in got and got["type"] == 19
            assert got["referenced_message"] is None  # "42" lives in another channel
    assert len(fake.channel_messages["200"]) == 1


async def test_hold_parks_requests_until_released_commit_or_drop(fake: FakeDiscord) -> None:
    hold = fake.hold_rest("POST /channels/{channel_id}/messages")
    fake.add_channel("201")
    answers: dict[str, httpx.Response] = {}
    async with rest(fake) as http:

        async def post(channel: str) -> None:
            answers[channel] = await http.post(
                f"/channels/{channel}/messages",
                json={"content": f"to {channel}", "nonce": f"n{channel}", "enforce_nonce": True})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, "200")
            nursery.start_soon(post, "201")
            with trio.fail_after(2):
                await fake.wait_for_held(hold, 2)
            assert (await http.get("/users/@me")).status_code == 200  # other routes pass
            assert fake.messages_posted == [] and len(hold.waiting) == 2
            assert hold.release(commit=True, where=lambda r: "/200/" in r.path) == 1
            assert hold.stop(commit=False) == 1
        assert answers["200"].status_code == 200
        assert answers["201"].status_code == 503  # dropped: nothing was created
        assert [m["channel_id"] for m in fake.created_messages] == ["200"]
        # the hold is over: a repeat of the committed nonce is deduplicated, the dropped
        # one is created now
        again = await http.post("/channels/200/messages",
                                json={"content": "to 200", "nonce": "n200", "enforce_nonce": True})
        assert again.json()["id"] == answers["200"].json()["id"]
        late = await http.post("/channels/201/messages",
                               json={"content": "to 201", "nonce": "n201", "enforce_nonce": True})
        assert late.status_code == 200
    assert [m["channel_id"] for m in fake.created_messages] == ["200", "201"]
    assert fake.nonce_hits == 1
    assert {r.path.split("/")[-2]: r.fault for r in hold.held} == {
        "200": "held, then committed", "201": "held, then 503"}
