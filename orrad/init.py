"""``orrad init``: a commented starter configuration in a folder (CONTRACT §1).

Writes ``orrad.yaml`` (the built-in ``echo`` agent, or one provider: openai, anthropic, or
ollama through its OpenAI-compatible API), ``channels.d/stdin.yaml`` (chat on the terminal)
and ``channels.d/hooks.yaml`` (a webhook example, ``enabled: false``), then prints the
next commands. Keys are only ever written as ``${VAR}`` references, never their values.
A file that exists with other content is not overwritten without ``--force``; one that
already holds exactly what would be written is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROVIDERS", "Provider", "cmd_init", "render_daemon_file"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Provider:
    """What ``--provider NAME`` writes."""

    kind: str  # the provider's ``kind:`` (openai | anthropic)
    base_url: str  # as written, possibly a ${VAR:-default} reference
    model: str  # the default model
    key_variable: str | None  # the environment variable holding the key, if it needs one
    about: str  # a comment line above the provider


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(
        "openai", "${OPENAI_BASE_URL:-https://api.openai.com/v1}", "gpt-4o-mini",
        "OPENAI_API_KEY",
        "OpenAI; OPENAI_BASE_URL points it at another OpenAI-compatible server"),
    "anthropic": Provider(
        "anthropic", "${ANTHROPIC_BASE_URL:-https://api.anthropic.com}",
        "claude-3-5-haiku-latest", "ANTHROPIC_API_KEY",
        "Anthropic; ANTHROPIC_BASE_URL points it at another Messages API server"),
    "ollama": Provider(
        "openai", "http://127.0.0.1:11434/v1", "llama3.2", None,
        "Ollama on this machine, through its OpenAI-compatible API (no key)"),
}

DAEMON_FILE = "orrad.yaml"
CHANNELS_DIR = "channels.d"
STDIN_FILE = "stdin.yaml"
WEBHOOK_FILE = "hooks.yaml"

_HEADER = """\
# orrad daemon file, written by `orrad init`. Every key is optional; the README's
# "Configuration reference" lists them all with their defaults. `orrad check` validates
# this file and channels.d/; a running daemon applies changes to agents and providers on
# `orrad reload`. Any value may use ${VAR}, ${VAR:-default} or ${file:PATH}: keep keys and
# tokens in the environment or in files, never in this file.

# state_dir: .orrad            # sessions and the message ledger (default: $STATE_DIRECTORY
#                              # when systemd sets it, else .orrad next to this file)
channels_dir: channels.d       # one file per channel, relative to this file's folder

api:                           # what orrad status, reload and send talk to; "" disables it
  listen: 127.0.0.1:8470
  # token: ${ORRAD_API_TOKEN}  # then /v1/* needs Authorization: Bearer <token>
"""

_ECHO_AGENT = """
agents:
  default:
    provider: echo             # built in: answers "echo: <your text>"; no key, no network
    # system_prompt: You are a helpful assistant.

# For a real model, one command: orrad init --provider openai --force
# (or --provider anthropic, --provider ollama; --model M picks the model).
"""

_PROVIDER_AGENT = """
providers:
  {name}:                      # {about}
    kind: {kind}
    base_url: {base_url}
{key_line}{model_line}
    timeout_s: 120             # per call
    max_retries: 4             # 408, 409, 429, 5xx and connection errors, with backoff

agents:
  default:
    provider: {name}
    system_prompt: You are a helpful assistant.
    max_output_tokens: 1024
    context_tokens: 8192       # input budget; older history is trimmed to fit
    tools: []                  # e.g. [current_time]
"""

_STDIN_CHANNEL = """\
# Chat on standard input, written by `orrad init`: each line typed is one message, each
# answer is printed below it. On a terminal: line editing and history (Up/Down), Ctrl-D
# quits. When this is the only channel, orrad exits once input ends (so
# `printf 'hi\\n' | orrad run` answers and exits).
kind: stdin
namespace: cli:local           # the session; `orrad history cli:local` prints it
prompt: "> "                   # shown only on a terminal
"""

_WEBHOOK_CHANNEL = """\
# An HTTP webhook channel, written by `orrad init` and disabled. To use it, set
# `enabled: true` below and run `orrad reload` (or start `orrad run`); then
#   curl -s -H 'content-type: application/json' -d '{"message": "hi"}' http://127.0.0.1:8080/hook
# answers {"id": ..., "message": "<the reply>", "namespace": "webhook:hooks:<new id>", ...}.
# Send "namespace": "some:key" to continue one conversation (kept under webhook:hooks:).
kind: webhook
enabled: false
listen: 127.0.0.1:8080         # without auth, only a loopback address is allowed
path: /hook
max_body_bytes: 1048576        # larger bodies get 413 before they are read
reply_timeout_s: 120           # a slower answer is 504; a retry with the same id gets it
# To listen on another address, require a credential first:
# auth:
#   bearer_token: ${HOOKS_TOKEN}   # callers send Authorization: Bearer <token>
"""

# A plain YAML scalar that stays a string (YAML 1.1 reads yes/no/on/off as booleans).
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/@+-]*(?::[A-Za-z0-9._/@+-]+)*")
_NOT_PLAIN = {"yes", "no", "on", "off", "true", "false", "null", "y", "n"}


def _yaml_string(value: str) -> str:
    """``value`` as a YAML string orrad reads back unchanged (``${`` is written ``$${``)."""
    value = value.replace("${", "$${")
    if _PLAIN.fullmatch(value) and value.lower() not in _NOT_PLAIN:
        return value
    # A JSON string is a YAML double-quoted scalar; keep non-ASCII as is.
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def render_daemon_file(provider: str | None, model: str | None) -> str:
    """The ``orrad.yaml`` that ``orrad init --provider PROVIDER --model MODEL`` writes."""
    if provider is None:
        return _HEADER + _ECHO_AGENT
    spec = PROVIDERS[provider]
    if spec.key_variable is not None:
        key_line = (f"    api_key: ${{{spec.key_variable}}}"
                    "   # read from the environment when orrad starts\n")
    else:
        key_line = ""
    model_line = f"    model: {_yaml_string(model or spec.model)}"
    if not model:
        model_line = f"{model_line:<30} # or: orrad init --provider {provider} --model M --force"
    return _HEADER + _PROVIDER_AGENT.format(
        name=provider, about=spec.about, kind=spec.kind, base_url=spec.base_url,
        key_line=key_line, model_line=model_line)


def _planned(provider: str | None, model: str | None) -> list[tuple[Path, str, str]]:
    """(relative path, content, what it is) for every file init writes."""
    spec = PROVIDERS.get(provider or "")
    about = ('agent "default": echo' if spec is None else
             f'agent "default": {provider}, model {model or spec.model}')
    channels = Path(CHANNELS_DIR)
    return [
        (Path(DAEMON_FILE), render_daemon_file(provider, model), about),
        (channels / STDIN_FILE, _STDIN_CHANNEL, "chat on this terminal"),
        (channels / WEBHOOK_FILE, _WEBHOOK_CHANNEL,
         "a webhook, disabled until you set enabled: true"),
    ]


def _same_content(path: Path, content: str) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(content.encode()) + 1) == content.encode()
    except OSError:
        return False


def _write(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` through a temporary file in the same folder, so a
    reader never sees half a file; mode 0666 less the umask, like any new file."""
    mask = os.umask(0)
    os.umask(mask)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o666 & ~mask)
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _shown(folder: str, relative: Path) -> str:
    return str(relative) if folder in ("", ".") else os.path.join(folder, relative)


def cmd_init(args: argparse.Namespace) -> int:
    """``orrad init [DIR] [--provider P] [--model M] [--force]``."""
    folder: str = args.dir or "."
    provider: str | None = args.provider
    model: str | None = args.model
    if model is not None and provider is None:
        print("orrad: init: --model needs --provider (the echo agent has no model)",
              file=sys.stderr)
        return EXIT_USAGE
    if model is not None and not model.strip():
        print("orrad: init: --model is empty", file=sys.stderr)
        return EXIT_USAGE
    root = Path(folder)
    planned = _planned(provider, model)

    blocked = [p for p in (root, root / CHANNELS_DIR) if p.exists() and not p.is_dir()]
    blocked += [root / rel for rel, _, _ in planned if (root / rel).is_dir()]
    if blocked:
        print(f"orrad: init: {blocked[0]} exists and is not what init writes there "
              f"({'a file' if blocked[0].is_file() else 'a folder'}); move it away",
              file=sys.stderr)
        return EXIT_FAILURE
    conflicts = [root / rel for rel, content, _ in planned
                 if os.path.lexists(root / rel) and not _same_content(root / rel, content)]
    if conflicts and not args.force:
        names = ", ".join(str(p) for p in conflicts)
        verb, them = ("exists", "it") if len(conflicts) == 1 else ("exist", "them")
        print(f"orrad: init: {names} {verb}; not overwriting (--force replaces {them})",
              file=sys.stderr)
        return EXIT_FAILURE

    try:
        (root / CHANNELS_DIR).mkdir(parents=True, exist_ok=True)
        for rel, content, about in planned:
            path = root / rel
            if _same_content(path, content):
                print(f"unchanged {_shown(folder, rel)} ({about})")
                continue
            action = "replaced" if os.path.lexists(path) else "wrote"
            _write(path, content)
            print(f"{action} {_shown(folder, rel)} ({about})")
    except OSError as exc:
        print(f"orrad: init: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    for line in _notes(provider, model, folder):
        print(line)
    return EXIT_OK


def _notes(provider: str | None, model: str | None, folder: str) -> list[str]:
    """What to know and what to run next."""
    notes: list[str] = []
    spec = PROVIDERS.get(provider or "")
    variable = spec.key_variable if spec is not None else None
    key_missing = False
    if variable is not None:
        if os.environ.get(variable):
            notes.append(f"{variable} is set in this shell; {DAEMON_FILE} refers to it as "
                         f"${{{variable}}} (the key itself is not written anywhere). A "
                         "service needs it in its own environment (the unit's "
                         "Environment= or EnvironmentFile=).")
        else:
            key_missing = True
            notes.append(f"{variable} is not set in this shell: orrad check and orrad run "
                         f"refuse {DAEMON_FILE} until it is.")
    if os.environ.get("ORRAD_CONFIG"):
        notes.append("note: $ORRAD_CONFIG is set, so orrad commands read that file, not "
                     f"this {DAEMON_FILE} (unset it, or pass -c)")
    steps: list[str] = []
    if folder not in ("", "."):
        steps.append(f"cd {shlex.quote(folder)}")
    if key_missing and variable is not None:
        steps.append(f"export {variable}=...")
    if provider == "ollama":
        pull = shlex.quote(model or PROVIDERS["ollama"].model)
        steps.append(f"ollama pull {pull}   # once; ollama must be serving on port 11434")
    steps.append("orrad run                # chat on this terminal; Ctrl-D quits")
    notes.append("next:")
    notes += [f"  {step}" for step in steps]
    return notes
