"""``stdin``: one conversation on standard input and output.

Each non-empty input line is a user message in the configured namespace; each answer is
printed on standard output. End of input (Ctrl-D, a closed pipe) completes the channel:
``serve`` returns, ``receive`` returns ``None`` once the queued lines are taken.

On a terminal (standard input and output both are one) it is a chat: a banner on stderr
names the agent, lines are read with GNU readline (editing, and a history kept in
``<state_dir>/chat_history``), the next prompt comes once the answer is shown, a
"thinking…" indicator stands in while a run takes more than a second, and when input ends
while the daemon keeps running other channels, stderr says so. Whatever is printed on a
terminal is sanitised first (:func:`~orrad.channels.terminal.sanitise`): a reply cannot
move the cursor, clear the screen or set the window title. Into a pipe, replies go as
they are.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO, Any, ClassVar

import trio

from orrad.channels.base import BaseChannel, ChannelContext
from orrad.channels.terminal import (
    ERASE_LINE,
    HISTORY_FILE,
    LineEditor,
    banner,
    can_edit_lines,
    input_ended_notice,
    sanitise,
    thinking_text,
)
from orrad.config import ChannelConfig, StdinChannelConfig
from orrad.model import InboundMessage, Message, Namespace, OutboundError, OutboundMessage

__all__ = ["THINKING_AFTER_S", "StdinChannel"]

log = logging.getLogger(__name__)

THINKING_AFTER_S = 1.0  # a run slower than this shows the indicator (terminal only)


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
        errors: IO[str] | None = None,
        thinking_after_s: float = THINKING_AFTER_S,
    ) -> None:
        super().__init__(config, context)
        assert isinstance(config, StdinChannelConfig)
        self.namespace = Namespace.parse(config.namespace)
        self._agent = config.agent
        self._input = input if input is not None else sys.stdin.buffer
        self._fd = self._descriptor(self._input)
        self._pending = bytearray()  # read from the descriptor, not yet a whole line
        self._output = output if output is not None else sys.stdout
        self._errors = errors
        self._tty_output = self._isatty(self._output)
        self._interactive = self._isatty(self._input) and self._tty_output
        # Line editing needs the process's own terminal: input() uses readline only there.
        self._edit_lines = self._interactive and can_edit_lines(self._input, self._output)
        self._prompt = config.prompt
        self._thinking_after_s = thinking_after_s
        self._lines = 0
        self._answered = trio.Event()
        self._output_lock = trio.Lock()  # replies and the indicator, one at a time

    @staticmethod
    def _descriptor(stream: IO[bytes]) -> int | None:
        try:
            return stream.fileno()
        except (AttributeError, ValueError, OSError):
            return None

    @staticmethod
    def _isatty(stream: IO[bytes] | IO[str]) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError, OSError):
            return False

    # -- input ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        editor = self._line_editor() if self._edit_lines else None
        task_status.started()
        reading = False
        try:
            if self._interactive:
                self._note(banner(self._agent, self.namespace, self.context.daemon))
            while True:
                # A blocking read in a worker thread, abandoned on cancellation: a terminal
                # read cannot be interrupted and must not hold up shutdown.
                reading = True
                if editor is not None:
                    text = await trio.to_thread.run_sync(
                        editor.read_line, self._prompt, abandon_on_cancel=True)
                else:
                    self._show_prompt()
                    raw = await trio.to_thread.run_sync(self._read_raw_line,
                                                        abandon_on_cancel=True)
                    text = raw.decode("utf-8", errors="replace").rstrip("\r\n") if raw else None
                reading = False
                if text is None:
                    log.info("stdin channel %s reached end of input", self.name)
                    self._input_ended(editor)
                    return
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
            if reading and editor is not None:
                editor.restore_terminal(self._output)
            self.close_intake()

    def _read_raw_line(self) -> bytes:
        """One line, with its end (not at the end of input), or ``b""`` at end of input.

        A descriptor is read with ``os.read``, not through Python's buffered reader: a read
        abandoned when the daemon stops (its thread still waits for input) then holds no
        lock the interpreter needs to exit (a blocked ``sys.stdin.buffer.readline()`` makes
        the exit abort: "could not acquire lock for <_io.BufferedReader name='<stdin>'>").
        """
        if self._fd is None:
            return self._input.readline()
        while (end := self._pending.find(b"\n")) < 0:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                line = bytes(self._pending)
                self._pending.clear()
                return line
            self._pending += chunk
        line = bytes(self._pending[:end + 1])
        del self._pending[:end + 1]
        return line

    def _line_editor(self) -> LineEditor:
        state_dir = Path(self.context.daemon.state_dir)
        return LineEditor(state_dir / HISTORY_FILE)

    def _show_prompt(self) -> None:
        if self._interactive and self._prompt:
            self._output.write(self._prompt)
            self._output.flush()

    def _note(self, line: str) -> None:
        """A line about the chat (not part of it) on stderr."""
        stream = self._errors if self._errors is not None else sys.stderr
        try:
            stream.write(sanitise(line) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            log.debug("could not write to stderr: %s", exc)

    def _input_ended(self, editor: LineEditor | None) -> None:
        if editor is not None:
            # Ctrl-D leaves the cursor after the prompt; what follows starts a line.
            self._output.write("\n")
            self._output.flush()
        keeps_running = self.context.keeps_running
        if self._interactive and keeps_running is not None and keeps_running():
            self._note(input_ended_notice())

    # -- output ---------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self._tty_output:
            text = sanitise(text)
        self._output.write(text + "\n")
        self._output.flush()

    def _write_raw(self, text: str) -> None:
        self._output.write(text)
        self._output.flush()

    async def _print(self, text: str) -> None:
        # In a worker thread: a reader that stops reading (a full pipe) must block only
        # this reply, never the event loop.
        async with self._output_lock:
            await trio.to_thread.run_sync(self._write, text)

    async def send(self, response: OutboundMessage) -> None:
        try:
            await self._print(response.message.content)
        finally:
            self._answered.set()

    async def send_error(self, error: OutboundError) -> None:
        try:
            await self._print(f"error: {error.error}")
        finally:
            self._answered.set()

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return self._thinking()

    @asynccontextmanager
    async def _thinking(self) -> AsyncIterator[None]:
        """On a terminal: "thinking…" once the run takes longer than the threshold, erased
        before the answer is printed (the router sends it after this context exits)."""
        if not self._tty_output:
            yield
            return
        shown = False

        async def show() -> None:
            nonlocal shown
            await trio.sleep(self._thinking_after_s)
            async with self._output_lock:
                shown = True
                await trio.to_thread.run_sync(self._write_raw, thinking_text(self._output))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(show)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if shown:
                with trio.CancelScope(shield=True):
                    async with self._output_lock:
                        await trio.to_thread.run_sync(self._write_raw, ERASE_LINE)
