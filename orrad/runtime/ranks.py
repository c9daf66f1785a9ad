"""A decoded copy of tiktoken's BPE ranks, so a start-up does not parse them again.

tiktoken reads an encoding's ``.tiktoken`` file (100,000 base64 lines for ``cl100k_base``)
and decodes it line by line in Python on every start: ~0.16 s here, the largest single step
before ``READY=1``. :func:`cached_ranks` keeps the decoded ``{token bytes: rank}`` map as
msgpack beside tiktoken's own cache files (decoding it takes ~0.04 s) under a name that
holds the sha256 tiktoken verifies the source file against, so a cache entry can only ever
stand for the file that hash names. The entry starts with the sha256 of its own payload:
a damaged or truncated entry is ignored and written again from the source. Only loads that
name an expected hash are cached; without one there is nothing to key the entry by.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable

import msgspec

__all__ = ["cached_ranks"]

log = logging.getLogger(__name__)

Ranks = dict[bytes, int]
LoadRanks = Callable[..., Ranks]

_DIGEST = 32  # bytes of sha256
_decode = msgspec.msgpack.Decoder(Ranks).decode
_encode = msgspec.msgpack.encode


def entry_path(folder: str, expected_hash: str) -> str:
    """Where the decoded ranks of the file whose sha256 is ``expected_hash`` are kept."""
    return os.path.join(folder, f"orrad-ranks-{expected_hash}.msgpack")


def cached_ranks(load: LoadRanks, folder: str) -> LoadRanks:
    """``load`` (tiktoken's ``load_tiktoken_bpe``) with its result kept in ``folder``."""

    def load_cached(path: str, expected_hash: str | None = None) -> Ranks:
        if not folder or not expected_hash:
            return load(path, expected_hash)
        entry = entry_path(folder, expected_hash)
        ranks = _read(entry)
        if ranks is None:
            ranks = load(path, expected_hash)  # verified against expected_hash by tiktoken
            _write(entry, ranks)
        return ranks

    return load_cached


def _read(entry: str) -> Ranks | None:
    try:
        with open(entry, "rb") as f:
            data = f.read()
    except OSError:
        return None
    digest, payload = data[:_DIGEST], data[_DIGEST:]
    if hashlib.sha256(payload).digest() != digest:
        log.warning("tokenizer cache %s is damaged; decoding the source file again", entry)
        return None
    try:
        ranks = _decode(payload)
    except msgspec.DecodeError:
        return None
    return ranks or None


def _write(entry: str, ranks: Ranks) -> None:
    """Write ``entry`` whole or not at all (a temporary file renamed into place); a folder
    that cannot be written only costs the next start the parse."""
    payload = _encode(ranks)
    folder = os.path.dirname(entry)
    try:
        fd, temporary = tempfile.mkstemp(prefix=".orrad-ranks-", dir=folder)
    except OSError as exc:
        log.debug("tokenizer cache not written to %s: %s", folder, exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(payload).digest())
            f.write(payload)
        os.replace(temporary, entry)
    except OSError as exc:
        log.debug("tokenizer cache %s not written: %s", entry, exc)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
