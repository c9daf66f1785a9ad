"""``orrad run`` on a real pseudo-terminal: line editing, history, the banner, sanitised
replies, the thinking indicator, the end-of-input notice, and signals while a line is being
typed (the terminal is given back as it was)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import termios
from pathlib import Path

import trio

from tests.daemon_process import free_port
from tests.fakes.llm import FakeOpenAI

UP, LEFT = b"\x1b[A", b"\x1b[D"
PROMPT = b"> "
BANNER = 'orrad: chatting with agent "default" (echo) — Ctrl-D to quit'.encode()

# The child makes the pty its controlling terminal (so Ctrl-C is a SIGINT), then becomes
# the real console script.
_LAUNCH = ("import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
           "os.execv(sys.argv[1], sys.argv[1:])")


def _orrad_command() -> list[str]:
    script = Path(sys.executable).parent / "orrad"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orrad"]


class TerminalDaemon:
    """``orrad run`` with a pty as its stdin, stdout and stderr; the test types on the
    master side and reads what the terminal would show."""

    def __init__(self, root: Path, *, extra_config: str = "",
                 channels: dict[str, str] | None = None) -> None:
        self.root = root
        (root / "channels.d").mkdir(parents=True, exist_ok=True)
        for name, text in (channels or {"stdin.yaml": "kind: stdin\n"}).items():
            (root / "channels.d" / name).write_text(text)
        self.config = root / "orrad.yaml"
        self.config.write_text(f"instance: test\nstate_dir: state\n"
                               f"api:\n  listen: 127.0.0.1:{free_port()}\n{extra_config}")
        self.history = root / "state" / "chat_history"
        self.screen = b""
        self._seen = 0
        self.process: trio.Process | None = None

    async def start(self) -> None:
        self.master, self.slave = os.openpty()
        self.initial_modes = self.local_modes()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ORRAD_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
        env.update(TERM="xterm", INPUTRC="/dev/null", LC_ALL="C.UTF-8", COLUMNS="200")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _LAUNCH, *_orrad_command(), "run", "-c", str(self.config)],
            stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env, cwd=self.root)
        self.output = trio.lowlevel.FdStream(os.dup(self.master))

    async def expect(self, needle: bytes, timeout: float = 10) -> bytes:
        """Read until ``needle`` appears after what earlier calls consumed; returns what
        came before it."""
        with trio.fail_after(timeout):
            while (at := self.screen.find(needle, self._seen)) < 0:
                try:
                    chunk = await self.output.receive_some(4096)
                except OSError:  # EIO: every slave descriptor is closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {needle!r}: {self.screen!r}")
                self.screen += chunk
        before = self.screen[self._seen:at]
        self._seen = at + len(needle)
        return before

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    async def wait(self, timeout: float = 10) -> int:
        assert self.process is not None
        with trio.fail_after(timeout):
            return await self.process.wait()

    def local_modes(self) -> int:
        return int(termios.tcgetattr(self.slave)[3])

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.output.aclose()
        os.close(self.master)
        os.close(self.slave)


def _history(root: Path) -> list[str]:
    result = subprocess.run(
        [*_orrad_command(), "history", "-c", str(root / "orrad.yaml"), "cli:local"],
        capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.splitlines()


async def test_line_editing_history_and_banner(tmp_path: Path) -> None:
    tty = TerminalDaemon(tmp_path)
    await tty.start()
    try:
        await tty.expect(BANNER)
        await tty.expect(PROMPT)
        tty.type(b"hel" + LEFT + b"X\r")  # the cursor moves; the arrow is not text
        await tty.expect(b"echo: heXl\r\n")
        await tty.expect(PROMPT)
        tty.type(UP + b"!\r")  # Up recalls the previous line, which can then be edited
        await tty.expect(b"echo: heXl!\r\n")
        await tty.expect(PROMPT)
        tty.type(b"\x04")  # Ctrl-D: end of input; the only channel, so the daemon exits
        assert await tty.wait() == 0
    finally:
        await tty.close()
    assert b"\x1b[D" not in tty.screen.split(b"echo: heXl")[1]
    assert _history(tmp_path) == [
        "user: heXl", "assistant: echo: heXl", "user: heXl!", "assistant: echo: heXl!"]
    assert tty.history.read_text().splitlines() == ["heXl", "heXl!"]
    assert stat.S_IMODE(tty.history.stat().st_mode) == 0o600

    # The history outlives the process: a new chat recalls the older lines.
    again = TerminalDaemon(tmp_path)
    await again.start()
    try:
        await again.expect(PROMPT)
        again.type(UP + UP + b"\r")
        await again.expect(b"echo: heXl\r\n")
        await again.expect(PROMPT)
        again.type(b"\x04")
        assert await again.wait() == 0
    finally:
        await again.close()


async def test_escape_sequences_in_a_reply_never_reach_the_terminal(tmp_path: Path) -> None:
    async with FakeOpenAI() as llm:
        llm.reply_text("\x1b[2J\x1b]0;pwned\x07safe\x1b[31m text\x07\x9b2J end")
        tty = TerminalDaemon(tmp_path, extra_config=(
            f"providers:\n  fake:\n    kind: openai\n    base_url: {llm.base_url}\n"
            "    api_key: k\n    model: m\nagents:\n  default:\n    provider: fake\n"))
        await tty.start()
        try:
            await tty.expect(b'agent "default" (fake, model m)')
            await tty.expect(PROMPT)
            tty.type(b"hi\r")
            shown = await tty.expect(b" end\r\n")
            await tty.expect(PROMPT)
            tty.type(b"\x04")
            assert await tty.wait() == 0
        finally:
            await tty.close()
    reply = shown.split(b"hi\r\n", 1)[1]
    assert reply == b"safe text\\x07"
    assert b"pwned" not in tty.screen and b"\x9b" not in tty.screen


async def test_thinking_indicator_while_a_run_is_slow(tmp_path: Path) -> None:
    async with FakeOpenAI() as llm:
        llm.reply_text("slow answer", delay_s=1.4)  # the indicator comes after 1 s
        tty = TerminalDaemon(tmp_path, extra_config=(
            f"providers:\n  fake:\n    kind: openai\n    base_url: {llm.base_url}\n"
            "    api_key: k\n    model: m\nagents:\n  default:\n    provider: fake\n"))
        await tty.start()
        try:
            await tty.expect(PROMPT)
            tty.type(b"think\r")
            await tty.expect(b"thinking\xe2\x80\xa6")
            # erased (carriage return, clear line) right before the answer
            assert await tty.expect(b"slow answer\r\n") == b"\r\x1b[K"
            await tty.expect(PROMPT)
            tty.type(b"\x04")
            assert await tty.wait() == 0
        finally:
            await tty.close()


async def test_end_of_input_while_another_channel_runs_says_so(tmp_path: Path) -> None:
    hook = f"kind: webhook\nlisten: 127.0.0.1:{free_port()}\n"
    tty = TerminalDaemon(tmp_path, channels={"stdin.yaml": "kind: stdin\n",
                                             "hooks.yaml": hook})
    await tty.start()
    try:
        await tty.expect(PROMPT)
        tty.type(b"\x04")
        await tty.expect(b"orrad: input ended; the daemon keeps running its other channels "
                         b"(Ctrl-C or SIGTERM to stop)\r\n")
        await trio.sleep(0.3)
        assert tty.process is not None and tty.process.returncode is None  # still running
        tty.process.send_signal(signal.SIGTERM)
        assert await tty.wait() == 0
    finally:
        await tty.close()


async def test_signals_stop_the_daemon_while_a_line_is_typed(tmp_path: Path) -> None:
    for stop in ("SIGTERM", "Ctrl-C"):
        tty = TerminalDaemon(tmp_path / stop)
        await tty.start()
        try:
            await tty.expect(PROMPT)
            tty.type(b"half a li")
            await tty.expect(b"half a li")  # readline echoed it: the terminal is in raw mode
            assert not tty.local_modes() & termios.ICANON
            with trio.fail_after(5):  # promptly, though a thread still waits for input
                if stop == "SIGTERM":
                    assert tty.process is not None
                    tty.process.send_signal(signal.SIGTERM)
                else:
                    tty.type(b"\x03")
                assert await tty.wait() == 0
            modes = tty.local_modes()
            assert modes & termios.ICANON and modes & termios.ECHO  # given back cooked
            assert modes == tty.initial_modes
        finally:
            await tty.close()
