"""Per-namespace tool policies: the most specific namespace prefix wins, with no merging."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orrad.model import Namespace
from orrad.runtime.provider import ToolDefinition

__all__ = ["PolicyRegistry", "ToolPolicy"]


@dataclass(frozen=True)
class ToolPolicy:
    """Which tools may run: everything, nothing, only ``allow``, or all but ``deny``."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    @classmethod
    def allow_all(cls) -> ToolPolicy:
        return cls()

    @classmethod
    def deny_all(cls) -> ToolPolicy:
        return cls(allow=frozenset())

    @classmethod
    def allow_list(cls, names: Iterable[str]) -> ToolPolicy:
        return cls(allow=frozenset(names))

    @classmethod
    def deny_list(cls, names: Iterable[str]) -> ToolPolicy:
        return cls(deny=frozenset(names))

    def permits(self, name: str) -> bool:
        if name in self.deny:
            return False
        return self.allow is None or name in self.allow

    def filter(self, definitions: Iterable[ToolDefinition]) -> list[ToolDefinition]:
        return [d for d in definitions if self.permits(d.name)]


class PolicyRegistry:
    """Policies keyed by namespace; :meth:`resolve` walks from the namespace to its root."""

    def __init__(self, default: ToolPolicy | None = None) -> None:
        self.default = default or ToolPolicy.allow_all()
        self._policies: dict[Namespace, ToolPolicy] = {}

    def set_policy(self, namespace: Namespace, policy: ToolPolicy) -> None:
        self._policies[namespace] = policy

    def remove_policy(self, namespace: Namespace) -> bool:
        return self._policies.pop(namespace, None) is not None

    def resolve(self, namespace: Namespace) -> ToolPolicy:
        if not self._policies:
            return self.default
        policy = self._policies.get(namespace)
        if policy is not None:
            return policy
        for ancestor in namespace.ancestors():
            policy = self._policies.get(ancestor)
            if policy is not None:
                return policy
        return self.default
