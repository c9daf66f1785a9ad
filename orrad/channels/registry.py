"""Channel kinds by name: the built-ins plus the ``orrad.channels`` entry-point group.

A kind is a channel class with two class attributes: ``kind`` (the name used in
``kind:``) and ``config_type`` (its msgspec config Struct, a ``ChannelConfig`` subclass),
constructed as ``cls(config, context)``.

The built-in kinds are registered by name and config type, and their modules imported when
the first channel of the kind is made: the Discord kind alone brings in trio-websocket and
wsproto, ~90 ms of every start, also of daemons without a Discord channel.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from orrad.channels.base import Channel, ChannelContext
from orrad.config import (
    ChannelConfig,
    DiscordChannelConfig,
    StdinChannelConfig,
    WebhookChannelConfig,
)

__all__ = ["BUILTIN_KINDS", "CHANNEL_ENTRY_POINT_GROUP", "BuiltinKind", "ChannelKind",
           "ChannelRegistry", "default_registry"]

log = logging.getLogger(__name__)

CHANNEL_ENTRY_POINT_GROUP = "orrad.channels"


class ChannelKind(Protocol):
    kind: str
    config_type: type[ChannelConfig]

    def __call__(self, config: ChannelConfig, context: ChannelContext) -> Channel: ...


@dataclass(slots=True)
class BuiltinKind:
    """A kind whose class ``module.name`` is imported when its first channel is made."""

    kind: str
    config_type: type[ChannelConfig]
    module: str
    name: str

    def load(self) -> ChannelKind:
        """The channel class (imported now if it was not yet)."""
        cls: ChannelKind = getattr(importlib.import_module(self.module), self.name)
        return cls

    def __call__(self, config: ChannelConfig, context: ChannelContext) -> Channel:
        return self.load()(config, context)


BUILTIN_KINDS = (
    BuiltinKind("stdin", StdinChannelConfig, "orrad.channels.stdin", "StdinChannel"),
    BuiltinKind("webhook", WebhookChannelConfig, "orrad.channels.webhook", "WebhookChannel"),
    BuiltinKind("discord", DiscordChannelConfig, "orrad.channels.discord", "DiscordChannel"),
)


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
    """The built-in kinds (imported on first use) and the installed plugins' kinds."""
    registry = ChannelRegistry()
    for kind in BUILTIN_KINDS:
        registry.register(kind)
    registry.load_plugins()
    return registry
