"""What the stdin channel needs to chat on a terminal.

* :func:`sanitise`: a reply made safe to print on a terminal (no escape sequence or control
  character of the model's reaches it);
* :func:`banner`: the one line that says who the user is chatting with and how to quit;
* :class:`LineEditor`: GNU readline (line editing, history kept in a private file) over the
  process's own standard input and output, and the terminal settings to restore when a
  read is abandoned.

Nothing here keeps module-level state: readline's own state is the process's, and a
:class:`LineEditor` owns the rest.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import termios
from pathlib import Path
from typing import IO, Any

from orrad.config import DaemonConfig
from orrad.model import Namespace, key_matches_prefix

__all__ = [
    "ERASE_LINE",
    "HISTORY_FILE",
    "HISTORY_LENGTH",
    "LineEditor",
    "banner",
    "can_edit_lines",
    "input_ended_notice",
    "sanitise",
    "thinking_text",
]

log = logging.getLogger(__name__)

HISTORY_FILE = "chat_history"  # under state_dir
HISTORY_LENGTH = 1000  # lines kept, in memory and in the file
ERASE_LINE = "\r\x1b[K"  # back to column 0, clear to the end of the line
# Leave bracketed-paste mode (readline turns it on while it reads): written when a read is
# abandoned, so the shell the user returns to does not receive paste markers.
_END_PASTE_MODE = "\x1b[?2004l"

# ANSI escape sequences (ECMA-48), 7-bit and 8-bit introducers. Each alternative stops at
# a character that can only start the next sequence, so the scan is linear.
_SEQUENCE = re.compile(
    r"""
      (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]       # CSI ... final byte
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])                     # OSC DCS SOS PM APC ...
      [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)                       # ... up to BEL or ST
    | \x1b [\x20-\x2f]* [\x30-\x7e]                               # any other ESC sequence
    """,
    re.VERBOSE,
)
# What is left that a terminal would act on: C0 but tab and newline, DEL, C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitise(text: str) -> str:
    """``text`` as a terminal may show it: escape sequences removed (colours, cursor moves,
    screen clears, window titles, hyperlinks), ``\\r\\n`` made ``\\n``, and every other
    control character but newline and tab written visibly as ``\\xNN``."""
    text = _SEQUENCE.sub("", text.replace("\r\n", "\n"))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def thinking_text(output: IO[str]) -> str:
    """The indicator shown while a run is slow (plain dots when ``…`` cannot be encoded)."""
    encoding = getattr(output, "encoding", None) or "ascii"
    try:
        "…".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "thinking..."
    return "thinking…"


def banner(agent: str | None, namespace: Namespace, daemon: DaemonConfig) -> str:
    """``orrad: chatting with agent "default" (echo) — Ctrl-D to quit``."""
    return f"orrad: chatting with {_partner(agent, namespace, daemon)} — Ctrl-D to quit"


def _partner(agent: str | None, namespace: Namespace, daemon: DaemonConfig) -> str:
    name = agent or daemon.default_agent or "default"
    local, at, peer = name.rpartition("@")
    if at and local:
        return f'agent "{local}" on peer {peer}'
    for owner in daemon.federation.peers if daemon.federation else []:
        if any(key_matches_prefix(namespace.key, prefix) for prefix in owner.namespaces):
            return f"peer {owner.name} (it owns namespace {namespace.key})"
    config = daemon.agents.get(name)
    if config is None:
        return f'agent "{name}"'
    provider = daemon.providers.get(config.provider)
    model = config.model or (provider.model if provider is not None else None)
    about = config.provider if model is None else f"{config.provider}, model {model}"
    return f'agent "{name}" ({about})'


def input_ended_notice() -> str:
    return ("orrad: input ended; the daemon keeps running its other channels "
            "(Ctrl-C or SIGTERM to stop)")


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None


def can_edit_lines(input: IO[bytes], output: IO[str]) -> bool:
    """True when ``input()`` would use readline for these streams: they are the process's
    standard input and output (file descriptors 0 and 1, also ``sys.stdin``/``sys.stdout``),
    both terminals, and the readline module exists."""
    if not (_fileno(input) == _fileno(sys.stdin) == 0 and _fileno(output) == _fileno(sys.stdout)
            == 1 and os.isatty(0) and os.isatty(1)):
        return False
    try:
        import readline  # noqa: F401 - imported for its effect on input()
    except ImportError:
        return False
    return True


class LineEditor:
    """Reads lines with GNU readline; history in ``history_path`` (mode 0600, the last
    ``history_length`` lines), or in memory only when the file cannot be used.

    :meth:`read_line` blocks: call it in a worker thread. When such a read is abandoned
    (the daemon stops while the user is typing), :meth:`restore_terminal` puts the terminal
    back the way it was before readline changed it.
    """

    def __init__(self, history_path: Path | None, *, history_length: int = HISTORY_LENGTH
                 ) -> None:
        import readline

        self._readline = readline
        self._history_path = history_path
        self._saved_tty: list[Any] | None = None
        try:
            self._saved_tty = termios.tcgetattr(0)
        except (termios.error, OSError) as exc:
            log.debug("terminal settings not saved: %s", exc)
        readline.set_auto_history(False)  # only real, non-repeated messages
        readline.set_history_length(history_length)
        readline.clear_history()
        if history_path is not None:
            self._open_history(history_path)

    def _open_history(self, path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.fchmod(fd, 0o600)  # it holds the user's messages: private, even if older
            finally:
                os.close(fd)
            self._readline.read_history_file(str(path))
        except OSError as exc:
            log.warning("chat history not kept in %s: %s", path, exc)
            self._history_path = None

    def read_line(self, prompt: str) -> str | None:
        """One line (without its end), or ``None`` at end of input (Ctrl-D)."""
        try:
            line = input(prompt)
        except EOFError:
            return None
        except UnicodeDecodeError as exc:
            log.warning("a line that is not valid text was ignored: %s", exc)
            return ""
        self.remember(line)
        return line

    def remember(self, line: str) -> None:
        """Add ``line`` to the history (not a blank one, nor a repeat of the last)."""
        readline = self._readline
        if not line.strip():
            return
        last = readline.get_current_history_length()
        if last and readline.get_history_item(last) == line:
            return
        readline.add_history(line)
        if self._history_path is None:
            return
        try:
            # Appends, then truncates the file to the history length.
            readline.append_history_file(1, str(self._history_path))
        except OSError as exc:
            log.warning("chat history not kept in %s: %s", self._history_path, exc)
            self._history_path = None

    def restore_terminal(self, output: IO[str]) -> None:
        """Undo what an unfinished readline call did to the terminal (raw mode, no echo,
        bracketed paste) and end the half-typed line."""
        try:
            output.write(_END_PASTE_MODE + "\n")
            output.flush()
        except (OSError, ValueError):
            pass
        if self._saved_tty is None:
            return
        try:
            termios.tcsetattr(0, termios.TCSANOW, self._saved_tty)
        except (termios.error, OSError) as exc:
            log.debug("terminal settings not restored: %s", exc)
