"""HTTP header lines written by orrad itself (the server's responses, the provider client's
requests): checked before they go out, and kept once encoded.

A name must be an RFC 9110 token and a value visible ASCII with inner spaces and tabs: a
value with a newline in it (from a handler, or from configuration) would otherwise write
headers of its own. Imports nothing else of orrad.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["InvalidField", "LineCache", "field_line", "valid_value"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")


class InvalidField(ValueError):
    """A header that cannot be written as it is."""


def valid_value(value: str) -> bool:
    """Whether ``value`` may be written as a header value."""
    return _VALUE.fullmatch(value) is not None


def field_line(name: str, value: str) -> bytes:
    """``name: value\\r\\n`` once both are checked.

    Raises:
        InvalidField: the name is not a token, or the value has control or non-ASCII
            characters or surrounding whitespace.
    """
    if _TOKEN.fullmatch(name) is None or not valid_value(value):
        raise InvalidField(f"invalid header {name!r}: {value!r}")
    return f"{name}: {value}\r\n".encode("ascii")


class LineCache:
    """Header lines by ``(name, value)``, made by ``make`` the first time (most messages
    repeat the same few); at most ``size`` kept (all dropped when full)."""

    __slots__ = ("_lines", "_make", "_size")

    def __init__(self, make: Callable[[str, str], bytes], size: int = 512) -> None:
        self._make = make
        self._size = size
        self._lines: dict[tuple[str, str], bytes] = {}

    def line(self, name: str, value: str) -> bytes:
        """The line for ``name: value``; whatever ``make`` raises for it."""
        key = (name, value)
        line = self._lines.get(key)
        if line is None:
            line = self._make(name, value)
            if len(self._lines) >= self._size:
                self._lines.clear()
            self._lines[key] = line
        return line
