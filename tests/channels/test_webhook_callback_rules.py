"""Where a webhook callback may go (CONTRACT §4): link-local, unspecified, multicast and
broadcast addresses are refused in every spelling, userinfo too, a channel's
``callback_allow`` narrows the rest, and the check is made again at send time on every
address a name resolves to, which is the address then connected to (no DNS rebinding).

Real servers on 127.0.0.1 port 0 throughout; names other than ``localhost`` are resolved by
a resolver injected into the channel's :class:`CallbackGuard`, so nothing here needs DNS.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from orrad.channels.webhook.auth import WebhookAuth
from orrad.channels.webhook.callbacks import CallbackGuard, post_callback
from orrad.channels.webhook.policy import CallbackPolicy, parse_ipv4_loose
from orrad.config import BUILTIN_CHANNEL_KINDS, load_channel_file, load_daemon_config
from orrad.errors import ChannelSendError, ConfigErrors
from orrad.http import HTTPServer, Request, Response, Router
from orrad.metrics import Metrics
from orrad.state import Ledger
from tests.channels.test_webhook import body, fast_callbacks, post, signed, webhook

__all__ = ["fast_callbacks"]  # the fixture, used by name below

BEARER = "auth:\n  bearer_token: tok\n"
HEADERS = {"authorization": "Bearer tok", "content-type": "application/json"}


# -- the rules, without I/O -----------------------------------------------------------------

@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/iam", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local address (169.254.169.254) inside"),
    ("http://[::ffff:a9fe:a9fe]/", "link-local"),
    ("http://[::a9fe:a9fe]/", "link-local"),                 # IPv4-compatible
    ("http://[::ffff:0:a9fe:a9fe]/", "link-local"),          # IPv4-translated
    ("http://[2002:a9fe:a9fe::1]/", "link-local"),           # 6to4
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),          # NAT64
    ("http://[64:ff9b:1::a9fe:a9fe]/", "link-local"),        # local-use NAT64
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://2852039166/", "link-local address (169.254.169.254)"),   # decimal
    ("http://0xa9fea9fe/", "link-local"),                    # hex
    ("http://0251.0376.0251.0376/", "not a valid URL"),      # octal (httpx refuses it)
    ("http://0xa9.0xfe.0xa9fe/", "link-local"),              # mixed, three parts
    ("http://169.254.43518/", "link-local"),                 # two parts
    ("http://169.254.169.254./", "link-local"),              # trailing dot
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://0.0.0.0:22/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://0.1.2.3/", "unspecified"),
    ("http://[::]:22/", "unspecified"),
    ("http://[::ffff:0.0.0.0]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250:1900/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://2130706433:22/", "unusual spelling of 127.0.0.1"),
    ("http://0x7f.1/", "unusual spelling of 127.0.0.1"),
    ("http://127.1:22/", "unusual spelling of 127.0.0.1"),
    ("http://user:hunter2@127.0.0.1/", "user name or password"),
    ("http://token@example.com/", "user name or password"),
    ("http://@example.com/", "user name or password"),
    ("http://%31%36%39.254.169.254/", "not a valid host name"),
    ("ftp://example.com/", "http(s)"),
    ("http://example.com:0/", "invalid port"),
])
def test_refused_urls_name_the_reason(url: str, reason: str) -> None:
    problem = CallbackPolicy().url_problem(url)
    assert problem is not None and reason in problem, problem
    assert "hunter2" not in problem and "meta-data" not in problem  # no secrets, no path


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/cb", "http://localhost/cb", "http://[::1]:9/x",
    "https://10.1.2.3/cb?token=x", "http://192.168.0.10/", "http://172.16.5.4/",
    "http://[fd12:3456::1]/", "https://hooks.example.com/x", "http://my_host.internal:81/",
    "http://169.253.255.255/", "http://169.255.0.1/", "https://bücher.example/",
])
def test_internal_and_public_callbacks_stay_allowed(url: str) -> None:
    assert CallbackPolicy().url_problem(url) is None


# Every form glibc's inet_aton takes, with its answer (None: not an IPv4 number).
@pytest.mark.parametrize(("text", "address"), [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("017700000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0177.0.0.01", "127.0.0.1"),
    ("1.2.3", "1.2.0.3"), ("1.2.65535", "1.2.255.255"), ("0xffffffff", "255.255.255.255"),
    ("00", "0.0.0.0"), ("0X0a.0", "10.0.0.0"),
    ("4294967296", None), ("256.1", None), ("1.256.1.1", None), ("1.2.65536", None),
    ("08", None), ("0x", None), ("1..2", None), ("1.2.3.4.5", None), ("", None),
    ("example.com", None), ("1.2.3.4 ", None), ("+1.2.3.4", None),
])
def test_ipv4_is_read_as_inet_aton_reads_it(text: str, address: str | None) -> None:
    parsed = parse_ipv4_loose(text)
    assert (str(parsed) if parsed else None) == address


def test_callback_allow_allows_only_what_it_lists() -> None:
    policy = CallbackPolicy.from_allow(["10.0.0.0/8", "hooks.example.com", "*.corp.example",
                                       "fd00::/8"])
    assert policy.url_problem("http://10.9.8.7/") is None
    assert policy.url_problem("http://[fd00::5]/") is None
    assert policy.url_problem("http://192.168.1.1/") == (
        "callback_url address 192.168.1.1 is not in callback_allow")
    # names: a listed one is allowed; another is judged by its addresses at send time
    assert policy.url_problem("https://hooks.example.com/x") is None
    assert policy.url_problem("https://a.b.corp.example/x") is None
    assert policy.url_problem("https://elsewhere.example/") is None
    assert policy.allows("elsewhere.example", ipaddress.ip_address("10.1.1.1"))
    assert not policy.allows("elsewhere.example", ipaddress.ip_address("192.168.1.1"))
    assert policy.allows("a.corp.example", ipaddress.ip_address("192.168.1.1"))
    assert not policy.allows("corp.example", ipaddress.ip_address("192.168.1.1"))
    # never re-allows a refused address
    anything = CallbackPolicy.from_allow(["0.0.0.0/0", "::/0"])
    problem = anything.url_problem("http://169.254.169.254/")
    assert problem is not None and "link-local" in problem
    names_only = CallbackPolicy.from_allow(["hooks.example.com"])
    assert names_only.url_problem("http://other.example/") == (
        "callback_url host 'other.example' is not in callback_allow")


def test_callback_allow_entries_are_checked_by_the_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("kind: webhook\ncallback_allow: [10.0.0.0/8, '::1', hooks.example.com,"
                    " '*.corp.example', 192.168.1.7]\n")
    daemon = load_daemon_config(None, environ=dict(os.environ))
    loaded = load_channel_file(str(good), daemon, BUILTIN_CHANNEL_KINDS)
    assert getattr(loaded, "callback_allow", None) == [
        "10.0.0.0/8", "::1", "hooks.example.com", "*.corp.example", "192.168.1.7"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: webhook\ncallback_allow:\n  - 10.0.0.0/8\n  - 'not a host!'\n")
    with pytest.raises(ConfigErrors, match=r"bad.yaml:4:5: callback_allow entry 'not a host!'"):
        load_channel_file(str(bad), daemon, BUILTIN_CHANNEL_KINDS)


# -- a callback receiver ------------------------------------------------------------------

@dataclass
class Receiver:
    """Answers ``status`` (with ``location`` for a redirect) and ``size`` bytes of body."""

    status: int = 200
    location: str = ""
    size: int = 2
    received: list[Request] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        self.received.append(request)
        self.arrived.set()
        headers = [("location", self.location)] if self.location else []
        return Response(self.status, [("content-type", "text/plain"), *headers],
                        b"x" * self.size)

    @property
    def port(self) -> int:
        return httpx.URL(self.url).port or 0


@asynccontextmanager
async def receiver(status: int = 200, location: str = "", size: int = 2
                   ) -> AsyncIterator[Receiver]:
    sink = Receiver(status, location, size)
    router = Router()
    router.add("POST", "/cb", sink.handle)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        sink.url = f"http://{host}:{port}/cb"
        yield sink
        nursery.cancel_scope.cancel()


class Resolver:
    """Answers from a script, one answer per call (the last one repeats); counts calls."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


async def _send(url: str, guard: CallbackGuard, request_id: str = "cb",
                metrics: Metrics | None = None) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        await post_callback(client, WebhookAuth(None), "hooks", request_id, url,
                            {"id": request_id, "message": "done"}, guard, metrics=metrics)


# -- send time: the address checked is the address connected to ---------------------------

@pytest.mark.usefixtures("fast_callbacks")
async def test_a_name_is_resolved_once_and_its_checked_address_is_the_one_connected() -> None:
    async with receiver() as sink:
        resolver = Resolver(["127.0.0.1"])
        # The system cannot resolve hook.test: the request can only arrive if it went to
        # the address the guard resolved and checked.
        await _send(f"http://hook.test:{sink.port}/cb?sig=1", CallbackGuard(resolver=resolver))
        assert resolver.calls == ["hook.test"]
        [request] = sink.received
        assert request.header("host") == f"hook.test:{sink.port}"
        assert request.target == "/cb?sig=1"


@pytest.mark.usefixtures("fast_callbacks")
async def test_dns_rebinding_to_metadata_is_refused_at_send_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with receiver() as sink:
        # First answer good, every later one the metadata address: a check that resolved
        # separately from the connection would pass the first and connect to the second.
        resolver = Resolver(["127.0.0.1"], ["169.254.169.254"])
        guard = CallbackGuard(resolver=resolver)
        url = f"http://rebind.test:{sink.port}/cb?token=s3cret"
        metrics = Metrics()
        await _send(url, guard, "first", metrics)
        with caplog.at_level(logging.INFO, logger="orrad.channels.webhook.callbacks"), \
                pytest.raises(ChannelSendError, match="link-local"):
            await _send(url, guard, "second", metrics)
        assert len(sink.received) == 1 and resolver.calls == ["rebind.test"] * 2  # no retry
        assert metrics.value("orrad_webhook_callback_failures_total", channel="hooks") == 1
        [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert "resolves to a link-local address (169.254.169.254)" in line
        assert f"http://rebind.test:{sink.port}" in line and "s3cret" not in line


@pytest.mark.usefixtures("fast_callbacks")
@pytest.mark.parametrize("answer", [
    ["127.0.0.1", "169.254.169.254"], ["::ffff:169.254.169.254"], ["0.0.0.0"], ["::"],
    ["224.0.0.251"], ["fe80::1%1"], ["not-an-address"],
])
async def test_one_refused_address_refuses_the_name(answer: list[str]) -> None:
    async with receiver() as sink:
        resolver = Resolver(answer)
        with pytest.raises(ChannelSendError):
            await _send(f"http://mixed.test:{sink.port}/cb", CallbackGuard(resolver=resolver))
        assert sink.received == [] and resolver.calls == ["mixed.test"]


@pytest.mark.usefixtures("fast_callbacks")
async def test_the_next_checked_address_is_tried_when_one_does_not_connect() -> None:
    async with receiver() as sink:
        # 127.0.0.2 is loopback too but nothing listens there: connection refused.
        await _send(f"http://two.test:{sink.port}/cb",
                    CallbackGuard(resolver=Resolver(["127.0.0.2", "127.0.0.1"])))
        assert len(sink.received) == 1


@pytest.mark.usefixtures("fast_callbacks")
async def test_callback_allow_filters_the_resolved_addresses() -> None:
    async with receiver() as sink:
        policy = CallbackPolicy.from_allow(["127.0.0.1/32"])
        # localhost is 127.0.0.1 and ::1 without asking a resolver; ::1 is not allowed,
        # 127.0.0.1 is, so that one is used.
        await _send(f"http://localhost:{sink.port}/cb", CallbackGuard(policy))
        assert len(sink.received) == 1
        with pytest.raises(ChannelSendError, match="not in callback_allow"):
            await _send(f"http://localhost:{sink.port}/cb",
                        CallbackGuard(CallbackPolicy.from_allow(["10.0.0.0/8"])))
        assert len(sink.received) == 1


@pytest.mark.usefixtures("fast_callbacks")
async def test_a_redirect_is_not_followed() -> None:
    async with receiver(status=307, location="http://169.254.169.254/latest") as sink:
        with pytest.raises(ChannelSendError, match="HTTP 307"):
            await _send(sink.url, CallbackGuard())
        assert len(sink.received) == 1


@pytest.mark.usefixtures("fast_callbacks")
async def test_a_huge_answer_is_not_read_whole() -> None:
    async with receiver(size=8 * 1024 * 1024) as sink:
        with trio.fail_after(5):
            await _send(sink.url, CallbackGuard())
        assert len(sink.received) == 1


# -- through the channel -----------------------------------------------------------------

@pytest.mark.parametrize(("url", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://0.0.0.0:22/", "unspecified"),
    ("http://2130706433:22/", "unusual spelling of 127.0.0.1"),
    ("http://user:hunter2@127.0.0.1:9/", "user name or password"),
    ("http://[ff02::1]/", "multicast"),
])
async def test_intake_refuses_with_400_naming_the_reason(
    tmp_path: Path, url: str, reason: str
) -> None:
    async with webhook(tmp_path, BEARER) as hook:
        response = await post(hook.url, body(callback_url=url), HEADERS)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "bad_request" and reason in error["message"]
        assert "hunter2" not in error["message"]
        assert await hook.inbox_ids() == [] and hook.provider.runs == []


async def test_intake_applies_callback_allow(tmp_path: Path) -> None:
    async with receiver() as sink, webhook(
            tmp_path, BEARER, extra="callback_allow: [10.0.0.0/8]\n") as hook:
        refused = await post(hook.url, body(callback_url=sink.url), HEADERS)
        assert refused.status_code == 400
        assert "not in callback_allow" in refused.json()["error"]["message"]
        assert await hook.inbox_ids() == []


@pytest.mark.usefixtures("fast_callbacks")
async def test_a_name_resolving_outside_callback_allow_fails_for_good_at_send_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver() as sink, webhook(
            tmp_path, extra="callback_allow: [10.0.0.0/8]\n") as hook:
        # A name passes intake (no DNS there); at send time localhost is 127.0.0.1/::1.
        url = f"http://localhost:{sink.port}/cb/t0ken?sig=s3cret"
        data = body(callback_url=url)
        with caplog.at_level(logging.INFO):
            accepted = await post(hook.url, data, signed(data, msg_id="outside"))
            assert accepted.status_code == 202
            with trio.fail_after(5):
                while (entry := await Ledger(hook.daemon.db).get("hooks", "outside")
                       ) is None or entry.state != "failed":
                    await trio.sleep(0.01)
        assert sink.received == []
        assert hook.callback_failures() == 1
        [line] = [r.getMessage() for r in caplog.records
                  if r.name == "orrad.channels.webhook.callbacks" and r.levelno >= logging.ERROR]
        assert "not in callback_allow" in line and f"http://localhost:{sink.port}" in line
        assert "t0ken" not in line and "s3cret" not in line


@pytest.mark.usefixtures("fast_callbacks")
async def test_dns_rebinding_through_the_pipeline_is_a_final_failure(tmp_path: Path) -> None:
    async with receiver() as sink, webhook(tmp_path) as hook:
        resolver = Resolver(["127.0.0.1"], ["169.254.169.254"])
        hook.channel.callback_guard = CallbackGuard(resolver=resolver)
        url = f"http://rebind.test:{sink.port}/cb"
        for msg_id, state in (("good", "delivered"), ("rebound", "failed")):
            data = body(callback_url=url, namespace=msg_id)
            accepted = await post(hook.url, data, signed(data, msg_id=msg_id))
            assert accepted.status_code == 202
            with trio.fail_after(5):
                while (entry := await Ledger(hook.daemon.db).get("hooks", msg_id)
                       ) is None or entry.state not in ("delivered", "failed"):
                    await trio.sleep(0.01)
            assert entry.state == state
        assert [r.header("webhook-id") for r in sink.received] == ["good"]
        assert [r.header("host") for r in sink.received] == [f"rebind.test:{sink.port}"]
        assert resolver.calls == ["rebind.test"] * 2


async def test_https_to_a_name_goes_to_the_checked_address_with_the_name_for_tls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    guard = CallbackGuard(resolver=Resolver(["10.0.0.7"]))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await post_callback(client, WebhookAuth(None), "hooks", "tls", "https://hooks.test/cb?a=1",
                            {"id": "tls"}, guard)
        await post_callback(client, WebhookAuth(None), "hooks", "ip", "https://10.0.0.8:8443/cb",
                            {"id": "ip"}, guard)
    by_name, by_ip = seen
    assert str(by_name.url) == "https://10.0.0.7/cb?a=1"
    assert by_name.headers["host"] == "hooks.test"
    assert by_name.extensions["sni_hostname"] == "hooks.test"  # SNI and certificate name
    assert str(by_ip.url) == "https://10.0.0.8:8443/cb"
    assert "sni_hostname" not in by_ip.extensions
