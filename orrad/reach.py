"""How the client commands (``status``, ``reload``, ``send``) find the running daemon.

In order: the address the running daemon recorded in its ``state_dir``
(:mod:`orrad.state.address`), then ``api.listen`` from the daemon file. The daemon file
need not be valid: while an operator edits it, the commands must still reach the daemon
(to see it running, or to hear from ``orrad reload`` why the new file is rejected). So
when the file does not load, only ``state_dir``, ``api.listen`` and ``api.token`` are taken
from it, as far as they can be read, and one line says so.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import msgspec
import yaml

from orrad.config import ApiConfig, DaemonConfig, expand, load_daemon_config
from orrad.config.files import read_regular_file
from orrad.config.yamlpos import load_yaml_file, unwrap
from orrad.errors import ConfigError, ConfigErrors
from orrad.state.address import read_api_address

__all__ = ["client_config"]

log = logging.getLogger(__name__)


def client_config(path: str | None) -> DaemonConfig:
    """The daemon file's settings as far as a client command needs them (see module doc).

    Raises:
        ConfigError: an ``api`` key or ``state_dir`` cannot be expanded (a missing
            variable), so there is no address to try.
    """
    try:
        config = load_daemon_config(path)
    except ConfigErrors as exc:
        first = exc.errors[0]
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        print(f"orrad: note: the daemon file does not load: {_one_line(str(first))}{more}; "
              "reaching the daemon anyway (`orrad check` lists every problem)", file=sys.stderr)
        assert path is not None  # the built-in defaults always load
        config = _client_settings_only(path)
    recorded = read_api_address(config.state_dir)
    if recorded is not None and recorded != config.api.listen:
        log.debug("the running daemon listens on %s (recorded in %s)", recorded,
                  config.state_dir)
        config = msgspec.structs.replace(
            config, api=msgspec.structs.replace(config.api, listen=recorded))
    return config


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _client_settings_only(path: str) -> DaemonConfig:
    """``state_dir``, ``api.listen`` and ``api.token`` of a daemon file that does not load.

    An operator's shell often lacks the service's secrets (provider keys live in the
    unit's environment or credentials), so only these keys are expanded.
    """
    defaults = load_daemon_config(None)
    raw = _readable_mapping(path)
    api = raw.get("api")
    api = api if isinstance(api, dict) else {}
    base_dir = os.path.dirname(os.path.abspath(path))
    values: dict[str, str] = {}
    for key, default in (("listen", defaults.api.listen), ("token", defaults.api.token)):
        values[key] = _expanded(api.get(key, default), f"api.{key}", path, base_dir)
    if "state_dir" in raw:
        state_dir = _expanded(raw["state_dir"], "state_dir", path, base_dir)
    else:  # as the loader does: systemd's STATE_DIRECTORY, else the default (".orrad")
        state_dir = (os.environ.get("STATE_DIRECTORY", "").split(":")[0]
                     or DaemonConfig().state_dir)
    # Relative to the daemon file's folder, like every path in it.
    state_dir = os.path.normpath(os.path.join(base_dir, os.path.expanduser(state_dir)))
    return msgspec.structs.replace(defaults, state_dir=state_dir, api=ApiConfig(**values))


def _expanded(value: Any, key: str, path: str, base_dir: str) -> str:
    try:
        return expand(str(value), environ=os.environ, base_dir=base_dir)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", path=path) from None


def _readable_mapping(path: str) -> dict[str, Any]:
    """The file's top-level mapping: strictly parsed when possible, else leniently.

    The strict reader stops at the first duplicate key or syntax error. For a file that
    already passed its bounds (a regular file of at most 1 MiB), PyYAML's own safe loader
    is tried next, where a repeated key's last value wins; a file neither can read gives
    an empty mapping (the defaults).
    """
    doc, _ = load_yaml_file(path)
    if doc.data is not None:
        data = unwrap(doc.data)
        return data if isinstance(data, dict) else {}
    try:
        text = read_regular_file(path).decode("utf-8", errors="replace")
        data = yaml.safe_load(text)
    except (ConfigError, yaml.YAMLError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
