"""The webhook channel over real HTTP, signed with the Standard Webhooks reference library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import standardwebhooks
import trio

from orrad import MemorySessionStore, Runtime
from orrad.channels.webhook import WebhookChannel
from orrad.config import load_daemon_config
from orrad.daemon import Daemon
from orrad.delivery import error_code, status_for_code
from orrad.errors import ProviderError
from orrad.http import HTTPServer, Request, Response, Router, json_response
from orrad.router import AgentSet
from orrad.state import Ledger
from tests.scripted import ScriptedProvider, reply

SECRET = "whsec_" + base64.b64encode(b"a" * 32).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


class CountingEcho(ScriptedProvider):
    """Echoes after ``delay`` seconds; counts runs so tests can prove 'never twice'."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay=delay)
        self.runs: list[str] = []

    async def complete(self, request: Any) -> Any:
        text = request.messages[-1].content
        self.runs.append(text)
        self.responses = [reply(f"echo: {text}", 3, 4)]
        return await super().complete(request)


@dataclass
class Hook:
    daemon: Daemon
    url: str
    provider: CountingEcho
    state_dir: Path
    sent: list[httpx.Response] = field(default_factory=list)

    @property
    def channel(self) -> WebhookChannel:
        assert self.daemon.manager is not None
        [runner] = self.daemon.manager.runners.values()
        assert isinstance(runner.channel, WebhookChannel)
        return runner.channel

    def callback_failures(self) -> float:
        """The daemon's ``orrad_webhook_callback_failures_total`` for this channel."""
        return self.daemon.metrics.value("orrad_webhook_callback_failures_total",
                                         channel="hooks")

    async def inbox_ids(self) -> list[str]:
        """Every request id the pipeline's ledger recorded for the channel."""
        def run(conn: Any) -> list[str]:
            return [r[0] for r in conn.execute(
                "SELECT delivery_id FROM ledger WHERE source = 'hooks' ORDER BY id")]
        return await self.daemon.db.run(run)


@asynccontextmanager
async def webhook(tmp_path: Path, auth: str = f"auth:\n  signing_secret: [{SECRET}]\n",
                  *, delay: float = 0.0, extra: str = "",
                  provider: CountingEcho | None = None,
                  reply_timeout_s: float = 5) -> AsyncIterator[Hook]:
    (tmp_path / "channels.d").mkdir(exist_ok=True)
    (tmp_path / "channels.d" / "hooks.yaml").write_text(
        f"kind: webhook\nlisten: 127.0.0.1:0\nreply_timeout_s: {reply_timeout_s}\n"
        f"{auth}{extra}")
    (tmp_path / "orrad.yaml").write_text("instance: alpha\napi:\n  listen: ''\n")
    daemon = Daemon(load_daemon_config(str(tmp_path / "orrad.yaml")), handle_signals=False)
    provider = provider or CountingEcho(delay)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert daemon.router is not None
        daemon.router.agents = AgentSet({"default": Runtime(provider, MemorySessionStore())},
                                        "default")
        hook = Hook(daemon, "", provider, tmp_path / ".orrad")
        host, port = hook.channel.address or ("", 0)
        hook.url = f"http://{host}:{port}/hook"
        yield hook
        daemon.request_stop()


def signed(body: bytes, *, msg_id: str = "msg_1", secret: str = SECRET,
           when: datetime | None = None) -> dict[str, str]:
    when = when or datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": signature, "content-type": "application/json"}


def body(**fields: Any) -> bytes:
    return msgspec.json.encode({"message": "hello", **fields})


async def post(url: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, content=content, headers=headers)


async def test_signed_request_is_answered(tmp_path: Path) -> None:
    async with webhook(tmp_path) as hook:
        data = body(namespace="user:42", metadata={"k": "v"})
        response = await post(hook.url, data, signed(data))
        assert response.status_code == 200, response.text
        assert response.json() == {
            "id": "msg_1", "message": "echo: hello", "namespace": "webhook:hooks:user:42",
            "agent": "default", "instance": "alpha",
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}


@pytest.mark.parametrize("mangle", ["wrong_secret", "missing", "malformed", "no_comma",
                                    "bad_base64", "tampered_body", "missing_id"])
async def test_bad_signatures_are_401_and_store_nothing(tmp_path: Path, mangle: str) -> None:
    async with webhook(tmp_path) as hook:
        data = body()
        headers = signed(data, secret=OTHER_SECRET if mangle == "wrong_secret" else SECRET)
        if mangle == "missing":
            del headers["webhook-signature"]
        elif mangle == "malformed":
            headers["webhook-signature"] = "v1,,,, v2"
        elif mangle == "no_comma":
            headers["webhook-signature"] = "v1abc"
        elif mangle == "bad_base64":
            headers["webhook-signature"] = "v1,@@@@"
        elif mangle == "missing_id":
            del headers["webhook-id"]
        if mangle == "tampered_body":
            data = body(namespace="x")
        response = await post(hook.url, data, headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert hook.provider.runs == []
        assert await hook.inbox_ids() == []


# One second of margin on each side of the 300 s window: the timestamp has whole seconds
# and the check happens a moment after signing.
@pytest.mark.parametrize(("offset_s", "accepted"), [(-302, False), (302, False), (-298, True),
                                                     (298, True)])
async def test_timestamp_window(tmp_path: Path, offset_s: int, accepted: bool) -> None:
    async with webhook(tmp_path) as hook:
        data = body()
        # whole seconds, as on the wire: the age is then offset_s plus less than a second
        when = datetime.fromtimestamp(int(time.time()) + offset_s, UTC)
        response = await post(hook.url, data, signed(data, when=when))
        assert (response.status_code == 200) is accepted


def raw_signed(data: bytes, stamp: str, *, msg_id: str = "msg_1",
               signature: str = "{}") -> dict[str, bytes]:
    """Headers with ``stamp`` exactly as given and a signature valid over it (``{}`` in
    ``signature`` is the valid entry), latin-1 encoded: only parsing can refuse them."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode("latin-1") + data,
                      hashlib.sha256).digest()
    valid = "v1," + base64.b64encode(digest).decode()
    return {"webhook-id": msg_id.encode(), "webhook-timestamp": stamp.encode("latin-1"),
            "webhook-signature": signature.format(valid).encode("latin-1"),
            "content-type": b"application/json"}


async def post_raw(url: str, content: bytes, headers: dict[str, bytes]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, content=content,
                                 headers=[(k.encode(), v) for k, v in headers.items()])


@pytest.mark.parametrize("stamp", [
    "+{now}", "{now:_}", "\xa0{now}", "{now}\x85", "0000{now}", "{now}.0", "-{now}",
    "{now}\xa0"])
async def test_lenient_timestamps_are_refused_even_when_signed(
    tmp_path: Path, stamp: str
) -> None:
    # int() takes "+17", "1_7" and Unicode whitespace around the digits; the header is
    # 1-12 ASCII digits and nothing else (each stamp here is signed as sent).
    async with webhook(tmp_path) as hook:
        data = body()
        now = int(time.time())
        response = await post_raw(hook.url, data, raw_signed(data, stamp.format(now=now)))
        assert response.status_code == 401
        assert hook.provider.runs == []
        assert await hook.inbox_ids() == []
        plain = await post_raw(hook.url, data, raw_signed(data, str(now), msg_id="plain"))
        assert plain.status_code == 200


@pytest.mark.parametrize(("signature", "accepted"), [
    ("{}", True), ("v1a,eHl6 {}", True), ("v1,bad {}", True), ("v2,x {} v1,", True),
    ("v1,bad\t{}", False), ("{}\xa0", False), ("\xa0{}", False), ("{}\x85", False),
    ("{}=", False), ("{}A", False)])
async def test_signature_entries_are_parsed_exactly(
    tmp_path: Path, signature: str, accepted: bool
) -> None:
    # Entries are separated by single spaces: a tab or other whitespace is no separator
    # (str.split() took them), and a valid digest with extra characters is no valid entry.
    async with webhook(tmp_path) as hook:
        data = body()
        headers = raw_signed(data, str(int(time.time())), signature=signature)
        response = await post_raw(hook.url, data, headers)
        assert (response.status_code == 200) is accepted, headers["webhook-signature"]


async def test_rotation_accepts_any_configured_secret(tmp_path: Path) -> None:
    async with webhook(tmp_path, f"auth:\n  signing_secret: [{SECRET}, {OTHER_SECRET}]\n"
                       ) as hook:
        for n, secret in enumerate([SECRET, OTHER_SECRET]):
            data = body()
            response = await post(hook.url, data, signed(data, msg_id=f"m{n}", secret=secret))
            assert response.status_code == 200


async def test_duplicate_delivery_runs_the_agent_once(tmp_path: Path) -> None:
    async with webhook(tmp_path) as hook:
        data = body(namespace="dup")
        first = await post(hook.url, data, signed(data, msg_id="same"))
        second = await post(hook.url, data, signed(data, msg_id="same"))
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert hook.provider.runs == ["hello"]


async def test_repeat_while_running_is_409_then_the_stored_reply(tmp_path: Path) -> None:
    async with webhook(tmp_path, delay=1.0) as hook:
        data = body()
        async with trio.open_nursery() as nursery:
            results: list[httpx.Response] = []

            async def first() -> None:
                results.append(await post(hook.url, data, signed(data, msg_id="slow")))

            nursery.start_soon(first)
            while not hook.provider.runs:
                await trio.sleep(0.01)
            again = await post(hook.url, data, signed(data, msg_id="slow"))
            assert again.status_code == 409
            assert again.json()["error"]["code"] == "in_progress"
        assert results[0].status_code == 200
        third = await post(hook.url, data, signed(data, msg_id="slow"))
        assert third.json() == results[0].json()
        assert hook.provider.runs == ["hello"]


async def test_idempotency_survives_a_restart(tmp_path: Path) -> None:
    data = body(namespace="persist")
    async with webhook(tmp_path) as hook:
        first = await post(hook.url, data, signed(data, msg_id="keep"))
        assert first.status_code == 200
    provider = CountingEcho()
    async with webhook(tmp_path, provider=provider) as hook:
        again = await post(hook.url, data, signed(data, msg_id="keep"))
        assert again.status_code == 200
        assert again.json() == first.json()
        assert provider.runs == []


async def test_idempotency_key_header_and_body_id(tmp_path: Path) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        headers = {"authorization": "Bearer tok", "content-type": "application/json"}
        a = await post(hook.url, body(), {**headers, "idempotency-key": "k1"})
        b = await post(hook.url, body(), {**headers, "idempotency-key": "k1"})
        c = await post(hook.url, body(id="k2"), headers)
        d = await post(hook.url, body(id="k2"), headers)
        assert a.json()["id"] == "k1" and a.json() == b.json()
        assert c.json()["id"] == "k2" and c.json() == d.json()
        assert len(hook.provider.runs) == 2
        fresh = await post(hook.url, body(), headers)
        assert len(fresh.json()["id"]) == 36  # a new UUID when the caller gives no id
        wrong = await post(hook.url, body(), {**headers, "authorization": "Bearer nope"})
        assert wrong.status_code == 401


@pytest.mark.parametrize("namespace", ["../etc", "a::b", "", ":x", "x" * 129, "a/b",
                                       ":".join(["s"] * 16), 7])
async def test_namespace_escape_attempts_are_refused(tmp_path: Path, namespace: Any) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        headers = {"authorization": "Bearer tok", "content-type": "application/json"}
        response = await post(hook.url, body(namespace=namespace), headers)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"
        assert hook.provider.runs == []


@pytest.mark.parametrize(("content", "ctype", "status"), [
    (b"{nope", "application/json", 400),
    (b'{"message": 3}', "application/json", 400),
    (b'{"message": ""}', "application/json", 400),
    (b'["message"]', "application/json", 400),
    (b'{"message": "x", "callback_url": "ftp://x"}', "application/json", 400),
    (b'\xff\xfe', "application/json", 400),
    (b"message=hi", "application/x-www-form-urlencoded", 415),
])
async def test_bad_input_is_a_json_error_never_500(
    tmp_path: Path, content: bytes, ctype: str, status: int
) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        response = await post(hook.url, content,
                              {"authorization": "Bearer tok", "content-type": ctype})
        assert response.status_code == status
        assert "error" in response.json()
        assert await hook.inbox_ids() == []


async def test_compressed_bodies_are_refused(tmp_path: Path) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        response = await post(hook.url, body(), {"authorization": "Bearer tok",
                                                 "content-encoding": "gzip",
                                                 "content-type": "application/json"})
        assert response.status_code == 415


async def test_two_mebibyte_body_is_413(tmp_path: Path) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        big = body(padding="x" * (2 * 1024 * 1024))
        response = await post(hook.url, big, {"authorization": "Bearer tok",
                                              "content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
        assert response.headers["connection"] == "close"
        assert hook.provider.runs == []


async def test_slow_sender_is_cut_off_while_others_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orrad.channels.webhook import channel

    monkeypatch.setattr(channel, "BODY_TIMEOUT_S", 1.0)
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        host, port = hook.channel.address or ("", 0)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                              b"content-type: application/json\r\n\r\n{")
        started = trio.current_time()
        response = await post(hook.url, body(), {"authorization": "Bearer tok",
                                                 "content-type": "application/json"})
        assert response.status_code == 200
        assert trio.current_time() - started < 2
        with trio.fail_after(3):
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        assert b"408" in answer.split(b"\r\n", 1)[0]
        await stream.aclose()


@dataclass
class CallbackReceiver:
    """A real HTTP endpoint that fails the first ``fail_first`` callbacks with 503."""

    fail_first: int = 0
    received: list[Request] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, request: Request) -> Response:
        self.received.append(request)
        if len(self.received) <= self.fail_first:
            return json_response(503, {"error": "busy"})
        self.arrived.set()
        return json_response(200, {"ok": True})


@asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[tuple[CallbackReceiver, str]]:
    sink = CallbackReceiver(fail_first)
    router = Router()
    router.add("POST", "/cb", sink.handle)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        yield sink, f"http://{host}:{port}/cb"
        nursery.cancel_scope.cancel()


@pytest.fixture
def fast_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millisecond backoff: virtual time cannot be used while real sockets and the
    database's worker threads are involved (the clock would jump past I/O timeouts)."""
    from orrad.channels.webhook import callbacks

    monkeypatch.setattr(callbacks, "BACKOFF_MULTIPLIER_S", 0.001)
    monkeypatch.setattr(callbacks, "MAX_WAIT_S", 0.01)


@pytest.mark.usefixtures("fast_callbacks")
async def test_async_reply_goes_to_the_callback_with_retries(tmp_path: Path) -> None:
    async with receiver(fail_first=2) as (sink, url), webhook(tmp_path) as hook:
        data = body(namespace="async", callback_url=url)
        accepted = await post(hook.url, data, signed(data, msg_id="cb1"))
        assert accepted.status_code == 202
        assert accepted.json() == {"id": "cb1", "status": "accepted"}
        repeat = await post(hook.url, data, signed(data, msg_id="cb1"))
        assert repeat.json() == accepted.json()
        await sink.arrived.wait()
        assert len(sink.received) == 3
        assert {r.header("webhook-id") for r in sink.received} == {"cb1"}
        final = sink.received[-1]
        verified = standardwebhooks.Webhook(SECRET).verify(
            final.body, {k: v for k, v in final.headers})
        assert verified["message"] == "echo: hello" and verified["id"] == "cb1"
        assert hook.provider.runs == ["hello"]
        with trio.fail_after(5):
            while (entry := await Ledger(hook.daemon.db).get("hooks", "cb1")
                   ) is None or entry.state != "delivered":
                await trio.sleep(0.01)


@pytest.mark.usefixtures("fast_callbacks")
async def test_callback_final_failure_is_counted(tmp_path: Path) -> None:
    async with receiver(fail_first=1000) as (sink, url), webhook(tmp_path) as hook:
        data = body(callback_url=url)
        await post(hook.url, data, signed(data, msg_id="doomed"))
        with trio.fail_after(5):
            while hook.callback_failures() == 0:
                await trio.sleep(0.01)
        assert len(sink.received) == 8
        # The counter moves in the callback's last attempt, the ledger a batch later.
        ledger = Ledger(hook.daemon.db)
        with trio.fail_after(5):
            while (entry := await ledger.get("hooks", "doomed")) is not None \
                    and entry.state == "answered":
                await trio.sleep(0.01)
        assert entry is not None and entry.state == "failed"


def test_public_listener_without_auth_is_a_config_error(tmp_path: Path) -> None:
    from orrad.config import BUILTIN_CHANNEL_KINDS, load_channel_file

    (tmp_path / "hooks.yaml").write_text("kind: webhook\nlisten: 0.0.0.0:8080\n")
    daemon = load_daemon_config(None, environ=dict(os.environ))
    from orrad.errors import ConfigErrors

    with pytest.raises(ConfigErrors, match=r"hooks.yaml:2:9: .*without auth"):
        load_channel_file(str(tmp_path / "hooks.yaml"), daemon, BUILTIN_CHANNEL_KINDS)


async def test_unknown_agent_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        headers = {"authorization": "Bearer tok", "content-type": "application/json",
                   "idempotency-key": "fix-me"}
        wrong = await post(hook.url, body(agent="nosuch"), headers)
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "unknown_agent"
        wrong_meta = await post(hook.url, body(metadata={"agent": "ghost"}), headers)
        assert wrong_meta.status_code == 400
        assert await hook.inbox_ids() == []
        fixed = await post(hook.url, body(agent="DEFAULT"), headers)
        assert fixed.status_code == 200 and fixed.json()["id"] == "fix-me"


@pytest.mark.parametrize("url", ["http://[::1", "http://x:99999/", "http://a b/", "ftp://x/",
                                 "", "/relative"])
async def test_bad_callback_urls_are_400(tmp_path: Path, url: str) -> None:
    async with webhook(tmp_path, "auth:\n  bearer_token: tok\n") as hook:
        response = await post(hook.url, body(callback_url=url),
                              {"authorization": "Bearer tok", "content-type": "application/json"})
        assert response.status_code == 400
        assert await hook.inbox_ids() == []


@pytest.mark.usefixtures("fast_callbacks")
async def test_callback_of_a_run_that_outlives_a_channel_restart(tmp_path: Path) -> None:
    async with receiver() as (sink, url), webhook(tmp_path, delay=1.0) as hook:
        data = body(callback_url=url)
        accepted = await post(hook.url, data, signed(data, msg_id="survivor"))
        assert accepted.status_code == 202
        while not hook.provider.runs:
            await trio.sleep(0.01)
        # The channel restarts (its file changed) while the run is still going.
        manager = hook.daemon.manager
        assert manager is not None
        [(file, runner)] = manager.runners.items()
        changed = msgspec.structs.replace(runner.config, reply_timeout_s=6)
        [result] = await manager.apply({file: changed}, {})
        assert result.result == "restarted"
        with trio.fail_after(5):
            await sink.arrived.wait()
        assert [r.header("webhook-id") for r in sink.received] == ["survivor"]


class DelayedByText(CountingEcho):
    """Echoes each text after its own delay (0 when not listed)."""

    def __init__(self, delays: dict[str, float]) -> None:
        super().__init__()
        self.delays = delays

    async def complete(self, request: Any) -> Any:
        text = request.messages[-1].content
        self.runs.append(text)
        await trio.sleep(self.delays.get(text, 0.0))
        return reply(f"echo: {text}", 3, 4)


async def test_a_reply_later_than_reply_timeout_is_504_and_the_same_id_gets_it_later(
        tmp_path: Path) -> None:
    provider = DelayedByText({"slow": 3.0})
    async with webhook(tmp_path, auth="", provider=provider, reply_timeout_s=1) as hook:
        slow = body(message="slow", namespace="a")
        headers = {"content-type": "application/json", "idempotency-key": "slow-1"}
        answers: dict[str, httpx.Response] = {}
        waited: list[float] = []

        async def ask_slow() -> None:
            started = trio.current_time()
            answers["slow"] = await post(hook.url, slow, headers)
            waited.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_slow)
            with trio.fail_after(5):
                while not provider.runs:
                    await trio.sleep(0.01)
            # Others are answered while the slow one waits: its timeout is its own.
            for i in range(3):
                fast = body(message=f"fast {i}", namespace=f"b{i}")
                response = await post(hook.url, fast, {"content-type": "application/json"})
                assert response.status_code == 200, response.text
                assert response.json()["message"] == f"echo: fast {i}"
        first = answers["slow"]
        assert first.status_code == 504, first.text
        assert first.json()["error"]["code"] == "timeout"
        assert waited[0] >= 1.0
        # The run goes on; once it has answered, the same id gets that answer.
        with trio.fail_after(10):
            while True:
                again = await post(hook.url, slow, headers)
                if again.status_code != 409:
                    break
                await trio.sleep(0.1)
        assert again.status_code == 200, again.text
        assert again.json()["message"] == "echo: slow"
        assert provider.runs.count("slow") == 1


class FailsAtOnce(CountingEcho):
    """A provider that refuses every request without waiting."""

    async def complete(self, request: Any) -> Any:
        self.runs.append(request.messages[-1].content)
        raise ProviderError("the model is down")


async def test_an_answer_ready_before_the_receipt_is_still_given(tmp_path: Path) -> None:
    # A message runs once its ledger row is written, before the row's commit, so an answer
    # that needs nothing stored (an error, at once) can be ready before the receipt: the
    # request still gets that answer, not a 504 for a message it takes as not recorded.
    expected = error_code(ProviderError("the model is down"))
    async with webhook(tmp_path, auth="", provider=FailsAtOnce()) as hook:
        for n in range(5):
            content = body(id=f"r-{n}")
            response = await post(hook.url, content, {"content-type": "application/json"})
            assert response.status_code == status_for_code(expected), response.text
            assert response.json()["error"]["code"] == expected
        assert hook.provider.runs == ["hello"] * 5
