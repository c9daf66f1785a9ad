"""A third-party channel kind, installed in tests through the ``orrad.channels`` entry point.

It stays connected until cancelled and never receives anything; ``fail_start: true`` makes
every start fail, so tests can watch the supervisor; ``start_delay`` (seconds) makes a
start take that long.
"""

from __future__ import annotations

from typing import ClassVar

import trio

from orrad import BaseChannel, OutboundError, OutboundMessage
from orrad.config import ChannelConfig


class TickerConfig(ChannelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    label: str = "tick"
    fail_start: bool = False
    start_delay: float = 0.0


class TickerChannel(BaseChannel):
    kind: ClassVar[str] = "ticker"
    config_type: ClassVar[type[ChannelConfig]] = TickerConfig

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert isinstance(self.config, TickerConfig)
        if self.config.fail_start:
            raise ConnectionRefusedError("ticker cannot connect")
        await trio.sleep(self.config.start_delay)
        task_status.started()
        await trio.sleep_forever()

    async def send(self, response: OutboundMessage) -> None:
        pass

    async def send_error(self, error: OutboundError) -> None:
        pass
