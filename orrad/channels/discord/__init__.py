"""The ``discord`` channel kind: a Discord bot over the gateway (trio-websocket) and REST
(httpx). See :mod:`orrad.channels.discord.channel` for the delivery guarantees and
:mod:`orrad.channels.discord.gateway` for the connection lifecycle."""

from orrad.channels.discord.channel import DiscordChannel, DiscordOptions

__all__ = ["DiscordChannel", "DiscordOptions"]
