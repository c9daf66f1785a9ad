"""The seed's receive → run → respond loop (CONTRACT §9 ``ChannelAdapter``), for embedders.

It sits beside the router, not in the channel layer, because it runs agents itself. The
daemon does not use it: the :class:`~orrad.router.Router` records every message, runs
namespaces concurrently and delivers through the live channel.
"""

from __future__ import annotations

import logging

from orrad.channels.base import Channel
from orrad.delivery import describe_error, error_code
from orrad.errors import ChannelError, OrradError
from orrad.model import OutboundError, OutboundMessage
from orrad.runtime.loop import Runtime

__all__ = ["ChannelAdapter"]

log = logging.getLogger(__name__)


class ChannelAdapter:
    """One channel, one runtime, strictly one message at a time."""

    @staticmethod
    async def run(channel: Channel, runtime: Runtime) -> None:
        """Return when ``channel.receive()`` returns ``None``.

        A runtime error becomes ``send_error``; a failed send is logged and the loop goes on.
        """
        while (inbound := await channel.receive()) is not None:
            async with channel.start_typing(inbound.metadata):
                try:
                    result = await runtime.run(inbound.namespace, inbound.message)
                except Exception as exc:
                    if not isinstance(exc, OrradError):
                        log.exception("agent run crashed in %s", inbound.namespace)
                    reply: OutboundMessage | OutboundError = OutboundError(
                        inbound.namespace, describe_error(exc), inbound.metadata,
                        code=error_code(exc))
                else:
                    reply = OutboundMessage(
                        inbound.namespace, result.final_message, result.summary(),
                        inbound.metadata)
                try:
                    if isinstance(reply, OutboundMessage):
                        await channel.send(reply)
                    else:
                        await channel.send_error(reply)
                except ChannelError as exc:
                    log.warning("channel send failed: %s", exc)
