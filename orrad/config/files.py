"""Reading configuration files (and ``${file:…}`` references) without trusting them.

A path in a channels folder may name anything: a FIFO that never delivers a byte, a
device (``/dev/zero`` never ends), a symlink to either, or a huge regular file.
:func:`read_regular_file` reads only regular files, never blocks on opening (``O_NONBLOCK``:
a FIFO swapped in after the check does not wait for a writer) and reads at most
``max_bytes + 1`` bytes, so neither a hang nor a memory blow-up can come out of it.
"""

from __future__ import annotations

import os
import stat

from orrad.errors import ConfigError

__all__ = ["MAX_FILE_BYTES", "read_regular_file", "read_regular_text"]

MAX_FILE_BYTES = 1024 * 1024
"""Default cap: 1 MiB, far above any sensible configuration file or secret."""

_CHUNK = 64 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _not_regular(path: str, mode: int) -> ConfigError:
    kind = _kind(mode)
    try:
        if os.path.islink(path):
            kind = f"a symbolic link to {kind}" if kind.startswith("a ") else "a symbolic link"
    except OSError:
        pass
    return ConfigError(f"not a regular file ({kind})", path=path)


def _size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def read_regular_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The contents of the regular file ``path``, at most ``max_bytes`` long.

    Raises:
        ConfigError: (with ``path``, no line) the file cannot be read, is not a regular
            file (FIFO, device, socket, directory, or a symlink to one), or is larger than
            ``max_bytes``. The message never contains any of the file's contents.
    """
    try:
        # Judge the path before opening it: opening some devices has effects of its own.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", path=path) from None
    try:
        # The path may have been replaced between stat and open: judge what was opened.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        too_big = ConfigError(f"file is larger than {_size(max_bytes)}", path=path)
        if info.st_size > max_bytes:
            raise too_big
        chunks: list[bytes] = []
        total = 0
        while True:  # st_size may lie (/proc files say 0): read with a bound, not read()
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise too_big
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", path=path) from None
    finally:
        os.close(fd)


def read_regular_text(path: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """:func:`read_regular_file` decoded as UTF-8.

    Raises:
        ConfigError: as :func:`read_regular_file`, or ``file is not UTF-8 text``.
    """
    data = read_regular_file(path, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8 text", path=path) from None
