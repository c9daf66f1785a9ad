"""``orrad`` command line: argv to commands. The only module that exits the process.

Exit codes (CONTRACT §1): 0 clean, 1 runtime failure or unreachable daemon, 2 usage,
78 configuration error; beyond it, 130 after Ctrl-C (SIGINT) and 141 when standard output
was closed early (``orrad sessions | head -1``), the codes a shell gives a command killed by
those signals. No outcome prints a traceback unless ``ORRAD_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from orrad.config import (
    DaemonConfig,
    find_config_file,
    load_channels,
    load_daemon_config,
)
from orrad.config.files import read_regular_file
from orrad.errors import (
    ConfigError,
    ConfigErrors,
    DaemonError,
    InvalidNamespace,
    OrradError,
    StoreError,
)
from orrad.init import cmd_init
from orrad.logs import setup_logging
from orrad.model import Message, Namespace
from orrad.timefmt import utc_iso
from orrad.version import __version__

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

DESCRIPTION = """\
orrad connects LLM agents to chat channels: the terminal, HTTP webhooks, Discord and
plugin kinds. One daemon (`orrad run`) supervises every channel, answers each message with
the agent its routing picks, and keeps every conversation in its own durable session. The
other commands check the configuration, read the stored sessions and talk to the running
daemon through its API."""

EPILOG = """\
configuration file: the first that exists of -c FILE, $ORRAD_CONFIG, ./orrad.yaml,
/etc/orrad/orrad.yaml; with none, built-in defaults (the offline echo agent, channel files
in ./channels.d, state in ./.orrad).

exit codes:
  0    success (for run: a clean stop on SIGTERM, Ctrl-C or end of input)
  1    runtime failure; the daemon is unreachable or answered an error
  2    usage error: a bad option, argument or namespace
  78   configuration error (EX_CONFIG), each problem printed as FILE:LINE:COL: message
  130  interrupted by Ctrl-C
  141  standard output was closed before everything was written (| head)

example:
  orrad init && orrad check && orrad run     # write a configuration, check it, chat

`orrad COMMAND --help` describes one command; `orrad completion bash` completes them."""


def _examples(*lines: str) -> str:
    return ("example:\n" if len(lines) == 1 else "examples:\n") + "\n".join(
        f"  {line}" for line in lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


MIN_WATCH_S = 0.1


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not MIN_WATCH_S <= value <= 86400:  # NaN included
        raise argparse.ArgumentTypeError(f"{text!r} is not between {MIN_WATCH_S} and 86400")
    return value


def _utf8_text(text: str) -> str:
    """Command-line text that can be sent as JSON (argv bytes that are not UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8 text") from None
    return text


class _Parser(argparse.ArgumentParser):
    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse ignores a failed write; a closed pipe is main()'s to handle (exit 141).
        if message:
            (file or sys.stderr).write(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orrad", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"orrad {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, description: str | None = None,
                epilog: str | None = None, *, config: bool = True, parent: Any = sub,
                usage: str | None = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=description or help_text, epilog=epilog,
            usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter)
        if config:
            # A nested command's (sessions delete) unset -c must not hide its parent's.
            p.add_argument("-c", "--config", metavar="FILE",
                           default=None if parent is sub else argparse.SUPPRESS,
                           help="daemon configuration file (default: see `orrad --help`)")
        return p

    command("run", "run the daemon in the foreground", """\
Run the daemon in the foreground: start every channel file in channels_dir, answer
messages, serve the API on api.listen, until SIGTERM or Ctrl-C (a clean stop, exit 0). It
also ends when its only channel is stdin and the input ends. On a terminal with the stdin
channel, this is a chat. Exit 78, binding nothing, when the daemon file is invalid; an
invalid channel file is only logged and shown as rejected.""", _examples(
        "printf 'hello\\n' | orrad run        # one answer, then exit",
        "orrad run -c /etc/orrad/orrad.yaml"))
    command("check", "validate the daemon file and every channel file", """\
Validate the daemon file and every channel file without starting anything: one
FILE:LINE:COL: message line per problem on stderr, exit 78 if any file is invalid. It also
warns when channels_dir does not exist and notes the files that take ${VAR} values from
this shell, which the service's environment may not have.""", _examples(
        "orrad check -c /etc/orrad/orrad.yaml && systemctl reload orrad"))
    p = command("status", "show the running daemon's channels, peers and agents", """\
Show the running daemon's channels (state, generation, restarts, since when, last error),
peers and agents, asked through its API. With --watch, redraw it every SECONDS (default 2)
until Ctrl-C, which exits 130; when stdout is not a terminal, each redraw is a new block
after a blank line. Times are UTC (2026-12-03T05:30:37Z). Exit 1 when the daemon cannot
be reached.""", _examples(
        "orrad status",
        "orrad status --watch 5",
        "orrad status --json | jq '.channels[] | select(.state != \"running\")'"))
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--watch", nargs="?", const=2.0, type=_interval, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--count", type=_positive_int, metavar="N",
                   help="with --watch: stop after N redraws (exit 0, or 1 if the last one "
                        "could not reach the daemon)")
    command("reload", "ask the running daemon to reload its files", """\
Ask the running daemon to re-read its daemon file and channels_dir (like SIGHUP) and print
each file's result: reloaded, unchanged, started, restarted, stopped, removed or rejected
(with its FILE:LINE:COL). Exit 78 when a file was rejected; its last good version keeps
running.""", _examples("orrad reload"))
    p = command("send", "send one message through the running daemon", """\
Send one message through the running daemon's API and print the reply. The message runs
like any other: it is stored in its namespace's session (by default a new api:<uuid>).""",
        _examples("orrad send 'what changed in the last deploy?'",
                  "orrad send --namespace ops:alice --agent support 'hello again'"))
    p.add_argument("--namespace", metavar="NS", help="namespace (default: api:<uuid>)")
    p.add_argument("--agent", type=_utf8_text, help="agent name (default: routing decides)")
    p.add_argument("text", type=_utf8_text, help="the message")
    p = command("sessions", "list stored sessions, or delete one", usage=(
        "orrad sessions [-h] [-c FILE] [--prefix NS] [--json]\n"
        "       orrad sessions delete [-h] [-c FILE] NS"), description="""\
List the stored sessions (namespace, message count, last update in UTC), read from
state_dir directly, so it works with the daemon stopped. `orrad sessions delete NS`
clears one session.""", epilog=_examples("orrad sessions --prefix webhook:hooks",
                                         "orrad sessions --json",
                                         "orrad sessions delete cli:local"))
    p.add_argument("--prefix", metavar="NS",
                   help="only this namespace and those under it (whole segments)")
    p.add_argument("--json", action="store_true", help="print JSON")
    actions = p.add_subparsers(dest="sessions_action", metavar="ACTION", prog="orrad sessions")
    d = command("delete", "clear one session", """\
Clear one stored session: through the running daemon's API when it answers (a run in
progress on that namespace finishes first), else directly in state_dir. Exit 1 when there
is no such session.""", _examples("orrad sessions delete webhook:hooks:team:ops"),
        parent=actions)
    d.add_argument("namespace", metavar="NS", help="the session's namespace")
    p = command("history", "print one session's messages", """\
Print one session's messages in order (role: content), read from state_dir directly, so
it works with the daemon stopped. Exit 1 when there is no such session.""", _examples(
        "orrad history cli:local --limit 10", "orrad history cli:local --json"))
    p.add_argument("namespace", metavar="NS", help="the session's namespace")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="only the last N messages")
    p.add_argument("--json", action="store_true", help="print JSON")
    command("version", "print the version", "Print the version (also `orrad --version`).",
            _examples("orrad version"), config=False)
    p = command("completion", "print a shell completion script", """\
Print a completion script for bash, zsh or fish, generated from orrad's own commands and
options: it completes command names, options and their fixed choices, and file names after
-c (namespaces are not completed).""",
                _examples(
        "source <(orrad completion bash)                      # this bash session",
        "orrad completion bash > ~/.local/share/bash-completion/completions/orrad",
        "orrad completion zsh > ~/.zfunc/_orrad      # a folder in $fpath, then compinit",
        "orrad completion fish > ~/.config/fish/completions/orrad.fish"), config=False)
    p.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell")
    p = command("init", "write a commented orrad.yaml and channels.d/ to start from", """\
Write a commented orrad.yaml and channels.d/ (a stdin channel and a disabled webhook
example) into DIR, never writing a secret: a provider's key is a ${VAR} reference. Files
with other content are left alone unless --force.""", _examples(
        "orrad init", "orrad init --provider openai --model gpt-4o-mini && orrad check"),
                config=False)
    p.add_argument("dir", metavar="DIR", nargs="?", default=".", help="folder (default: .)")
    p.add_argument("--provider", choices=["openai", "anthropic", "ollama"],
                   help="a real model provider (default: the built-in echo agent)")
    p.add_argument("--model", metavar="M", help="the provider's model")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def _load_config(args: argparse.Namespace, *, known_tools: Sequence[str] | None = None
                 ) -> DaemonConfig:
    path = find_config_file(args.config)
    return load_daemon_config(path, known_tools=known_tools)


def _print_config_errors(errors: ConfigErrors | ConfigError) -> None:
    items = errors.errors if isinstance(errors, ConfigErrors) else [errors]
    for error in items:
        print(str(error), file=sys.stderr)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"orrad {__version__}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from orrad.channels.registry import default_registry
    from orrad.runtime.tools import default_tool_registry

    tools = default_tool_registry()
    config = _load_config(args, known_tools=tools.names())
    kinds = default_registry().config_types()
    channel_set = load_channels(config, kinds)
    for errors in channel_set.errors.values():
        _print_config_errors(errors)
    if channel_set.errors:
        return EXIT_CONFIG
    names = ", ".join(c.name or "?" for c in channel_set.ok.values()) or "none"
    if not os.path.isdir(config.channels_dir):
        print(f"warning: channels_dir {config.channels_dir} does not exist: `orrad run` "
              "would start no channel", file=sys.stderr)
    for note in _environment_notes([config.path, *channel_set.ok]):
        print(note, file=sys.stderr)
    print(f"configuration ok: {len(channel_set.ok)} channel file(s) ({names})", file=sys.stderr)
    return EXIT_OK


_VARIABLE_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _environment_notes(paths: Sequence[str | None]) -> list[str]:
    """One note per file that takes ``${VAR}`` values from this shell's environment.

    ``check`` expands variables in the environment of whoever runs it; the service has its
    own (the unit's ``Environment=``, ``EnvironmentFile=``, credentials), which this
    command cannot see. So a check that passes here says nothing about those values.
    """
    notes = []
    for path in paths:
        if path is None:
            continue
        try:  # the file was just loaded, but may have been swapped for a FIFO since
            text = read_regular_file(path).decode("utf-8", errors="replace")
        except ConfigError:
            continue
        used = sorted({name for name in _VARIABLE_RE.findall(text) if name in os.environ})
        if used:
            shown = ", ".join(f"${{{name}}}" for name in used)
            notes.append(f"note: {path} uses {shown} from this shell's environment; "
                         "the service must have the same values (its unit's Environment=, "
                         "EnvironmentFile= or credentials), which check cannot see")
    return notes


def cmd_run(args: argparse.Namespace) -> int:
    from orrad.daemon import run_daemon
    from orrad.runtime.tools import default_tool_registry

    config = _load_config(args, known_tools=default_tool_registry().names())
    run_daemon(config)
    return EXIT_OK


def _open_db_readonly(config: DaemonConfig) -> Any:
    from orrad.state import Database

    return Database.in_state_dir(config.state_dir, read_only=True)


def cmd_sessions(args: argparse.Namespace) -> int:
    from orrad.state.sessions import list_sessions

    config = _load_config(args)
    prefix = Namespace.parse(args.prefix) if args.prefix else None
    db = _open_db_readonly(config)
    try:
        infos = db.run_sync(lambda conn: list_sessions(conn, prefix))
    except StoreError:
        if os.path.exists(db.path):
            raise
        infos = []
    finally:
        db.close_sync()
    if args.json:
        print(json.dumps([{"namespace": i.namespace, "message_count": i.message_count,
                           "created_at": utc_iso(i.created_at),
                           "updated_at": utc_iso(i.updated_at)} for i in infos], indent=2))
        return EXIT_OK
    if not infos:
        print("no sessions", file=sys.stderr)
        return EXIT_OK
    width = max(len("NAMESPACE"), *(len(i.namespace) for i in infos))
    print(f"{'NAMESPACE':<{width}}  {'MESSAGES':>8}  UPDATED")
    for info in infos:
        print(f"{info.namespace:<{width}}  {info.message_count:>8}  {utc_iso(info.updated_at)}")
    return EXIT_OK


def cmd_sessions_delete(args: argparse.Namespace) -> int:
    """Through the running daemon's API (it holds the namespace's lock and its cache), or,
    when no daemon answers, in the store directly."""
    from orrad.client import DaemonUnreachable, delete_session
    from orrad.reach import client_config
    from orrad.state.address import read_api_address

    namespace = Namespace.parse(args.namespace)
    config = client_config(find_config_file(args.config))
    if not config.api.listen:
        print("orrad: note: the daemon API is disabled (api.listen is empty): deleting in "
              "state_dir; a daemon running on it may still hold the session in memory and "
              "write it back", file=sys.stderr)
        where = _delete_in_state_dir(config, namespace)
    else:
        try:
            deleted = delete_session(config, namespace)
        except DaemonUnreachable as exc:
            if read_api_address(config.state_dir) is not None:
                # Its process lives: a daemon that does not answer (starting, or stuck) must
                # not have its store changed behind its back.
                raise DaemonError(f"{exc}; the daemon recorded in {config.state_dir} still "
                                  "runs, so nothing was deleted") from None
            log.debug("%s; deleting in state_dir", exc)
            where = _delete_in_state_dir(config, namespace)
        else:
            where = "through the running daemon" if deleted else None
    if where is None:
        print(f"orrad: no session {namespace.key}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"deleted {namespace.key} ({where})")
    return EXIT_OK


def _delete_in_state_dir(config: DaemonConfig, namespace: Namespace) -> str | None:
    """Delete in the database file; where it was deleted, or None when there was nothing."""
    from orrad.state import Database
    from orrad.state.sessions import delete_session

    db = Database.in_state_dir(config.state_dir)
    if not os.path.exists(db.path):  # no store, no session: and none is created
        return None
    try:
        deleted = db.run_sync(lambda conn: delete_session(conn, namespace.key))
    finally:
        db.close_sync()
    return f"in {db.path}; no daemon answered" if deleted else None


def _format_message(message: Message) -> str:
    parts = []
    if message.content:
        parts.append(message.content)
    for call in message.tool_calls:
        parts.append(f"[tool call {call.name} {json.dumps(call.arguments)}]")
    for result in message.tool_results:
        flag = " error" if result.is_error else ""
        parts.append(f"[tool result{flag}: {result.content}]")
    return f"{message.role}: " + " ".join(parts)


def cmd_history(args: argparse.Namespace) -> int:
    from orrad.state.sessions import load_session

    config = _load_config(args)
    namespace = Namespace.parse(args.namespace)
    limit: int | None = args.limit
    db = _open_db_readonly(config)
    try:
        session = db.run_sync(lambda conn: load_session(conn, namespace.key))
    except StoreError:
        if os.path.exists(db.path):
            raise
        session = None
    finally:
        db.close_sync()
    if session is None:
        print(f"orrad: no session {namespace.key}", file=sys.stderr)
        return EXIT_FAILURE
    messages = session.messages[-limit:] if limit else session.messages
    if args.json:
        items = []
        for message in messages:
            item = msgspec.to_builtins(message)
            if "timestamp" in item:
                item["timestamp"] = utc_iso(message.timestamp)
            items.append(item)
        print(json.dumps({"namespace": session.namespace, "messages": items}, indent=2))
        return EXIT_OK
    for message in messages:
        print(_format_message(message))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from orrad.completion import completion_script

    sys.stdout.write(completion_script(_parser(), args.shell))
    return EXIT_OK


def _client_command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import orrad.client as client
        from orrad.reach import client_config

        config = client_config(find_config_file(args.config))
        handler: Callable[[argparse.Namespace, DaemonConfig], int] = getattr(client, f"cmd_{name}")
        return handler(args, config)

    return run


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "version": cmd_version,
    "sessions": cmd_sessions,
    "sessions delete": cmd_sessions_delete,
    "completion": cmd_completion,
    "history": cmd_history,
    "status": _client_command("status"),
    "reload": _client_command("reload"),
    "send": _client_command("send"),
    "init": cmd_init,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. Whatever happens, no traceback (see module doc).

    A closed standard output (the reader, e.g. ``head``, went away) is handled as the
    Python documentation recommends: the rest of the output goes to /dev/null, so the flush
    at interpreter exit does not fail again, and the exit code is 141, what a shell reports
    for a command killed by SIGPIPE (``set -o pipefail`` sees the truncation, as with any
    Unix tool).
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in a message at interpreter exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last resort: a bug, said in one line
        if os.environ.get("ORRAD_LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exception(exc)
        detail = " ".join(str(exc).split())
        print(f"orrad: internal error: {type(exc).__name__}: {detail} "
              "(ORRAD_LOG_LEVEL=DEBUG shows where)", file=sys.stderr)
        return EXIT_FAILURE


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no usable stdout at all: nothing more will be written
        pass


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    command = args.command
    if command == "sessions" and args.sessions_action:
        command = f"sessions {args.sessions_action}"
    # Chatting on a terminal: only warnings and errors interleave with the conversation.
    interactive = args.command == "run" and sys.stdin.isatty() and sys.stderr.isatty()
    level = os.environ.get("ORRAD_LOG_LEVEL", "WARNING" if interactive else "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"orrad: ORRAD_LOG_LEVEL={level!r} is not a level "
              "(DEBUG, INFO, WARNING, ERROR, CRITICAL); using INFO", file=sys.stderr)
        level = "INFO"
    setup_logging(level)
    try:
        return COMMANDS[command](args)
    except (ConfigErrors, ConfigError) as exc:
        _print_config_errors(exc)
        return EXIT_CONFIG
    except InvalidNamespace as exc:
        print(f"orrad: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OrradError as exc:
        print(f"orrad: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if args.command == "run":  # Ctrl-C before the daemon took over its signals
            return EXIT_OK
        raise

