"""Decoding JSON that comes from outside, with its nesting bounded.

msgspec, like every recursive decoder, descends once per nested array or object and raises
``RecursionError`` (not ``msgspec.DecodeError``) near Python's recursion limit, and how
near depends on how deep the caller's stack already is. A 2 KB body of a thousand ``[``
would otherwise escape every ``except msgspec.DecodeError`` at the boundaries and surface
as a crash (an HTTP 500). Every decoder of untrusted JSON goes through :func:`decode`: a
document nested deeper than :data:`MAX_JSON_DEPTH` is refused with :class:`JSONTooDeep`,
which *is* a ``msgspec.DecodeError``, so each boundary's ordinary
bad-input handling answers it (400 ``bad_request``, a provider error, a skipped gateway
event). Anything within the bound decodes, and encodes again, at any stack depth orrad
reaches.

The depth is measured by a scan that runs in C: a body with at most ``limit`` brackets in
all is accepted at once (nearly every real body); otherwise strings are cut out with a
regular expression that never backtracks, the brackets are kept, and the running depth's
maximum is taken. 1 MiB of brackets is scanned in about 30 ms.

Model level: imports only :mod:`orrad.errors`.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, TypeVar, overload

import msgspec

from orrad.errors import OrradError

__all__ = ["MAX_JSON_DEPTH", "JSONTooDeep", "check_depth", "decode", "nesting_depth"]

MAX_JSON_DEPTH = 64
"""Arrays and objects inside one another, the outermost counted (``[[1]]`` is 2 deep)."""

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview | str

# A string from its opening quote to its closing one, escapes included; an unterminated
# string runs to the end. It always matches at a quote, so no position is scanned twice.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


class JSONTooDeep(OrradError, msgspec.DecodeError):
    """A JSON document nested deeper than the bound (a ``msgspec.DecodeError`` too)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"JSON is nested more than {limit} levels deep")


def _as_bytes(data: Buffer) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    return bytes(data)


def nesting_depth(data: Buffer) -> int:
    """The deepest nesting of arrays and objects in ``data`` (brackets in strings do not
    count). Meant for a quick refusal: for text that is not JSON it is only an estimate."""
    raw = _as_bytes(data)
    steps = _STRING.sub(b"", raw).translate(_STEP, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def check_depth(data: Buffer, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JSONTooDeep` when ``data`` is nested more than ``limit`` deep."""
    raw = _as_bytes(data) if not isinstance(data, bytes) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    if nesting_depth(raw) > limit:
        raise JSONTooDeep(limit)


@overload
def decode(data: Buffer, *, limit: int = MAX_JSON_DEPTH) -> Any: ...


@overload
def decode(data: Buffer, *, type: type[T], strict: bool = True,
           limit: int = MAX_JSON_DEPTH) -> T: ...


def decode(data: Buffer, *, type: Any = Any, strict: bool = True,
           limit: int = MAX_JSON_DEPTH) -> Any:
    """``msgspec.json.decode(data, type=type, strict=strict)`` for untrusted input.

    Raises:
        JSONTooDeep: nested more than ``limit`` deep (a ``msgspec.DecodeError``).
        msgspec.DecodeError: not JSON; ``msgspec.ValidationError``: not of ``type``.
    """
    check_depth(data, limit)
    try:
        return msgspec.json.decode(data, type=type, strict=strict)
    except RecursionError:  # only with a stack already near the limit
        raise JSONTooDeep(limit) from None

