"""PeerClient against a real orrad HTTP server that verifies every signature: retries
(same txn_id, fresh nonce), no retry on 4xx, connection cuts, the breaker and its probe.

Every test runs twice: with relays over httpx, and over the lean
:class:`~orrad.http.client.PooledClient` the daemon uses for them."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import trio

from orrad.config.schema import FederationConfig, PeerConfig
from orrad.federation.breaker import BreakerState, CircuitBreaker
from orrad.federation.client import (
    Peer,
    PeerClient,
    RetrySettings,
    make_http_client,
    peers_from_config,
)
from orrad.federation.errors import (
    BadPeerResponse,
    CircuitOpen,
    PeerFailed,
    PeerRejected,
    PeerUnavailable,
)
from orrad.federation.wire import RelayRequest
from orrad.http import Response
from orrad.http.client import PooledClient
from tests.federation.peer import SECRET, CuttingProxy, ScriptedPeer, raw_json

FAST = RetrySettings(attempts=4, backoff_base_s=0.001, backoff_max_s=0.002)


class ManualClock:
    """The breakers' clock, moved by hand (real sockets and autojump_clock do not mix)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Transports:
    """The clients a PeerClient is given: httpx, and the relays' client (or none)."""

    http: httpx.AsyncClient
    relays: PooledClient | None


@pytest.fixture(params=["httpx", "pooled"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[Transports]:
    async with make_http_client() as client, PooledClient(8) as pooled:
        yield Transports(client, pooled if request.param == "pooled" else None)


def client_for(
    http: Transports, url: str, *, retry: RetrySettings = FAST,
    clock: ManualClock | None = None, threshold: int = 5, timeout_s: float = 5.0,
) -> PeerClient:
    manual = clock or ManualClock()

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, failure_threshold=threshold, cooldown_s=30, jitter=0,
                              clock=manual)

    peer = Peer("beta", url, SECRET, timeout_s=timeout_s)
    return PeerClient("alpha", [peer], http.http, retry=retry, breaker_factory=breaker,
                      relays=http.relays)


def relay_request(txn_id: str = "txn-1", message: str = "hi") -> RelayRequest:
    return RelayRequest(txn_id=txn_id, origin="alpha", hops=("alpha",), namespace="acme:1",
                        message=message)


async def test_relay_is_signed_and_answered(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer()
    client = client_for(http, await peer.start(nursery))
    response = await client.relay("beta", relay_request())
    assert (response.txn_id, response.message, response.instance) == \
        ("txn-1", "echo: hi", "beta")
    assert peer.refused == []
    assert [(s.method, s.target, s.origin) for s in peer.seen] == \
        [("POST", "/federation/v1/relay", "alpha")]
    status = client.status("beta")
    assert status.breaker.state is BreakerState.CLOSED
    assert status.last_relay_ms is not None and status.last_relay_ms > 0


async def test_5xx_is_retried_with_the_same_txn_id_and_fresh_nonces(
    nursery: trio.Nursery, http: Transports, caplog: pytest.LogCaptureFixture
) -> None:
    peer = ScriptedPeer(script=[(503, "unavailable"), (500, "internal")])
    client = client_for(http, await peer.start(nursery))
    with caplog.at_level(logging.WARNING, logger="orrad.federation.client"):
        response = await client.relay("beta", relay_request("txn-7"))
    # The first attempt runs outside tenacity; its failure is still attempt 1 of 4.
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert [m.split(" failed")[0] for m in retries] == \
        ["peer beta: relay txn-7 attempt 1/4", "peer beta: relay txn-7 attempt 2/4"]
    assert response.txn_id == "txn-7"
    assert [s.txn_id for s in peer.relays()] == ["txn-7"] * 3
    assert len({s.nonce for s in peer.relays()}) == 3  # never refused as "replayed"
    assert peer.refused == []
    assert client.breaker("beta").consecutive_failures == 0


async def test_retries_spent_on_5xx_keep_the_peers_status_and_code(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer(script=[(502, "provider_error")] * 4)
    client = client_for(http, await peer.start(nursery))
    with pytest.raises(PeerFailed) as info:
        await client.relay("beta", relay_request())
    assert (info.value.status, info.value.code, info.value.peer) == \
        (502, "provider_error", "beta")
    assert not info.value.unavailable
    assert len(peer.relays()) == FAST.attempts


async def test_a_503_after_retries_means_unavailable(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer(script=[(503, "unavailable")] * 4)
    client = client_for(http, await peer.start(nursery))
    with pytest.raises(PeerFailed) as info:
        await client.relay("beta", relay_request())
    assert info.value.unavailable
    assert len(peer.relays()) == 4


async def test_loop_detected_is_not_retried_and_passed_back_unchanged(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer(script=[(409, "loop_detected")])
    client = client_for(http, await peer.start(nursery))
    with pytest.raises(PeerRejected) as info:
        await client.relay("beta", relay_request())
    assert (info.value.status, info.value.code, info.value.message) == \
        (409, "loop_detected", "scripted loop_detected")
    assert len(peer.relays()) == 1
    assert client.breaker("beta").consecutive_failures == 0  # the peer is up


@pytest.mark.parametrize(("answer", "status", "code"), [
    ((400, "bad_request"), 400, "bad_request"),
    ((404, "not_found"), 404, "not_found"),
    ((408, "timeout"), 408, "timeout"),
    ((429, "rate_limited"), 429, "rate_limited"),
    ((422, "custom_code"), 422, "custom_code"),
    (Response(403, [], b"forbidden by proxy"), 403, "forbidden"),  # no §4 body
    (raw_json(418, {"unexpected": True}), 418, "http_418"),
])
async def test_no_4xx_is_retried(
    nursery: trio.Nursery, http: Transports, answer: tuple[int, str] | Response,
    status: int, code: str,
) -> None:
    peer = ScriptedPeer(script=[answer])
    client = client_for(http, await peer.start(nursery))
    with pytest.raises(PeerRejected) as info:
        await client.relay("beta", relay_request())
    assert (info.value.status, info.value.code) == (status, code)
    assert len(peer.relays()) == 1


async def test_auth_rejection_is_one_attempt_and_an_error_log(
    nursery: trio.Nursery, http: Transports, caplog: pytest.LogCaptureFixture
) -> None:
    peer = ScriptedPeer(secrets={"alpha": "not-what-alpha-has"})
    client = client_for(http, await peer.start(nursery))
    with caplog.at_level(logging.ERROR), pytest.raises(PeerRejected) as info:
        await client.relay("beta", relay_request())
    assert (info.value.status, info.value.code) == (401, "bad_signature")
    assert peer.refused == ["bad_signature"]  # exactly one attempt (T42)
    assert "auth rejected by beta" in caplog.text


async def test_lost_ack_is_retried_with_the_same_txn_and_runs_once(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer()
    proxy = CuttingProxy(await peer.start(nursery), cut=2)
    client = client_for(http, await proxy.start(nursery))
    response = await client.relay("beta", relay_request("txn-cut"))
    assert response.message == "echo: hi"
    assert [s.txn_id for s in peer.relays()] == ["txn-cut"] * 3  # two answers were lost
    assert peer.runs == 1  # the peer answered the retries from its store
    assert proxy.connections == 3


async def test_connection_refused_is_unavailable_naming_the_peer(
    http: Transports,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    client = client_for(http, f"http://127.0.0.1:{port}")
    with pytest.raises(PeerUnavailable) as info:
        await client.relay("beta", relay_request())
    assert (info.value.status, info.value.code) == (503, "unavailable")
    assert "peer 'beta' is unavailable" in info.value.message
    assert client.breaker("beta").consecutive_failures == FAST.attempts


async def test_slow_peer_times_out_as_unavailable(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer(script=["hang"])
    client = client_for(http, await peer.start(nursery), retry=RetrySettings(attempts=1),
                        timeout_s=0.2)
    with pytest.raises(PeerUnavailable, match=r"timed out after 0\.2s"):
        await client.relay("beta", relay_request())


async def test_breaker_opens_then_sends_nothing_until_a_probe_succeeds(
    nursery: trio.Nursery, http: Transports
) -> None:
    clock = ManualClock()
    peer = ScriptedPeer(script=[(503, "unavailable")] * 5)
    client = client_for(http, await peer.start(nursery), clock=clock, threshold=5,
                        retry=RetrySettings(attempts=1))
    for _ in range(5):
        with pytest.raises(PeerFailed):
            await client.relay("beta", relay_request())
    assert client.breaker("beta").state is BreakerState.OPEN
    requests_so_far = len(peer.seen)
    for call in (client.relay("beta", relay_request()), client.health("beta")):
        with pytest.raises(CircuitOpen) as info:
            await call
        assert info.value.code == "unavailable"
        assert "HTTP 503 unavailable" in info.value.message  # the last error
    assert len(peer.seen) == requests_so_far  # nothing reached the peer while open (T41)

    clock.now += 30  # cool-down over: the next call is preceded by one health probe
    response = await client.relay("beta", relay_request("txn-after"))
    assert response.txn_id == "txn-after"
    assert [(s.method, s.target) for s in peer.seen[requests_so_far:]] == [
        ("GET", "/federation/v1/health"), ("POST", "/federation/v1/relay")]
    assert client.breaker("beta").state is BreakerState.CLOSED


async def test_failed_probe_reopens_and_the_relay_is_not_sent(
    nursery: trio.Nursery, http: Transports
) -> None:
    clock = ManualClock()
    peer = ScriptedPeer(script=[(503, "unavailable")] * 3)
    client = client_for(http, await peer.start(nursery), clock=clock, threshold=2)
    with pytest.raises(CircuitOpen):  # 2 failures open it; the 3rd attempt is refused
        await client.relay("beta", relay_request())
    assert len(peer.seen) == 2
    clock.now += 30
    with pytest.raises(CircuitOpen):
        await client.relay("beta", relay_request())
    assert [s.target for s in peer.seen[2:]] == ["/federation/v1/health"]  # the probe only
    assert client.breaker("beta").state is BreakerState.OPEN
    assert client.status("beta").breaker.retry_in_s == pytest.approx(60)


async def test_health_measures_the_round_trip(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer()
    client = client_for(http, await peer.start(nursery))
    assert client.status("beta").rtt_ms is None
    health = await client.health("beta")
    assert (health.instance, health.version, health.agent_count) == ("beta", "9.9", 1)
    rtt = client.status("beta").rtt_ms
    assert rtt is not None and 0 < rtt < 1000


async def test_query_is_part_of_the_signed_target(
    nursery: trio.Nursery, http: Transports
) -> None:
    peer = ScriptedPeer()
    client = client_for(http, await peer.start(nursery))
    sessions = await client.sessions("beta", "team:ops")
    assert [s.namespace for s in sessions] == ["team:ops"]
    assert peer.seen[0].target == "/federation/v1/sessions?prefix=team%3Aops"
    assert peer.refused == []


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"txn_id": "another", "message": "m", "namespace": "acme:1"}',
    b'{"message": "m"}',
])
async def test_a_2xx_we_cannot_use_is_a_bad_response(
    nursery: trio.Nursery, http: Transports, body: bytes
) -> None:
    peer = ScriptedPeer(script=[Response(200, [("content-type", "application/json")], body)])
    client = client_for(http, await peer.start(nursery))
    with pytest.raises(BadPeerResponse) as info:
        await client.relay("beta", relay_request())
    assert (info.value.status, info.value.code) == (502, "bad_response")
    assert len(peer.relays()) == 1


async def test_only_relays_from_this_instance(http: Transports) -> None:
    client = client_for(http, "http://127.0.0.1:9")
    bad = [
        RelayRequest(txn_id="t", origin="gamma", hops=("gamma",), namespace="a", message="m"),
        RelayRequest(txn_id="t", origin="alpha", hops=(), namespace="a", message="m"),
    ]
    for request in bad:
        with pytest.raises(ValueError, match="origin and last hop"):
            await client.relay("beta", request)
    with pytest.raises(KeyError):
        await client.relay("nobody", relay_request())


def test_peers_from_config_use_the_default_secret_when_theirs_is_empty() -> None:
    fed = FederationConfig(secret="shared", peers=[
        PeerConfig(name="beta", url="http://b:8471/", secret="own", timeout_s=7),
        PeerConfig(name="gamma", url="http://c:8471"),
    ])
    assert peers_from_config(fed) == [Peer("beta", "http://b:8471", "own", 7),
                                      Peer("gamma", "http://c:8471", "shared", 120)]
    assert peers_from_config(None) == []
    assert "own" not in repr(peers_from_config(fed))
