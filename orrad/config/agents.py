"""Whether an agent choice (``name`` or ``name@peer``) can be served, before anything is
stored: shared by every intake that refuses a bad choice with a 400 (webhook, API)."""

from __future__ import annotations

from collections.abc import Iterable

from orrad.config.schema import FederationConfig

__all__ = ["agent_choice_problem"]


def agent_choice_problem(name: str, agents: Iterable[str], *, instance: str,
                         federation: FederationConfig | None) -> str | None:
    """Why ``name`` cannot be used, or ``None``. ``agents`` are this daemon's (names are
    case-insensitive); ``name@peer`` needs a configured peer (the peer checks its own
    agents), and ``name@<instance>`` is the local ``name``."""
    known = sorted(agents)
    agent, at, peer = name.rpartition("@")
    if at and federation is not None:
        peers = {p.name for p in federation.peers}
        if agent and peer in peers:
            return None
        if not (agent and peer == instance):
            return (f"unknown peer {peer!r} in agent {name!r}; known peers: "
                    f"{', '.join(sorted(peers))}")
        name = agent
    if name.lower() in {k.lower() for k in known}:
        return None
    return f"unknown agent {name!r}; known agents: {', '.join(known)}"
