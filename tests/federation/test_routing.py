"""Namespace ownership by whole-segment longest prefix, ``name@peer``, and the loop rule."""

from __future__ import annotations

import itertools

import pytest

from orrad.config.schema import FederationConfig, PeerConfig
from orrad.errors import InvalidNamespace
from orrad.federation.errors import LoopDetected, UnknownPeer, WireError
from orrad.federation.routing import (
    AgentRef,
    Route,
    RoutingTable,
    check_received_hops,
    hops_for_relay,
)
from orrad.model import Namespace


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable("alpha", {
        "beta": ["team:ops", "acme"],
        "gamma": ["team:ops:alice", "team"],
        "delta": [],
    })


@pytest.mark.parametrize(("namespace", "route"), [
    ("acme", Route("beta", "acme")),
    ("acme:x:y", Route("beta", "acme")),
    ("acmex", Route(None)),  # whole segments only
    ("team:ops", Route("beta", "team:ops")),
    ("team:ops:bob", Route("beta", "team:ops")),
    ("team:opsx", Route("gamma", "team")),
    ("team:ops:alice", Route("gamma", "team:ops:alice")),  # longest wins (T40)
    ("team:ops:alice:1", Route("gamma", "team:ops:alice")),
    ("team", Route("gamma", "team")),
    ("discord:1:2", Route(None)),  # unclaimed: this daemon
])
def test_longest_prefix_by_whole_segments(
    table: RoutingTable, namespace: str, route: Route
) -> None:
    assert table.route(namespace) == route
    assert table.route(Namespace.parse(namespace)) == route
    assert table.owner(namespace) == route.peer
    assert table.route(namespace).local == (route.peer is None)


def test_invalid_namespace_is_refused(table: RoutingTable) -> None:
    with pytest.raises(InvalidNamespace):
        table.route("a::b")


def test_no_peers_means_everything_is_local() -> None:
    assert RoutingTable.from_config("alpha", None).owner("acme") is None
    assert RoutingTable("alpha", {}).peers == frozenset()


def test_from_config() -> None:
    fed = FederationConfig(secret="s", peers=[
        PeerConfig(name="beta", url="http://b", namespaces=["acme"]),
        PeerConfig(name="delta", url="http://d"),
    ])
    table = RoutingTable.from_config("alpha", fed)
    assert table.owner("acme:1") == "beta"
    assert table.peers == {"beta", "delta"}


def test_two_peers_claiming_one_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="'acme' is declared by both peer 'beta' and peer "
                                         "'gamma'"):
        RoutingTable("alpha", {"beta": ["acme"], "gamma": ["acme"]})


@pytest.mark.parametrize(("agent", "ref"), [
    ("assistant", AgentRef("assistant")),
    ("helper@beta", AgentRef("helper", "beta")),
    ("helper@delta", AgentRef("helper", "delta")),  # a peer claiming no namespaces
    ("helper@alpha", AgentRef("helper")),  # this daemon
])
def test_agent_choices(table: RoutingTable, agent: str, ref: AgentRef) -> None:
    assert table.parse_agent(agent) == ref


@pytest.mark.parametrize("agent", ["helper@nowhere", "@beta", "helper@"])
def test_bad_remote_agents(table: RoutingTable, agent: str) -> None:
    with pytest.raises(UnknownPeer) as info:
        table.parse_agent(agent)
    assert (info.value.status, info.value.code) == (400, "unknown_agent")
    assert "known peers: beta, delta, gamma" in info.value.message


# -- the loop rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(("hops", "instance", "peer", "max_hops", "result"), [
    ((), "alpha", "beta", 4, ("alpha",)),  # from a channel: one hop
    (("alpha",), "beta", "gamma", 4, ("alpha", "beta")),
    (("a", "b", "c"), "d", "e", 4, ("a", "b", "c", "d")),  # the 4th relay: allowed
    (("a", "b", "c", "d"), "e", "f", 4, None),  # a 5th would exceed max_hops
    ((), "alpha", "beta", 1, ("alpha",)),
    (("alpha",), "beta", "gamma", 1, None),
    (("alpha",), "beta", "alpha", 4, None),  # back to a daemon already passed (T39)
    (("alpha", "beta"), "gamma", "alpha", 4, None),
    (("alpha", "beta"), "beta", "gamma", 4, None),  # this daemon already passed
    ((), "alpha", "alpha", 4, None),  # to itself
])
def test_hops_for_relay(
    hops: tuple[str, ...], instance: str, peer: str, max_hops: int,
    result: tuple[str, ...] | None,
) -> None:
    if result is None:
        with pytest.raises(LoopDetected) as info:
            hops_for_relay(hops, instance=instance, peer=peer, max_hops=max_hops)
        assert (info.value.status, info.value.code) == (409, "loop_detected")
    else:
        assert hops_for_relay(hops, instance=instance, peer=peer, max_hops=max_hops) == result


@pytest.mark.parametrize(("hops", "origin", "max_hops", "error"), [
    (("alpha",), "alpha", 4, None),
    (("a", "b", "c", "alpha"), "alpha", 4, None),
    (("a", "b", "c", "d", "alpha"), "alpha", 4, LoopDetected),  # more than max_hops
    (("beta", "alpha"), "alpha", 4, LoopDetected),  # this daemon (beta) already passed
    (("alpha", "gamma", "alpha"), "alpha", 4, LoopDetected),  # a daemon twice
    ((), "alpha", 4, WireError),  # hops must end with the sender
    (("gamma",), "alpha", 4, WireError),
])
def test_check_received_hops(
    hops: tuple[str, ...], origin: str, max_hops: int, error: type[Exception] | None
) -> None:
    if error is None:
        check_received_hops(hops, origin=origin, instance="beta", max_hops=max_hops)
    else:
        with pytest.raises(error):
            check_received_hops(hops, origin=origin, instance="beta", max_hops=max_hops)


def test_sender_and_receiver_agree_and_a_chain_stops_at_max_hops() -> None:
    # A chain d0 -> d1 -> ... where every daemon relays to the next: each relay that the
    # sender allows is accepted by the receiver, and the chain makes exactly max_hops calls.
    max_hops = 4
    daemons = [f"d{i}" for i in range(10)]
    hops: tuple[str, ...] = ()
    calls = 0
    for here, there in itertools.pairwise(daemons):
        try:
            hops = hops_for_relay(hops, instance=here, peer=there, max_hops=max_hops)
        except LoopDetected:
            break
        check_received_hops(hops, origin=here, instance=there, max_hops=max_hops)
        calls += 1
    assert calls == max_hops
