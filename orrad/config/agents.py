"""Whether an agent choice (``name`` or ``name@peer``) can be served, before anything is
stored: shared by every intake that refuses a bad choice with a 400 (webhook, API, and so
``orrad send --agent``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orrad.config.schema import FederationConfig
from orrad.errors import OrradError

__all__ = ["BadAgentChoice", "agent_choice_problem", "requested_agent"]


class BadAgentChoice(OrradError):
    """A request chose an agent that cannot be used (not a string, or unknown); intakes
    answer it with 400 ``unknown_agent`` and store nothing."""


def requested_agent(field: str | None, metadata: Mapping[str, Any],
                    problem: Callable[[str], str | None]) -> str | None:
    """The agent a request chooses: its ``agent`` field when not empty, else
    ``metadata["agent"]``; ``None`` when neither chooses one (the default runs).

    Args:
        field: the request's ``agent`` field.
        metadata: the request's metadata, as sent.
        problem: why a name cannot be used, or ``None`` (:func:`agent_choice_problem`
            bound to the daemon's live agents).

    Raises:
        BadAgentChoice: ``metadata["agent"]`` is not a string (``7``, ``["a"]``,
            ``{"a": 1}``, ``true``), or ``problem`` refuses the name.
    """
    choice: object = field if field else metadata.get("agent")
    if choice is None:
        return None
    if not isinstance(choice, str):
        raise BadAgentChoice(f"agent must be a string, not {_json_type(choice)}")
    why = problem(choice)
    if why is not None:
        raise BadAgentChoice(why)
    return choice


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


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
