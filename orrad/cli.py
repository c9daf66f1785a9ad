"""``orrad`` command line: argv to commands. The only module that exits the process.

Exit codes (CONTRACT §1): 0 clean, 1 runtime failure or unreachable daemon, 2 usage,
78 configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from orrad.config import (
    DaemonConfig,
    find_config_file,
    load_channels,
    load_daemon_config,
)
from orrad.config.files import read_regular_file
from orrad.errors import ConfigError, ConfigErrors, InvalidNamespace, OrradError, StoreError
from orrad.init import cmd_init
from orrad.logs import setup_logging
from orrad.model import Message, Namespace
from orrad.version import __version__

__all__ = ["main"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orrad", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", metavar="FILE", help="daemon configuration file")
        return p

    command("run", "run the daemon in the foreground")
    command("check", "validate the daemon file and every channel file")
    p = command("status", "show the running daemon's channels, peers and agents")
    p.add_argument("--json", action="store_true", help="print JSON")
    command("reload", "ask the running daemon to reload channels_dir")
    p = command("send", "send one message through the running daemon")
    p.add_argument("--namespace", help="namespace (default: api:<uuid>)")
    p.add_argument("--agent", help="agent name")
    p.add_argument("text", help="the message")
    p = command("sessions", "list stored sessions (reads state_dir directly)")
    p.add_argument("--prefix", metavar="NS", help="only sessions under this namespace")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("history", "print one session's messages (reads state_dir directly)")
    p.add_argument("namespace", metavar="NS")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("version", help="print the version")
    p = sub.add_parser("init", help="write a commented orrad.yaml and channels.d/ to start from",
                       description="write a commented orrad.yaml and channels.d/ to start from")
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
        print(json.dumps([msgspec.to_builtins(i) for i in infos], indent=2))
        return EXIT_OK
    if not infos:
        print("no sessions", file=sys.stderr)
        return EXIT_OK
    width = max(len("NAMESPACE"), *(len(i.namespace) for i in infos))
    print(f"{'NAMESPACE':<{width}}  {'MESSAGES':>8}  UPDATED")
    for info in infos:
        updated = info.updated_at.isoformat(timespec="seconds")
        print(f"{info.namespace:<{width}}  {info.message_count:>8}  {updated}")
    return EXIT_OK


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
    if args.json:
        print(json.dumps(msgspec.to_builtins(
            {"namespace": session.namespace, "messages": session.messages}), indent=2))
        return EXIT_OK
    for message in session.messages:
        print(_format_message(message))
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
    "history": cmd_history,
    "status": _client_command("status"),
    "reload": _client_command("reload"),
    "send": _client_command("send"),
    "init": cmd_init,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    # Chatting on a terminal: only warnings and errors interleave with the conversation.
    interactive = args.command == "run" and sys.stdin.isatty() and sys.stderr.isatty()
    level = os.environ.get("ORRAD_LOG_LEVEL", "WARNING" if interactive else "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"orrad: ORRAD_LOG_LEVEL={level!r} is not a level "
              "(DEBUG, INFO, WARNING, ERROR, CRITICAL); using INFO", file=sys.stderr)
        level = "INFO"
    setup_logging(level)
    try:
        return COMMANDS[args.command](args)
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
        return EXIT_OK

