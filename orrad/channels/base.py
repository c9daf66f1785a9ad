"""The channel protocol (orra's vocabulary, with a trio lifecycle) and the seed's adapter.

A channel receives messages from some platform and sends replies back. ``serve`` owns the
connection: it calls ``task_status.started()`` once connected and returns when the channel
has finished for good (end of input); it raises when the connection fails, and the
supervisor restarts it. ``receive`` returns ``None`` once the channel is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import trio

from orrad.delivery import ReplyTarget, no_typing
from orrad.errors import ChannelClosed
from orrad.metrics import Metrics
from orrad.model import InboundMessage, OutboundError, OutboundMessage, Receipt

if TYPE_CHECKING:
    from orrad.channels.outbound import OnDemandClient
    from orrad.config import ChannelConfig, DaemonConfig
    from orrad.state.db import Database

__all__ = [
    "BaseChannel",
    "Channel",
    "ChannelContext",
    "ReplyTarget",
    "no_typing",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Channel(ReplyTarget, Protocol):
    """A source of inbound messages and a sink for their answers.

    ``send``/``send_error`` raise :class:`~orrad.errors.ChannelError` when delivery fails.
    ``start_typing`` returns an async context manager that shows a typing indicator while
    the agent runs (a no-op by default). A channel may also define
    ``async def aclose(self, *, removed: bool) -> None``: a graceful stop (refuse new input,
    let in-flight work finish) that the supervisor awaits, within the grace period, before
    cancelling ``serve``; ``removed`` is true when the channel's file was removed, false on
    shutdown or restart.
    """

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ...

    async def receive(self) -> InboundMessage | None: ...


@dataclass
class ChannelContext:
    """What the daemon hands a channel it creates.

    A channel that keeps its own connection alive (reconnecting inside ``serve``) calls
    :meth:`report_connection` so ``/v1/status`` tells the truth: a channel whose connection
    is down is shown in ``backoff`` with the reason, not ``running``.
    """

    name: str
    daemon: DaemonConfig
    db: Database | None = None
    instance: str = "orrad"
    connection_listener: Callable[[bool, str | None], None] | None = None
    file: str | None = None  # the channel file, for messages that tell the operator what to fix
    # The agents the daemon runs now (after the latest reload), by name.
    agents: Callable[[], Sequence[str]] | None = field(default=None, repr=False)
    # An HTTP client owned by the daemon (made on first use), for requests that may
    # outlive a generation (webhook callbacks delivered while the channel restarts or the
    # daemon drains).
    http: OnDemandClient | None = field(default=None, repr=False)
    # Whether the daemon goes on running once this channel has finished (another channel
    # can still receive); ``None`` when the daemon does not say.
    keeps_running: Callable[[], bool] | None = field(default=None, repr=False)
    # The daemon's instruments (``/metrics``); a private set when the daemon gives none.
    metrics: Metrics = field(default_factory=Metrics, repr=False)

    def agent_names(self) -> list[str]:
        """The live agent names (the daemon file's, when no live view was handed in)."""
        if self.agents is not None:
            return list(self.agents())
        return list(self.daemon.agents)

    def report_connection(self, up: bool, reason: str | None = None) -> None:
        if self.connection_listener is not None:
            self.connection_listener(up, reason)


class BaseChannel:
    """Convenience base for channel classes: an inbound queue and no-op typing.

    Subclasses set ``kind`` and ``config_type`` (for the registry), push messages with
    :meth:`deliver`, and close intake with :meth:`close_intake`.
    """

    kind: ClassVar[str] = ""
    config_type: ClassVar[type[ChannelConfig]]

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        self.config = config
        self.context = context
        self.name = context.name
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[InboundMessage](0)
        self._take_now: Callable[[InboundMessage], bool] | None = None
        # Messages handed to the queue and not yet returned by receive(): while there are
        # any, the next one queues too, so none overtakes an earlier one.
        self._queued = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def deliver(self, inbound: InboundMessage) -> None:
        """Hand ``inbound`` to whoever calls :meth:`receive` (waits until taken), or to
        the taker given to :meth:`take_directly` when it has room now."""
        take_now = self._take_now
        if take_now is not None and not self._queued and take_now(inbound):
            return
        self._queued += 1
        try:
            await self._inbox_send.send(inbound)
        except BaseException:
            self._queued -= 1  # not taken
            raise

    def take_directly(self, take_now: Callable[[InboundMessage], bool] | None) -> None:
        """Have :meth:`deliver` call ``take_now(inbound)`` first, in the delivering task:
        it takes the message and returns True, or returns False (no room) and the message
        goes to :meth:`receive` as usual (so do all while one still waits there, keeping
        their order). ``None`` stops it; so does :meth:`close_intake`. (The router's pump:
        no task switch between a channel and the pipeline; the pump takes what
        :meth:`receive` returns without yielding first.)"""
        self._take_now = take_now

    async def accept(self, inbound: InboundMessage) -> Receipt:
        """Hand over ``inbound`` (which has a ``delivery_id``) and wait until the pipeline
        has recorded it; acknowledge the message to its sender only when the returned
        receipt has no ``error``. Raises :class:`~orrad.errors.ChannelClosed` when intake
        is closed (the message was not taken)."""
        done = trio.Event()
        receipts: list[Receipt] = []

        def on_recorded(receipt: Receipt) -> None:
            receipts.append(receipt)
            done.set()

        inbound.on_recorded = on_recorded
        await self.hand_over(inbound)
        await done.wait()
        return receipts[0]

    async def hand_over(self, inbound: InboundMessage) -> None:
        """:meth:`deliver`, raising :class:`~orrad.errors.ChannelClosed` when intake is
        closed (the message was not taken)."""
        try:
            await self.deliver(inbound)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ChannelClosed from None

    def close_intake(self) -> None:
        """No more messages: :meth:`receive` returns ``None`` once the queue is empty."""
        self._take_now = None
        self._inbox_send.close()

    async def receive(self) -> InboundMessage | None:
        try:
            inbound = await self._inbox_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None
        self._queued -= 1
        return inbound

    async def send(self, response: OutboundMessage) -> None:
        raise NotImplementedError

    async def send_error(self, error: OutboundError) -> None:
        raise NotImplementedError

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return no_typing()
