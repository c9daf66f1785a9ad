"""The federation routes on orrad's HTTP server, called with real signed httpx requests:
authentication first (nothing processed on failure), loop refusal, the five routes, and
PeerClient talking to them end to end."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
import trio

from orrad.federation.client import Peer, PeerClient, RetrySettings, make_http_client
from orrad.federation.errors import FederationError, PeerRejected
from orrad.federation.server import build_federation_router
from orrad.federation.signing import Signer, Verifier
from orrad.federation.wire import (
    AgentInfo,
    RelayRequest,
    RelayResponse,
    SessionDetail,
    SessionInfo,
    SessionMessage,
    WireUsage,
    encode,
)
from orrad.http import HTTPServer
from orrad.model import key_matches_prefix

SECRETS = {"alpha": "alpha-secret", "gamma": "gamma-secret"}
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@dataclass
class MemoryHost:
    """Daemon ``beta``: answers relays from a dict, as the ledger would."""

    instance: str = "beta"
    version: str = "1.2.3"
    max_hops: int = 4
    relays: list[RelayRequest] = field(default_factory=list)
    runs: int = 0
    stored: dict[tuple[str, str], RelayResponse] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=lambda: {"acme:1": 2, "acme:2": 4,
                                                              "acmex": 1})
    refuse: FederationError | None = None

    def agents(self) -> list[AgentInfo]:
        return [AgentInfo(name="default", description="helper", model="m", instance="beta")]

    async def relay(self, request: RelayRequest) -> RelayResponse:
        self.relays.append(request)
        if self.refuse is not None:
            raise self.refuse
        key = (request.origin, request.txn_id)
        if key not in self.stored:
            self.runs += 1
            self.stored[key] = RelayResponse(
                txn_id=request.txn_id, message=f"echo: {request.message}",
                namespace=request.namespace, agent=request.agent or "default",
                instance="beta", usage=WireUsage(input_tokens=1, output_tokens=2,
                                                 total_tokens=3))
        return self.stored[key]

    async def list_sessions(self, prefix: str) -> list[SessionInfo]:
        return [SessionInfo(namespace=k, message_count=n, created_at=WHEN, updated_at=WHEN)
                for k, n in sorted(self.sessions.items())
                if not prefix or key_matches_prefix(k, prefix)]

    async def session_detail(self, namespace: str) -> SessionDetail | None:
        if namespace not in self.sessions:
            return None
        return SessionDetail(namespace=namespace,
                             messages=[SessionMessage(role="user", content="hi")])


@dataclass
class Beta:
    host: MemoryHost
    url: str
    http: httpx.AsyncClient

    async def call(
        self, method: str, target: str, body: bytes = b"", *, origin: str = "alpha",
        secret: str | None = None, destination: str = "beta", at: float | None = None,
        sign_target: str | None = None,
    ) -> httpx.Response:
        """Send a request signed like a peer would (each knob breaks one thing)."""
        signer = Signer(origin, {destination: secret or SECRETS.get(origin, "none")},
                        clock=(lambda: at) if at is not None else time.time)
        headers = signer.headers(destination, method, sign_target or target, body)
        return await self.http.request(method, self.url + target, content=body,
                                       headers=headers)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client() as client:
        yield client


@pytest.fixture
async def beta(nursery: trio.Nursery, http: httpx.AsyncClient) -> Beta:
    host = MemoryHost()
    router = build_federation_router(host, Verifier("beta", SECRETS))
    addr = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
    return Beta(host, f"http://{addr[0]}:{addr[1]}", http)


def relay_body(**fields: object) -> bytes:
    data: dict[str, object] = {"txn_id": "t1", "origin": "alpha", "hops": ["alpha"],
                               "namespace": "acme:1", "message": "hi", "agent": None,
                               "metadata": {}}
    data.update(fields)
    return msgspec.json.encode(data)


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"]


# -- relay -----------------------------------------------------------------------------------


async def test_relay_runs_on_the_host(beta: Beta) -> None:
    response = await beta.call("POST", "/federation/v1/relay", relay_body())
    assert response.status_code == 200
    assert response.json() == {
        "txn_id": "t1", "message": "echo: hi", "namespace": "acme:1", "agent": "default",
        "instance": "beta", "usage": {"input_tokens": 1, "output_tokens": 2,
                                      "total_tokens": 3}, "version": 1}
    assert beta.host.relays[0].hops == ("alpha",)


async def test_unknown_fields_are_accepted(beta: Beta) -> None:
    response = await beta.call("POST", "/federation/v1/relay",
                               relay_body(priority="high", version=2))
    assert response.status_code == 200


@pytest.mark.parametrize(("knobs", "code"), [
    ({"secret": "wrong"}, "bad_signature"),
    ({"origin": "gamma", "secret": "alpha-secret"}, "bad_signature"),  # not gamma's secret
    ({"origin": "mallory", "secret": "x"}, "unknown_peer"),
    ({"destination": "gamma"}, "wrong_destination"),
    ({"at": time.time() - 600}, "clock_skew"),
    ({"sign_target": "/federation/v1/health"}, "bad_signature"),
])
async def test_authentication_failures_are_401_and_nothing_is_processed(
    beta: Beta, knobs: dict[str, Any], code: str
) -> None:
    response = await beta.call("POST", "/federation/v1/relay", relay_body(), **knobs)
    assert error_of(response) == (401, code)
    assert beta.host.relays == []


async def test_clock_skew_is_logged_apart_from_bad_signatures(
    beta: Beta, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orrad.federation.server"):
        await beta.call("POST", "/federation/v1/relay", relay_body(), at=time.time() + 600)
        await beta.call("POST", "/federation/v1/relay", relay_body(), secret="wrong")
    skew, bad = (r.getMessage() for r in caplog.records)
    assert skew.startswith("federation: clock skew with 'alpha'")
    assert "NTP" in skew
    assert "bad_signature" in bad
    assert "alpha-secret" not in caplog.text


async def test_replayed_request_is_401_and_not_processed_twice(
    beta: Beta, http: httpx.AsyncClient
) -> None:
    body = relay_body()
    signer = Signer("alpha", {"beta": SECRETS["alpha"]})
    headers = signer.headers("beta", "POST", "/federation/v1/relay", body)
    first = await http.post(beta.url + "/federation/v1/relay", content=body, headers=headers)
    again = await http.post(beta.url + "/federation/v1/relay", content=body, headers=headers)
    assert first.status_code == 200
    assert error_of(again) == (401, "replayed")
    assert len(beta.host.relays) == 1


async def test_a_retry_with_a_fresh_signature_gets_the_stored_answer(beta: Beta) -> None:
    first = await beta.call("POST", "/federation/v1/relay", relay_body())
    again = await beta.call("POST", "/federation/v1/relay", relay_body())
    assert first.json() == again.json()
    assert beta.host.runs == 1


async def test_unsigned_request_is_refused(beta: Beta, http: httpx.AsyncClient) -> None:
    response = await http.post(beta.url + "/federation/v1/relay", content=relay_body())
    assert error_of(response) == (401, "bad_signature")
    assert beta.host.relays == []


@pytest.mark.parametrize(("fields", "status", "code"), [
    ({"hops": ["alpha", "beta"]}, 400, "bad_request"),  # hops must end with the origin
    ({"hops": ["beta", "alpha"]}, 409, "loop_detected"),  # beta already passed
    ({"hops": ["gamma", "alpha", "gamma", "alpha"]}, 409, "loop_detected"),
    ({"hops": ["a", "b", "c", "d", "alpha"]}, 409, "loop_detected"),  # > max_hops (4)
    ({"origin": "gamma", "hops": ["gamma"]}, 400, "bad_request"),  # not the signed origin
    ({"namespace": "a::b"}, 400, "bad_request"),
    ({"txn_id": ""}, 400, "bad_request"),
    ({"message": None}, 400, "bad_request"),
])
async def test_relays_the_server_refuses_before_the_host(
    beta: Beta, fields: dict[str, object], status: int, code: str
) -> None:
    response = await beta.call("POST", "/federation/v1/relay", relay_body(**fields))
    assert error_of(response) == (status, code)
    assert beta.host.relays == []


async def test_longest_chain_within_max_hops_is_accepted(beta: Beta) -> None:
    response = await beta.call("POST", "/federation/v1/relay",
                               relay_body(hops=["a", "b", "c", "alpha"]))
    assert response.status_code == 200


async def test_host_refusal_keeps_status_and_code(beta: Beta) -> None:
    beta.host.refuse = PeerRejected("gamma", 409, "loop_detected", "gamma -> alpha")
    response = await beta.call("POST", "/federation/v1/relay", relay_body())
    assert error_of(response) == (409, "loop_detected")
    assert response.json()["error"]["message"] == "gamma -> alpha"


async def test_not_json_is_bad_request(beta: Beta) -> None:
    response = await beta.call("POST", "/federation/v1/relay", b"{nope")
    assert error_of(response) == (400, "bad_request")


# -- health, agents, sessions ---------------------------------------------------------------


async def test_health(beta: Beta) -> None:
    response = await beta.call("GET", "/federation/v1/health")
    assert response.json() == {"instance": "beta", "status": "ok", "version": "1.2.3",
                               "agent_count": 1, "protocol": 1}


async def test_agents(beta: Beta) -> None:
    response = await beta.call("GET", "/federation/v1/agents")
    assert response.json() == [{"name": "default", "description": "helper", "model": "m",
                                "instance": "beta"}]


async def test_sessions_by_whole_segment_prefix(beta: Beta) -> None:
    response = await beta.call("GET", "/federation/v1/sessions?prefix=acme")
    assert [s["namespace"] for s in response.json()] == ["acme:1", "acme:2"]
    assert response.json()[0] == {"namespace": "acme:1", "message_count": 2,
                                  "created_at": "2024-05-06T07:08:09Z",
                                  "updated_at": "2024-05-06T07:08:09Z"}
    every = await beta.call("GET", "/federation/v1/sessions")
    assert len(every.json()) == 3


async def test_the_query_is_signed(beta: Beta) -> None:
    response = await beta.call("GET", "/federation/v1/sessions?prefix=acmex",
                               sign_target="/federation/v1/sessions?prefix=acme")
    assert error_of(response) == (401, "bad_signature")


async def test_session_detail(beta: Beta) -> None:
    response = await beta.call("GET", "/federation/v1/sessions/detail?namespace=acme%3A1")
    assert response.status_code == 200
    assert response.json()["namespace"] == "acme:1"
    assert response.json()["messages"][0]["content"] == "hi"
    missing = await beta.call("GET", "/federation/v1/sessions/detail?namespace=nope")
    assert error_of(missing) == (404, "not_found")
    for target in ["/federation/v1/sessions/detail",
                   "/federation/v1/sessions/detail?namespace=a::b",
                   "/federation/v1/sessions?prefix=a::b"]:
        assert error_of(await beta.call("GET", target)) == (400, "bad_request")


async def test_unknown_route_and_method(beta: Beta) -> None:
    assert error_of(await beta.call("GET", "/federation/v1/nope")) == (404, "not_found")
    assert error_of(await beta.call("GET", "/federation/v1/relay")) == \
        (405, "method_not_allowed")


def test_verifier_must_be_for_the_host() -> None:
    with pytest.raises(ValueError, match="verifier is for 'gamma'"):
        build_federation_router(MemoryHost(), Verifier("gamma", SECRETS))


# -- PeerClient end to end -------------------------------------------------------------------


async def test_peer_client_against_the_real_routes(beta: Beta, http: httpx.AsyncClient) -> None:
    client = PeerClient("alpha", [Peer("beta", beta.url, SECRETS["alpha"])], http,
                        retry=RetrySettings(attempts=2, backoff_base_s=0.001))
    request = RelayRequest(txn_id="e2e", origin="alpha", hops=("alpha",),
                           namespace="acme:9", message="hello", agent="default",
                           metadata={"user": "u1"})
    response = await client.relay("beta", request)
    assert (response.message, response.agent, response.usage.total_tokens) == \
        ("echo: hello", "default", 3)
    assert beta.host.relays == [request]
    assert (await client.health("beta")).version == "1.2.3"
    assert [a.name for a in await client.agents("beta")] == ["default"]
    assert [s.namespace for s in await client.sessions("beta", "acme")] == ["acme:1", "acme:2"]
    detail = await client.session_detail("beta", "acme:2")
    assert detail.messages[0].role == "user"
    with pytest.raises(PeerRejected) as info:
        await client.session_detail("beta", "nope")
    assert (info.value.status, info.value.code) == (404, "not_found")
    looping = RelayRequest(txn_id="loop", origin="alpha", hops=("beta", "alpha"),
                           namespace="acme:9", message="x")
    with pytest.raises(PeerRejected) as info:
        await client.relay("beta", looping)
    assert (info.value.status, info.value.code) == (409, "loop_detected")
    assert encode(beta.host.relays) == encode([request])  # neither refusal reached the host
