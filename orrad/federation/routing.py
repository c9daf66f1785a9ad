"""Who owns a namespace, ``name@peer`` agents, and the loop rule (CONTRACT §6).

Ownership: each peer declares namespace prefixes. A namespace belongs to the peer whose
prefix is the longest match *by whole segments* (``acme`` matches ``acme`` and
``acme:x``, never ``acmex``); a namespace no peer claims belongs to this daemon. Two peers
may not declare the same prefix (the configuration check refuses it), so the owner is
always unique.

Loops: ``hops`` lists every daemon a message passed, the first one first; the daemon that
sends a relay appends itself, so ``hops[-1]`` is always the relay's ``origin``. With
``H`` = the hops of the message as it reached this daemon (``()`` for a message received
from a channel) and ``max_hops`` = ``federation.max_hops``:

- **sending** (:func:`hops_for_relay`): relaying to peer ``P`` is allowed iff this daemon
  is not in ``H``, ``P`` is not in ``H``, ``P`` is not this daemon, and
  ``len(H) + 1 <= max_hops``; the relay then carries ``H + (this daemon,)``.
- **receiving** (:func:`check_received_hops`): a relay with hops ``R`` from ``origin`` is
  accepted iff ``R`` is non-empty, ends with ``origin``, has no daemon twice, does not
  contain this daemon, and ``len(R) <= max_hops``.

So ``max_hops`` bounds the number of relay calls a message can make (A→B is one), a chain
never visits a daemon twice, and both sides agree: whatever a well-behaved sender allows,
its receiver accepts. Refusals are :class:`~orrad.federation.errors.LoopDetected` (409
``loop_detected``, never retried); a malformed ``hops`` (not ending with ``origin``) is a
400 :class:`~orrad.federation.errors.WireError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from orrad.config.schema import FederationConfig
from orrad.federation.errors import LoopDetected, UnknownPeer, WireError
from orrad.model import Namespace

__all__ = [
    "AgentRef",
    "Route",
    "RoutingTable",
    "check_received_hops",
    "hops_for_relay",
]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a namespace goes: ``peer`` is ``None`` for this daemon; ``prefix`` is the
    claim that matched (``None`` when no peer claims the namespace)."""

    peer: str | None
    prefix: str | None = None

    @property
    def local(self) -> bool:
        return self.peer is None


@dataclass(frozen=True, slots=True)
class AgentRef:
    """An agent choice: ``name`` on peer ``peer`` (``None``: this daemon)."""

    name: str
    peer: str | None = None


class RoutingTable:
    """The namespace prefixes each peer owns, and the set of known peers.

    Args:
        instance: this daemon's instance name.
        claims: peer name -> the namespace prefixes it declares (possibly none; such a
            peer is still a target for ``name@peer``).

    Raises:
        ValueError: a prefix is not a valid namespace, or two peers declare the same one
            (the configuration check reports both as errors first).
    """

    def __init__(self, instance: str, claims: Mapping[str, Iterable[str]]) -> None:
        self.instance = instance
        self.peers = frozenset(claims)
        self._owner: dict[tuple[str, ...], str] = {}
        for peer, prefixes in claims.items():
            for prefix in prefixes:
                segments = Namespace.parse(prefix).segments
                other = self._owner.setdefault(segments, peer)
                if other != peer:
                    raise ValueError(f"namespace prefix {prefix!r} is declared by both peer "
                                     f"{other!r} and peer {peer!r}")
        self._longest = max((len(s) for s in self._owner), default=0)

    @classmethod
    def from_config(cls, instance: str, federation: FederationConfig | None) -> RoutingTable:
        """The table of a loaded daemon configuration (no federation: everything local)."""
        peers = federation.peers if federation is not None else []
        return cls(instance, {p.name: p.namespaces for p in peers})

    def route(self, namespace: Namespace | str) -> Route:
        """The owner of ``namespace`` (a key is parsed first).

        Raises:
            InvalidNamespace: ``namespace`` is a key that breaks CONTRACT §3.
        """
        ns = Namespace.parse(namespace) if isinstance(namespace, str) else namespace
        segments = ns.segments
        for n in range(min(len(segments), self._longest), 0, -1):
            peer = self._owner.get(segments[:n])
            if peer is not None:
                return Route(peer, ":".join(segments[:n]))
        return Route(None)

    def owner(self, namespace: Namespace | str) -> str | None:
        """The peer that owns ``namespace``, or ``None`` when this daemon does."""
        return self.route(namespace).peer

    def parse_agent(self, agent: str) -> AgentRef:
        """Split an agent choice: ``name@peer`` is agent ``name`` on ``peer``.

        ``name@<this instance>`` is the local agent ``name``; a plain ``name`` is local.
        Local names are not checked here (that is the runtime's job).

        Raises:
            UnknownPeer: ``peer`` is not configured, or either side of ``@`` is empty.
        """
        name, at, peer = agent.rpartition("@")
        if not at:
            return AgentRef(agent)
        if not name or not peer:
            raise UnknownPeer(agent, peer, sorted(self.peers))
        if peer == self.instance:
            return AgentRef(name)
        if peer not in self.peers:
            raise UnknownPeer(agent, peer, sorted(self.peers))
        return AgentRef(name, peer)


def hops_for_relay(
    hops: Sequence[str], *, instance: str, peer: str, max_hops: int
) -> tuple[str, ...]:
    """The ``hops`` a relay from ``instance`` to ``peer`` carries, if it is allowed.

    Args:
        hops: the hops of the message as it reached ``instance`` (``()`` when it came
            from a channel).

    Returns:
        ``(*hops, instance)``.

    Raises:
        LoopDetected: ``instance`` or ``peer`` is already in ``hops``, ``peer`` is
            ``instance``, or ``len(hops) + 1 > max_hops`` (see the module docstring).
    """
    path = " -> ".join((*hops, instance, peer))
    if peer == instance or peer in hops or instance in hops:
        raise LoopDetected(f"relay would pass a daemon twice: {path}")
    if len(hops) + 1 > max_hops:
        raise LoopDetected(f"relay would exceed max_hops ({max_hops}): {path}")
    return (*hops, instance)


def check_received_hops(
    hops: Sequence[str], *, origin: str, instance: str, max_hops: int
) -> None:
    """Accept or refuse a relay received by ``instance`` from ``origin``.

    Raises:
        WireError: ``hops`` is empty or does not end with ``origin``.
        LoopDetected: ``hops`` names a daemon twice, contains ``instance``, or is longer
            than ``max_hops`` (see the module docstring).
    """
    if not hops or hops[-1] != origin:
        raise WireError(f"hops must end with the origin {origin!r}")
    path = " -> ".join((*hops, instance))
    if instance in hops or len(set(hops)) != len(hops):
        raise LoopDetected(f"message would pass a daemon twice: {path}")
    if len(hops) > max_hops:
        raise LoopDetected(f"message exceeded max_hops ({max_hops}): {path}")
