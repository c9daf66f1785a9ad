"""The stdin channel's terminal helpers and its output, in process: sanitising, the
banner, the "thinking…" indicator, the history file; what a pipe gets is unchanged."""

from __future__ import annotations

import io
import os
import stat
import time
from pathlib import Path

import msgspec
import pytest
import trio
from trio.testing import MockClock

from orrad import MemorySessionStore, Runtime
from orrad.channels.base import ChannelContext
from orrad.channels.stdin import StdinChannel
from orrad.channels.terminal import ERASE_LINE, LineEditor, banner, sanitise
from orrad.config import DaemonConfig, StdinChannelConfig
from orrad.model import Message, Namespace, OutboundError, OutboundMessage
from orrad.router import AgentSet, Router
from orrad.supervisor import ChannelManager
from tests.scripted import ScriptedProvider, reply

NS = Namespace.parse("cli:local")


class Screen(io.StringIO):
    """Output that says it is a (UTF-8) terminal."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def isatty(self) -> bool:
        return True


class Keyboard(io.BufferedReader):
    def isatty(self) -> bool:
        return True


def daemon(raw: dict[str, object] | None = None) -> DaemonConfig:
    return msgspec.convert(raw or {}, DaemonConfig)


def channel(output: io.StringIO, *, input: io.BufferedReader | None = None,
            errors: io.StringIO | None = None, thinking_after_s: float = 1.0) -> StdinChannel:
    config = StdinChannelConfig(kind="stdin", name="console")
    if input is None:
        input = io.BufferedReader(io.BytesIO(b""))
    return StdinChannel(config, ChannelContext("console", daemon()), input=input,
                        output=output, errors=errors, thinking_after_s=thinking_after_s)


def answer(text: str) -> OutboundMessage:
    return OutboundMessage(NS, Message.assistant(text))


# -- sanitise ------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("clear\x1b[2Jscreen", "clearscreen"),                      # CSI: erase display
    ("\x1b[31mred\x1b[0m plain", "red plain"),                  # colours
    ("a\x1b[10;20Hb\x1b[?25l", "ab"),                           # cursor move, hide cursor
    ("\x1b]0;title\x07after", "after"),                         # window title, BEL-ended
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),       # hyperlink, ST-ended
    ("\x9b2Jeight-bit", "eight-bit"),                           # 8-bit CSI
    ("\x1bPdevice\x1b\\ctl", "ctl"),                            # DCS string
    ("\x1bckeep", "keep"),                                      # RIS (full reset)
    ("\x1b]0;unterminated", "0;unterminated"),                  # introducer only
    ("bell\x07 back\x08 nul\x00 del\x7f c1\x85", "bell\\x07 back\\x08 nul\\x00 del\\x7f c1\\x85"),
    ("over\rwrite", "over\\x0dwrite"),                          # a lone CR cannot overwrite
    ("line\r\nnext", "line\nnext"),
    ("tab\tand\nnewline kept, ünïcödé too", "tab\tand\nnewline kept, ünïcödé too"),
])
def test_sanitise_removes_sequences_and_shows_controls(raw: str, shown: str) -> None:
    assert sanitise(raw) == shown


def test_sanitise_is_linear_on_hostile_input() -> None:
    started = time.monotonic()
    text = sanitise("\x1b]" * 100_000 + "\x1b[" * 100_000 + "\x9b1;" * 100_000)
    assert time.monotonic() - started < 2
    assert "\x1b" not in text and "\x9b" not in text


# -- banner --------------------------------------------------------------------------------

def test_banner_names_agent_provider_and_how_to_quit() -> None:
    assert banner(None, NS, daemon()) == (
        'orrad: chatting with agent "default" (echo) — Ctrl-D to quit')
    config = daemon({
        "providers": {"cloud": {"kind": "openai", "api_key": "k", "model": "gpt-x"}},
        "agents": {"default": {}, "helper": {"provider": "cloud"}},
    })
    assert banner("helper", NS, config) == (
        'orrad: chatting with agent "helper" (cloud, model gpt-x) — Ctrl-D to quit')
    assert 'agent "ops" on peer beta' in banner("ops@beta", NS, config)


def test_banner_names_the_peer_that_owns_the_namespace() -> None:
    config = daemon({"federation": {"secret": "s", "peers": [
        {"name": "beta", "url": "http://beta:8471", "namespaces": ["cli"]}]}})
    assert "peer beta (it owns namespace cli:local)" in banner(None, NS, config)


# -- output --------------------------------------------------------------------------------

async def test_replies_into_a_pipe_are_raw() -> None:
    out = io.StringIO()
    stdin = channel(out)
    await stdin.send(answer("\x1b[2Jraw\x07"))
    await stdin.send_error(OutboundError(NS, "bad\x1b]0;t\x07"))
    assert out.getvalue() == "\x1b[2Jraw\x07\nerror: bad\x1b]0;t\x07\n"


async def test_replies_on_a_terminal_are_sanitised() -> None:
    screen = Screen()
    stdin = channel(screen)  # input from a pipe, output on a terminal: still sanitised
    await stdin.send(answer("\x1b[2J\x1b]0;title\x07hi\x1b[31m!"))
    await stdin.send_error(OutboundError(NS, "bad\x1b[H"))
    assert screen.getvalue() == "hi!\nerror: bad\n"


async def test_thinking_indicator_after_the_threshold_is_erased_before_the_answer(
    autojump_clock: MockClock,
) -> None:
    screen = Screen()
    stdin = channel(screen, thinking_after_s=1.0)
    async with stdin.start_typing({}):
        await trio.sleep(0.5)  # a quick run: nothing
    assert screen.getvalue() == ""
    async with stdin.start_typing({}):
        await trio.sleep(3)
    await stdin.send(answer("done"))
    assert screen.getvalue() == "thinking…" + ERASE_LINE + "done\n"


async def test_no_thinking_indicator_into_a_pipe(autojump_clock: MockClock) -> None:
    out = io.StringIO()
    stdin = channel(out)
    async with stdin.start_typing({}):
        await trio.sleep(5)
    assert out.getvalue() == ""


async def test_the_pipeline_shows_the_indicator_for_a_slow_run() -> None:
    """The router wraps each run in the channel's typing context: a slow provider shows the
    indicator, a quick one does not, and each answer follows a clean line."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"slow\n")
    os.close(write_fd)
    screen = Screen()
    errors = io.StringIO()
    provider = ScriptedProvider([reply("first")], delay=0.3)
    runtime = Runtime(provider, MemorySessionStore())
    router = Router(AgentSet({"default": runtime}, "default"))
    config = daemon()

    def factory(cfg: object, context: ChannelContext) -> StdinChannel:
        assert isinstance(cfg, StdinChannelConfig)
        return StdinChannel(cfg, context, input=Keyboard(io.FileIO(read_fd)), output=screen,
                            errors=errors, thinking_after_s=0.05)

    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        manager = ChannelManager(router.intake, factory,
                                 lambda c: ChannelContext(c.name or "?", config))
        await nursery.start(manager.serve)
        await manager.apply({"stdin.yaml": StdinChannelConfig(kind="stdin", name="tty")}, {})
        with trio.fail_after(5):
            await manager.runners["stdin.yaml"].finished.wait()
        nursery.cancel_scope.cancel()
    assert screen.getvalue() == "> thinking…" + ERASE_LINE + "first\n> "
    assert errors.getvalue() == 'orrad: chatting with agent "default" (echo) — Ctrl-D to quit\n'


# -- history file --------------------------------------------------------------------------

def test_history_file_is_private_bounded_and_skips_repeats(tmp_path: Path) -> None:
    path = tmp_path / "state" / "chat_history"
    path.parent.mkdir()
    path.write_text("old one\n")
    path.chmod(0o644)
    editor = LineEditor(path, history_length=3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for line in ["a", "a", "   ", "b", "c", "d"]:
        editor.remember(line)
    assert path.read_text().splitlines() == ["b", "c", "d"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A new editor (a restart) reads the file back.
    import readline

    LineEditor(path, history_length=3)
    assert [readline.get_history_item(i) for i in (1, 2, 3)] == ["b", "c", "d"]


def test_history_is_kept_in_memory_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    editor = LineEditor(blocker / "chat_history")  # its folder is a file
    editor.remember("still works")
    import readline

    assert readline.get_history_item(readline.get_current_history_length()) == "still works"


# -- reading a pipe ------------------------------------------------------------------------

async def test_lines_from_a_descriptor_split_and_end_like_readline() -> None:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb", buffering=0) as source:
        chan = channel(io.StringIO(), input=source)  # type: ignore[arg-type]
        os.write(write_fd, b"one\ntwo\r\nthr")
        os.write(write_fd, b"ee\nlast without end")
        os.close(write_fd)
        lines = [chan._read_raw_line() for _ in range(6)]
    assert lines == [b"one\n", b"two\r\n", b"three\n", b"last without end", b"", b""]


async def test_sigterm_while_stdin_is_an_open_pipe_exits_cleanly(tmp_path: Path) -> None:
    """The daemon stops while its stdin reader waits on a pipe that never ends: exit 0, no
    "Fatal Python error ... could not acquire lock for <stdin>" abort at shutdown."""
    from tests.daemon_process import DaemonProcess

    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("stdin.yaml", "kind: stdin\n")
    await daemon.start()
    try:
        await daemon.wait_api()
        await daemon.wait_for(lambda states: states.get("stdin", ("",))[0] == "running")
    finally:
        code = await daemon.stop()
    assert "Fatal Python error" not in daemon.stderr()
    assert code == 0, daemon.stderr()
