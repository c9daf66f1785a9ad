"""Channel kinds by name: the built-ins plus the ``orrad.channels`` entry-point group.

A kind is a channel class with two class attributes: ``kind`` (the name used in
``kind:``) and ``config_type`` (its msgspec config Struct, a ``ChannelConfig`` subclass),
constructed as ``cls(config, context)``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Protocol

from orrad.channels.base import Channel, ChannelContext
from orrad.config import ChannelConfig

__all__ = ["CHANNEL_ENTRY_POINT_GROUP", "ChannelKind", "ChannelRegistry", "default_registry"]

log = logging.getLogger(__name__)

CHANNEL_ENTRY_POINT_GROUP = "orrad.channels"


class ChannelKind(Protocol):
    kind: str
    config_type: type[ChannelConfig]

    def __call__(self, config: ChannelConfig, context: ChannelContext) -> Channel: ...


class ChannelRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, ChannelKind] = {}

    def register(self, cls: ChannelKind) -> None:
        if not getattr(cls, "kind", "") or not isinstance(getattr(cls, "config_type", None), type):
            raise TypeError(f"{cls!r} needs class attributes 'kind' and 'config_type'")
        self._kinds[cls.kind] = cls

    def get(self, kind: str) -> ChannelKind | None:
        return self._kinds.get(kind)

    def config_types(self) -> dict[str, type[ChannelConfig]]:
        return {name: cls.config_type for name, cls in self._kinds.items()}

    def create(self, config: ChannelConfig, context: ChannelContext) -> Channel:
        cls = self._kinds[config.kind]
        return cls(config, context)

    def load_plugins(self) -> None:
        """Register third-party kinds; a broken plugin is logged and skipped."""
        for ep in entry_points(group=CHANNEL_ENTRY_POINT_GROUP):
            try:
                self.register(ep.load())
            except Exception as exc:
                log.error("channel plugin %s failed to load: %s", ep.name, exc)


def default_registry() -> ChannelRegistry:
    from orrad.channels.discord import DiscordChannel
    from orrad.channels.stdin import StdinChannel
    from orrad.channels.webhook import WebhookChannel

    registry = ChannelRegistry()
    registry.register(StdinChannel)
    registry.register(WebhookChannel)
    registry.register(DiscordChannel)
    registry.load_plugins()
    return registry
