"""Where a running daemon's API listens, recorded in its ``state_dir`` for the client commands.

The daemon file says where the API *should* listen; while the file is being edited (broken,
or with a new ``api.listen`` that only a restart applies) it no longer says where the
running daemon *does* listen. The daemon therefore writes ``api.json`` once its API is
bound and removes it when it stops; ``orrad status``, ``reload`` and ``send`` prefer it
while the process that wrote it is alive. The file holds no secret (the token stays in the
daemon file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

__all__ = ["ADDRESS_FILE", "clear_api_address", "read_api_address", "record_api_address"]

log = logging.getLogger(__name__)

ADDRESS_FILE = "api.json"
MAX_RECORD_BYTES = 4096  # a record is some 60 bytes; anything larger is not one of ours


def _path(state_dir: str) -> str:
    return os.path.join(state_dir, ADDRESS_FILE)


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def record_api_address(state_dir: str, host: str, port: int, *, pid: int | None = None) -> None:
    """Write ``{"listen": "host:port", "pid": …}`` atomically (write, then rename).

    A failure is logged, not raised: the record only helps the client commands.
    """
    record = {"listen": _format(host, port), "pid": os.getpid() if pid is None else pid}
    path = _path(state_dir)
    temporary = f"{path}.{record['pid']}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot record the API address in %s: %s", path, exc.strerror or exc)
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def clear_api_address(state_dir: str, *, pid: int | None = None) -> None:
    """Remove the record if this process (``pid``) wrote it; another daemon's stays."""
    mine = os.getpid() if pid is None else pid
    path = _path(state_dir)
    if _read(path).get("pid") == mine:
        with contextlib.suppress(OSError):
            os.unlink(path)


def read_api_address(state_dir: str) -> str | None:
    """The recorded ``host:port`` when the daemon that recorded it still runs, else None."""
    record = _read(_path(state_dir))
    listen, pid = record.get("listen"), record.get("pid")
    if not isinstance(listen, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    return listen


def _read(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as source:
            raw = source.read(MAX_RECORD_BYTES + 1)
    except OSError:
        return {}
    if len(raw) > MAX_RECORD_BYTES:
        return {}
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's (the service user's)
        return True
    except OSError:
        return False
    return True
