"""Finding, loading and validating the daemon file and the channel files (CONTRACT §1-2).

Loading a file runs three passes, each collecting every problem it finds:

1. YAML parsing with ``${…}`` expansion of string values (:mod:`~orrad.config.yamlpos`,
   :mod:`~orrad.config.expand`); a syntax error stops here.
2. Typing against the Structs of :mod:`~orrad.config.schema`, section by section, so
   unknown keys, missing keys and wrong types anywhere in the file are all reported.
3. Semantic checks (``problems()``): references between sections, namespaces, listen
   addresses, webhook auth...

Every problem is a :class:`~orrad.errors.ConfigError` at the 1-based line and column of
the offending key or value; a failed load raises :class:`~orrad.errors.ConfigErrors` with
all of them, in file order, at most one per position. A key with an empty value (null)
means the default for sections and lists (``api:``, ``tools:``), not for scalars.

Every file is read and parsed within :class:`~orrad.config.yamlpos.Limits` (regular files
only, a size cap, bounded nesting, nodes and expansion, a time budget), so a hostile file
is one more rejected file, never a crash or a hang.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec

from orrad.config.expand import make_expander
from orrad.config.schema import (
    ChannelConfig,
    DaemonConfig,
    DiscordChannelConfig,
    Problem,
    ProviderConfig,
    StdinChannelConfig,
    WebhookChannelConfig,
    normalized_base_url,
)
from orrad.config.yamlpos import (
    DEFAULT_LIMITS,
    Document,
    Limits,
    Mark,
    Path,
    Reresolved,
    load_yaml_file,
    unwrap,
)
from orrad.errors import ConfigError, ConfigErrors

__all__ = [
    "BUILTIN_CHANNEL_KINDS",
    "DEFAULT_CONFIG_PATHS",
    "ChannelSet",
    "LoadedChannel",
    "collect_channels",
    "find_config_file",
    "list_channel_files",
    "load_channel_file",
    "load_channels",
    "load_daemon_config",
    "read_channel_file",
]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATHS: tuple[str, ...] = ("orrad.yaml", "/etc/orrad/orrad.yaml")
"""Looked at in order when neither ``-c`` nor ``$ORRAD_CONFIG`` is given."""

BUILTIN_CHANNEL_KINDS: dict[str, type[ChannelConfig]] = {
    "stdin": StdinChannelConfig,
    "webhook": WebhookChannelConfig,
    "discord": DiscordChannelConfig,
}

S = TypeVar("S", bound=msgspec.Struct)

# -- typing pass ---------------------------------------------------------------------------


class _Failed(Exception):
    """A value did not convert; the reason is already in ``_Converter.errors``."""


_TYPE_WORDS = {"object": "mapping", "array": "list", "str": "string"}
_AT_RE = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_STEP_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")


def _what(value: Any) -> str:
    value = unwrap(value)
    if value is None:
        return "null"
    names: dict[type, str] = {dict: "mapping", list: "list", str: "string"}
    return names.get(type(value), type(value).__name__)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _optional_of(tp: Any) -> Any:
    """``X`` for ``X | None`` (exactly two members), else ``None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _display(path: Path) -> str:
    """``'tools[1]'`` for ``("agents", "x", "tools", 1)``."""
    n = len(path)
    while n > 0 and isinstance(path[n - 1], int):
        n -= 1
    head = str(path[n - 1]) if n else "value"
    return head + "".join(f"[{i}]" for i in path[n:])


def _parse_error(text: str) -> tuple[str, Path]:
    """Split msgspec's ``message - at `$.a[1]``` into the message and a path."""
    m = _AT_RE.match(text)
    if not m:
        return text, ()
    steps: list[str | int] = []
    for step in _STEP_RE.finditer(m["path"]):
        if step[1] is not None:
            steps.append(step[1])
        elif step[2] is not None:
            steps.append(int(step[2]))
        else:
            break  # a dict key msgspec does not name: point at the container
    return m["msg"], tuple(steps)


def _friendly(message: str, tp: Any) -> str:
    """msgspec's message in YAML words; enum errors list the choices, not the value."""
    if message.startswith("Invalid enum value"):
        base = _optional_of(tp) or tp
        if typing.get_origin(base) is Literal:
            return "expected one of " + ", ".join(map(str, typing.get_args(base)))
        return "not one of the allowed values"

    def words(m: re.Match[str]) -> str:
        return re.sub(r"\w+", lambda w: _TYPE_WORDS.get(w[0], w[0]), m[1])

    message = re.sub(r"`([^`]*)`", words, message)
    return message[:1].lower() + message[1:]


def _get(data: Any, path: Path) -> Any:
    for step in path:
        in_dict = isinstance(data, dict) and step in data
        if in_dict or (isinstance(data, list) and isinstance(step, int) and step < len(data)):
            data = data[step]
        else:
            return None
    return data


def _put(data: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    _get(data, path[:-1])[path[-1]] = value
    return data


def _unknown_key(key: str, allowed: Collection[str]) -> str:
    message = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    if len(allowed) <= 16:
        message += f" (allowed: {', '.join(sorted(allowed))})"
    return message


def _container_default(tp: Any) -> bool:
    """Whether a null value means "the default" for a field of type ``tp``."""
    return _is_struct(tp) or typing.get_origin(tp) in (list, dict)


class _Converter:
    """Build Structs from loaded YAML data, recording every problem with its position."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.errors: list[ConfigError] = []

    def note(self, path: Path, message: str, *, key: bool = False) -> None:
        self.errors.append(self.doc.error(path, message, key=key))

    def fail(self, path: Path, message: str) -> _Failed:
        self.note(path, message)
        return _Failed()

    def struct(self, cls: type[S], data: Any, path: Path) -> S:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail(path, f"{_display(path)}: expected a mapping, got {_what(data)}")
        internal: Collection[str] = getattr(cls, "internal_fields", ())
        fields = {f.encode_name: f for f in msgspec.structs.fields(cls) if f.name not in internal}
        failed = False
        for key in data:
            if key not in fields:
                self.note((*path, key), _unknown_key(key, fields), key=True)
                failed = True
        kwargs: dict[str, Any] = {}
        for key, info in fields.items():
            if key not in data:
                if info.required:
                    self.note(path, f"missing required key {key!r}")
                    failed = True
                continue
            if data[key] is None and not info.required and _container_default(info.type):
                continue
            try:
                kwargs[info.name] = self.value(info.type, data[key], (*path, key))
            except _Failed:
                failed = True
        if failed:
            raise _Failed
        return cls(**kwargs)

    def value(self, tp: Any, data: Any, path: Path) -> Any:
        inner = _optional_of(tp)
        if inner is not None and _is_struct(inner):
            return None if data is None else self.struct(inner, data, path)
        if _is_struct(tp):
            return self.struct(tp, data, path)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (dict, list) and _is_struct(args[-1]):
            return self.collection(origin, args[-1], data, path)
        return self.leaf(tp, data, path)

    def collection(self, origin: Any, item: type[msgspec.Struct], data: Any, path: Path) -> Any:
        want = "mapping" if origin is dict else "list"
        if not isinstance(data, origin):
            raise self.fail(path, f"{_display(path)}: expected a {want}, got {_what(data)}")
        items = data.items() if isinstance(data, dict) else enumerate(data)
        out: dict[Any, Any] = {}
        failed = False
        for k, v in items:
            try:
                out[k] = self.struct(item, v, (*path, k))
            except _Failed:
                failed = True
        if failed:
            raise _Failed
        return out if origin is dict else list(out.values())

    def leaf(self, tp: Any, data: Any, path: Path) -> Any:
        """msgspec-convert one value; a re-resolved plain scalar may fall back to its text."""
        attempt = unwrap(data)
        # sub-path -> the error of the typed value, reported if the text fails too (so
        # `${MC:-0}` for a positive int says ">= 1", not "expected int, got str").
        swapped: dict[Path, str] = {}
        while True:
            try:
                return msgspec.convert(attempt, tp)
            except msgspec.ValidationError as e:
                message, sub = _parse_error(str(e))
                node = _get(data, sub)
                if isinstance(node, Reresolved) and sub not in swapped:
                    swapped[sub] = message
                    attempt = _put(attempt, sub, node.text)
                    continue
                message = swapped.get(sub, message)
                full = (*path, *sub)
                raise self.fail(full, f"invalid value for {_display(full)!r}: "
                                      f"{_friendly(message, tp)}") from None


# -- shared --------------------------------------------------------------------------------


def _raise(errors: list[ConfigError]) -> typing.NoReturn:
    """Raise ``errors`` in file order, keeping the first problem at each position."""
    seen: set[tuple[str | None, int | None, int | None]] = set()
    unique = []
    for e in errors:
        if (e.path, e.line, e.col) not in seen:
            seen.add((e.path, e.line, e.col))
            unique.append(e)
    unique.sort(key=lambda e: (e.line or 0, e.col or 0))
    raise ConfigErrors(unique)


def _problem_errors(doc: Document, problems: list[Problem]) -> list[ConfigError]:
    errors = []
    for p in problems:
        message = p.message
        if p.see is not None:
            message += f" at line {doc.mark(p.see).line}"
        errors.append(doc.error(p.path, message, key=p.key))
    return errors


def _kind_name(value: Any) -> str:
    return f"a {_what(value)}" if _what(value) != "null" else "null"


# -- daemon file ---------------------------------------------------------------------------


def find_config_file(
    cli_path: str | None, *, environ: Mapping[str, str] | None = None
) -> str | None:
    """The daemon file to use: ``-c``, ``$ORRAD_CONFIG``, then :data:`DEFAULT_CONFIG_PATHS`.

    Returns the first that exists (as given, not made absolute), or ``None`` for the
    built-in defaults. A default path that exists but is no regular file (a FIFO, a
    device) is returned too, so loading rejects it instead of silently using defaults.

    Raises:
        ConfigError: ``-c`` or ``$ORRAD_CONFIG`` names a file that does not exist.
    """
    env = os.environ if environ is None else environ
    for explicit, source in ((cli_path, "-c"), (env.get("ORRAD_CONFIG"), "$ORRAD_CONFIG")):
        if explicit:
            if not os.path.exists(explicit):
                raise ConfigError(f"configuration file not found (given by {source})",
                                  path=explicit)
            return explicit
    for candidate in DEFAULT_CONFIG_PATHS:
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            return candidate
    return None


def _absolute(path: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _finish_daemon(
    cfg: DaemonConfig, data: dict[str, Any], path: str | None, base_dir: str,
    environ: Mapping[str, str],
) -> DaemonConfig:
    """Fill what the loader derives: absolute paths, ``echo``, base URLs, default agent."""
    state_dir = cfg.state_dir
    if "state_dir" not in data:  # systemd passes several StateDirectory= as a:b
        state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0] or state_dir
    providers = {"echo": ProviderConfig(kind="echo"), **cfg.providers}
    providers = {
        name: msgspec.structs.replace(p, base_url=normalized_base_url(p) or None)
        for name, p in providers.items()
    }
    return msgspec.structs.replace(
        cfg,
        state_dir=_absolute(state_dir, base_dir),
        channels_dir=_absolute(cfg.channels_dir, base_dir),
        providers=providers,
        default_agent=cfg.default_agent or next(iter(cfg.agents), None),
        path=os.path.abspath(path) if path is not None else None,
        base_dir=base_dir,
    )


def load_daemon_config(
    path: str | None,
    *,
    known_tools: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> DaemonConfig:
    """Load and validate the daemon file; ``path=None`` gives the built-in defaults.

    Relative paths and ``${file:…}`` resolve against the file's folder (the working
    directory without a file). ``known_tools``, when given, is the tool registry agents'
    ``tools`` and policies are checked against. An empty file means all defaults. The
    file is read and parsed within ``limits``.

    Raises:
        ConfigErrors: every problem found (see the module docstring).
    """
    env = os.environ if environ is None else environ
    if path is None:
        base_dir = os.getcwd()
        doc, errors = Document("<built-in defaults>", data={}), list[ConfigError]()
    else:
        base_dir = os.path.dirname(os.path.abspath(path))
        doc, errors = load_yaml_file(path, expand=make_expander(env, base_dir), limits=limits)
        if doc.data is None and errors:
            _raise(errors)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        _raise([*errors, doc.error((), "the daemon file must be a mapping of keys, "
                                       f"got {_kind_name(data)}")])
    conv = _Converter(doc)
    try:
        cfg = conv.struct(DaemonConfig, data, ())
    except _Failed:
        _raise(errors + conv.errors)
    if errors:
        _raise(errors)
    cfg = _finish_daemon(cfg, data, path, base_dir, env)
    tools = None if known_tools is None else frozenset(known_tools)
    problems = cfg.problems(tools)
    if problems:
        _raise(_problem_errors(doc, problems))
    logger.debug("loaded daemon configuration from %s", doc.path)
    return cfg


# -- channel files -------------------------------------------------------------------------


def list_channel_files(channels_dir: str) -> list[str]:
    """The channel files in ``channels_dir``: ``*.yaml`` and ``*.yml``, sorted by name.

    Dotfiles, other names (``*.example``, ``*.disabled``...) and directories are skipped;
    a missing or unreadable directory gives ``[]`` (the latter with a warning).
    """
    try:
        names = sorted(os.listdir(channels_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        logger.warning("cannot list channel directory %s: %s", channels_dir, e.strerror or e)
        return []
    return [
        os.path.join(channels_dir, name)
        for name in names
        if not name.startswith(".")
        and name.endswith((".yaml", ".yml"))
        and not os.path.isdir(os.path.join(channels_dir, name))
    ]


def _with_kind_restart_policy(data: dict[str, Any], cls: type[ChannelConfig]) -> dict[str, Any]:
    """``restart:`` given without ``policy`` takes the kind's default policy."""
    restart = data.get("restart")
    if isinstance(restart, dict) and "policy" not in restart:
        return {**data, "restart": {**restart, "policy": cls.default_restart_policy}}
    return data


def _channel_class(
    doc: Document, data: dict[str, Any], kinds: Mapping[str, type[ChannelConfig]]
) -> type[ChannelConfig] | ConfigError:
    known = f"known kinds: {', '.join(sorted(kinds))}"
    if "kind" not in data:
        return doc.error((), f"missing required key 'kind' ({known})")
    kind = unwrap(data["kind"])
    if not isinstance(kind, str):
        return doc.error(("kind",), f"kind must be a string ({known})")
    if kind not in kinds:
        return doc.error(("kind",), f"unknown channel kind {kind!r} ({known})")
    return kinds[kind]


def _load_channel(
    path: str, daemon: DaemonConfig, kinds: Mapping[str, type[ChannelConfig]],
    environ: Mapping[str, str] | None, limits: Limits,
) -> tuple[ChannelConfig, Document]:
    env = os.environ if environ is None else environ
    base_dir = daemon.base_dir or os.getcwd()
    doc, errors = load_yaml_file(path, expand=make_expander(env, base_dir), limits=limits)
    if doc.data is None:
        _raise(errors or [ConfigError("channel file is empty", path=path, line=1, col=1)])
    data = doc.data
    if not isinstance(data, dict):
        _raise([*errors, doc.error((), "a channel file must be a mapping of keys, "
                                       f"got {_kind_name(data)}")])
    cls = _channel_class(doc, data, kinds)
    if isinstance(cls, ConfigError):
        _raise([*errors, cls])
    conv = _Converter(doc)
    try:
        cfg = conv.struct(cls, _with_kind_restart_policy(data, cls), ())
    except _Failed:
        _raise(errors + conv.errors)
    if errors:
        _raise(errors)
    stem = os.path.splitext(os.path.basename(path))[0]
    cfg = cfg.with_defaults(stem)
    problems = cfg.problems(daemon)
    if problems:
        _raise(_problem_errors(doc, problems))
    return cfg, doc


def load_channel_file(
    path: str,
    daemon: DaemonConfig,
    kinds: Mapping[str, type[ChannelConfig]],
    *,
    environ: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ChannelConfig:
    """Load one channel file as the Struct its ``kind`` selects from ``kinds``.

    ``${file:…}`` resolves against the daemon's base directory. The result has ``name``
    set (the file name without extension when absent) and kind-specific defaults filled
    (webhook ``namespace_prefix``); ``agent`` stays ``None`` to mean the daemon's
    ``default_agent``. ``agent`` and discord ``agents`` must name daemon agents (or
    ``agent@peer`` for a declared federation peer). The file is read and parsed within
    ``limits``.

    Raises:
        ConfigErrors: every problem found, e.g. ``channel file is empty``.
    """
    return _load_channel(path, daemon, kinds, environ, limits)[0]


@dataclass(frozen=True)
class LoadedChannel:
    """One valid channel file, before channel names are compared across files."""

    path: str
    config: ChannelConfig
    name_at: Mark
    """Where the file gives its name (1:1 when the name is the file name)."""
    name_shown: str
    """The name as an error may show it: quoted, or the ``${…}`` it came from as written."""


def read_channel_file(
    path: str,
    daemon: DaemonConfig,
    kinds: Mapping[str, type[ChannelConfig]],
    *,
    environ: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> LoadedChannel:
    """:func:`load_channel_file`, keeping what :func:`collect_channels` needs.

    Raises:
        ConfigErrors: every problem found.
    """
    cfg, doc = _load_channel(path, daemon, kinds, environ, limits)
    written = doc.expanded.get(("name",))
    shown = written[0] if written is not None else repr(cfg.name or "")
    return LoadedChannel(path, cfg, doc.mark(("name",)), shown)


@dataclass
class ChannelSet:
    """The outcome of loading ``channels_dir``: good configs and rejected files, by path.

    Disabled channels are in ``ok`` (with ``enabled=False``).
    """

    ok: dict[str, ChannelConfig] = field(default_factory=dict)
    errors: dict[str, ConfigErrors] = field(default_factory=dict)

    def all_errors(self) -> list[ConfigError]:
        """Every problem of every rejected file, by file then position."""
        return [e for path in sorted(self.errors) for e in self.errors[path].errors]


def collect_channels(
    outcomes: Mapping[str, LoadedChannel | ConfigErrors],
    holders: Mapping[str, str] | None = None,
) -> ChannelSet:
    """The :class:`ChannelSet` of files loaded one by one (path -> outcome, in name order).

    When several files use one channel name, the file that already holds it (``holders``:
    name -> file, from a running daemon) keeps it, else the first in name order; the others
    are rejected with an error naming that file and line.
    """
    result = ChannelSet()
    loaded: dict[str, list[LoadedChannel]] = {}
    for path, outcome in outcomes.items():
        if isinstance(outcome, ConfigErrors):
            result.errors[path] = outcome
        else:
            loaded.setdefault(outcome.config.name or "", []).append(outcome)
    for name, candidates in loaded.items():
        holder = (holders or {}).get(name)
        winner = next((c for c in candidates if c.path == holder), candidates[0])
        result.ok[winner.path] = winner.config
        line, col = winner.name_at
        for loser in candidates:
            if loser is not winner:
                message = (f"duplicate channel name {loser.name_shown}: also used by "
                           f"{winner.path}:{line}:{col}")
                at = loser.name_at
                result.errors[loser.path] = ConfigErrors(
                    [ConfigError(message, path=loser.path, line=at.line, col=at.col)])
    return result


def load_channels(
    daemon: DaemonConfig,
    kinds: Mapping[str, type[ChannelConfig]],
    *,
    environ: Mapping[str, str] | None = None,
    holders: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ChannelSet:
    """Load every file of :func:`list_channel_files` (``daemon.channels_dir``).

    Each file is judged alone, within ``limits``; duplicate names as
    :func:`collect_channels` says.
    """
    outcomes: dict[str, LoadedChannel | ConfigErrors] = {}
    for path in list_channel_files(daemon.channels_dir):
        try:
            outcomes[path] = read_channel_file(path, daemon, kinds, environ=environ,
                                               limits=limits)
        except ConfigErrors as e:
            outcomes[path] = e
    return collect_channels(outcomes, holders)
