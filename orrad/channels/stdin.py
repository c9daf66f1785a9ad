"""``stdin``: one conversation on standard input and output.

Each non-empty input line is a user message in the configured namespace; each answer is
printed on standard output. End of input (Ctrl-D, a closed pipe) completes the channel:
``serve`` returns, ``receive`` returns ``None`` once the queued lines are taken.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, ClassVar

import trio

from orrad.channels.base import BaseChannel, ChannelContext
from orrad.config import ChannelConfig, StdinChannelConfig
from orrad.model import InboundMessage, Message, Namespace, OutboundError, OutboundMessage

__all__ = ["StdinChannel"]

log = logging.getLogger(__name__)


class StdinChannel(BaseChannel):
    kind: ClassVar[str] = "stdin"
    config_type: ClassVar[type[ChannelConfig]] = StdinChannelConfig

    def __init__(
        self,
        config: ChannelConfig,
        context: ChannelContext,
        *,
        input: IO[bytes] | None = None,
        output: IO[str] | None = None,
    ) -> None:
        super().__init__(config, context)
        assert isinstance(config, StdinChannelConfig)
        self.namespace = Namespace.parse(config.namespace)
        self._input = input if input is not None else sys.stdin.buffer
        self._output = output if output is not None else sys.stdout
        self._interactive = self._isatty(self._input) and self._isatty(self._output)
        self._prompt = config.prompt
        self._lines = 0
        self._answered = trio.Event()

    @staticmethod
    def _isatty(stream: IO[bytes] | IO[str]) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError, OSError):
            return False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self._show_prompt()
                # A blocking read in a worker thread; abandoned on cancellation because a
                # terminal read cannot be interrupted and must not hold up shutdown.
                raw = await trio.to_thread.run_sync(self._input.readline, abandon_on_cancel=True)
                if not raw:
                    log.info("stdin channel %s reached end of input", self.name)
                    return
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not text.strip():
                    continue
                self._lines += 1
                self._answered = trio.Event()
                await self.deliver(
                    InboundMessage(
                        self.namespace, Message.user(text),
                        {"channel": self.name, "line": self._lines},
                    )
                )
                if self._interactive:
                    # A conversation on a terminal: the next prompt comes after the answer.
                    await self._answered.wait()
        finally:
            self.close_intake()

    def _show_prompt(self) -> None:
        if self._interactive and self._prompt:
            self._output.write(self._prompt)
            self._output.flush()

    def _write(self, text: str) -> None:
        self._output.write(text + "\n")
        self._output.flush()

    async def send(self, response: OutboundMessage) -> None:
        # In a worker thread: a reader that stops reading (a full pipe) must block only
        # this reply, never the event loop.
        try:
            await trio.to_thread.run_sync(self._write, response.message.content)
        finally:
            self._answered.set()

    async def send_error(self, error: OutboundError) -> None:
        try:
            await trio.to_thread.run_sync(self._write, f"error: {error.error}")
        finally:
            self._answered.set()
