"""Per-pair HMAC-SHA256 signing of federation requests (CONTRACT §6).

Every federation request carries five headers::

    x-orrad-origin:       the sender's instance name
    x-orrad-destination:  the receiver's instance name
    x-orrad-timestamp:    unix time in whole seconds, decimal ASCII digits ("1700000000")
    x-orrad-nonce:        16-64 characters of A-Z a-z 0-9 - _ (we send 128 random bits,
                          base64url without padding: 22 characters)
    x-orrad-signature:    lowercase hex HMAC-SHA256 (64 characters)

The signature is ``HMAC-SHA256(key, string_to_sign)`` where ``key`` is the UTF-8 bytes of
the secret shared by the two daemons (the peer's ``secret``, else ``federation.secret``)
and ``string_to_sign`` is the UTF-8 bytes of these eight lines joined by a single ``\\n``
(LF), with no trailing newline::

    ORRAD-HMAC-SHA256
    <METHOD>        the request method in upper case, e.g. POST
    <TARGET>        the request target exactly as sent on the request line: the path as
                    encoded on the wire, plus "?" and the raw query when the target has
                    one (e.g. /federation/v1/sessions?prefix=team%3Aops); nothing is
                    decoded, re-encoded or re-ordered
    <ORIGIN>        the x-orrad-origin value
    <DESTINATION>   the x-orrad-destination value
    <TIMESTAMP>     the x-orrad-timestamp value
    <NONCE>         the x-orrad-nonce value
    <BODY-SHA256>   lowercase hex SHA-256 of the exact body bytes (of b"" when there is
                    no body: e3b0c442...b855)

The receiver (:class:`Verifier`) checks, in this order, and answers 401 with the first
failing check's code, processing nothing:

1. every header is present once and well formed, else ``bad_signature``;
2. the origin is a configured peer, else ``unknown_peer``;
3. the destination is this daemon's instance, else ``wrong_destination``;
4. the timestamp is within ±300 s of the receiver's clock, else ``clock_skew``;
5. the signature matches, computed with *that origin's* secret and compared in constant
   time, else ``bad_signature`` (a peer's secret authenticates only that peer);
6. the ``(origin, nonce)`` pair was not seen in a request that passed check 5 within the
   window, else ``replayed``.

A nonce is recorded only once the signature has verified, so a forger cannot burn a
genuine sender's nonces. It is remembered until its timestamp leaves the window
(``timestamp + tolerance``), after which check 4 rejects a replay anyway; the cache is
bounded, and when full the entry nearest to expiry is dropped first (replays that slip
through then are still answered from the receiver's ``(origin, txn_id)`` ledger).

Responses are not signed: they are protected by TLS in production.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import logging
import re
import secrets as _secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from orrad.federation.errors import SignatureError

__all__ = [
    "ALGORITHM",
    "DEFAULT_TOLERANCE_S",
    "HEADER_DESTINATION",
    "HEADER_NONCE",
    "HEADER_ORIGIN",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SIGNED_HEADERS",
    "NonceCache",
    "Signer",
    "Verifier",
    "body_digest",
    "compute_signature",
    "new_nonce",
    "signed_headers",
    "string_to_sign",
]

logger = logging.getLogger(__name__)

ALGORITHM: Final = "ORRAD-HMAC-SHA256"
DEFAULT_TOLERANCE_S: Final = 300.0
HEADER_ORIGIN: Final = "x-orrad-origin"
HEADER_DESTINATION: Final = "x-orrad-destination"
HEADER_TIMESTAMP: Final = "x-orrad-timestamp"
HEADER_NONCE: Final = "x-orrad-nonce"
HEADER_SIGNATURE: Final = "x-orrad-signature"
SIGNED_HEADERS: Final = (
    HEADER_ORIGIN, HEADER_DESTINATION, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE,
)

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")

Clock = Callable[[], float]
"""Unix time in seconds (``time.time``); injectable for tests."""


def body_digest(body: bytes) -> str:
    """Lowercase hex SHA-256 of ``body``."""
    return hashlib.sha256(body).hexdigest()


def string_to_sign(
    method: str, target: str, origin: str, destination: str, timestamp: str, nonce: str,
    body: bytes,
) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    lines = (ALGORITHM, method.upper(), target, origin, destination, timestamp, nonce,
             body_digest(body))
    return "\n".join(lines).encode("utf-8")


def compute_signature(secret: str, message: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``message`` keyed with the UTF-8 bytes of ``secret``."""
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def new_nonce() -> str:
    """128 random bits, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(_secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def signed_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``x-orrad-*`` headers of ``pairs`` (names in any case) for :meth:`Verifier.verify`.

    Raises:
        SignatureError: ``bad_signature`` when one of them appears more than once.
    """
    found: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in SIGNED_HEADERS:
            if key in found:
                raise SignatureError("bad_signature", f"header {key} given more than once")
            found[key] = value
    return found


class Signer:
    """Signs this daemon's outgoing requests, each with the secret of its destination.

    Args:
        instance: this daemon's instance name (the origin of every request).
        secrets: peer name -> the secret shared with that peer.
        clock: unix time in seconds.
        nonce: makes a fresh nonce per request.

    Raises:
        ValueError: a secret is empty.
    """

    def __init__(
        self, instance: str, secrets: Mapping[str, str], *, clock: Clock = time.time,
        nonce: Callable[[], str] = new_nonce,
    ) -> None:
        self.instance = instance
        self._secrets = _checked(secrets)
        self._clock = clock
        self._nonce = nonce

    def headers(self, destination: str, method: str, target: str, body: bytes) -> dict[str, str]:
        """The five ``x-orrad-*`` headers for one request to ``destination``.

        ``target`` must be exactly what goes on the request line (path + ``?`` + query).

        Raises:
            KeyError: no secret is configured for ``destination``.
        """
        secret = self._secrets[destination]
        timestamp = str(int(self._clock()))
        nonce = self._nonce()
        message = string_to_sign(method, target, self.instance, destination, timestamp,
                                 nonce, body)
        return {
            HEADER_ORIGIN: self.instance,
            HEADER_DESTINATION: destination,
            HEADER_TIMESTAMP: timestamp,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: compute_signature(secret, message),
        }


def _checked(secrets: Mapping[str, str]) -> dict[str, str]:
    empty = sorted(peer for peer, secret in secrets.items() if not secret)
    if empty:  # an empty HMAC key would let anyone sign
        raise ValueError(f"empty federation secret for peer(s): {', '.join(empty)}")
    return dict(secrets)


class NonceCache:
    """Remembers ``(origin, nonce)`` pairs until their expiry time; bounded.

    An entry is live up to and including its expiry time. Expired entries are dropped on
    every :meth:`add`; when ``max_entries`` live entries are held, the one expiring soonest
    is dropped to make room (and a warning logged). Memory is O(``max_entries``).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: object) -> bool:
        return key in self._expiry

    def seen(self, key: tuple[str, str], now: float) -> bool:
        """Whether ``key`` is held and has not expired at ``now`` (expiry itself included)."""
        expiry = self._expiry.get(key)
        return expiry is not None and expiry >= now

    def add(self, key: tuple[str, str], expires_at: float, now: float) -> None:
        """Remember ``key`` until ``expires_at`` (the later of its old and new expiry)."""
        self._prune(now)
        if key not in self._expiry and len(self._expiry) >= self.max_entries:
            self._evict_one()
            logger.warning("federation nonce cache full (%d entries); dropped the oldest",
                           self.max_entries)
        expiry = max(expires_at, self._expiry.get(key, expires_at))
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))
        self._compact()

    def _prune(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] < now:
            at, key = heapq.heappop(heap)
            if expiry.get(key) == at:
                del expiry[key]

    def _evict_one(self) -> None:
        while self._heap:
            at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == at:  # else a stale entry of a re-added key
                del self._expiry[key]
                return

    def _compact(self) -> None:
        # A key re-added with a later expiry leaves a stale heap entry behind; keep the heap
        # from growing past about twice the live entries.
        if len(self._heap) > 2 * len(self._expiry) + 16:
            self._heap = [(at, key) for key, at in self._expiry.items()]
            heapq.heapify(self._heap)


class Verifier:
    """Authenticates incoming federation requests (the checks of the module docstring).

    Args:
        instance: this daemon's instance name; requests must be addressed to it.
        secrets: peer name -> the secret shared with that peer. A peer not listed is
            ``unknown_peer``; a request is verified only with its own origin's secret.
        clock: unix time in seconds.
        tolerance_s: how far a request's timestamp may be from ``clock()``, either way.
        max_nonces: bound of the replay cache.

    Raises:
        ValueError: a secret is empty.
    """

    def __init__(
        self, instance: str, secrets: Mapping[str, str], *, clock: Clock = time.time,
        tolerance_s: float = DEFAULT_TOLERANCE_S, max_nonces: int = 100_000,
    ) -> None:
        self.instance = instance
        self._secrets = _checked(secrets)
        self._clock = clock
        self.tolerance_s = tolerance_s
        self.nonces = NonceCache(max_nonces)

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> str:
        """Check one request and return its (authenticated) origin.

        Args:
            method: the request method.
            target: the raw request target (path and query as on the request line).
            headers: the ``x-orrad-*`` headers with lower-case names (extra ones ignored;
                see :func:`signed_headers`).
            body: the exact body bytes.

        Raises:
            SignatureError: with the code of the first failing check.
        """
        values: dict[str, str] = {}
        for name in SIGNED_HEADERS:
            value = headers.get(name)
            if value is None or not value:
                raise SignatureError("bad_signature", f"missing header {name}")
            values[name] = value
        origin, destination = values[HEADER_ORIGIN], values[HEADER_DESTINATION]
        timestamp, nonce = values[HEADER_TIMESTAMP], values[HEADER_NONCE]
        signature = values[HEADER_SIGNATURE]
        if not _TIMESTAMP_RE.fullmatch(timestamp):
            raise SignatureError("bad_signature", "malformed x-orrad-timestamp")
        if not _NONCE_RE.fullmatch(nonce):
            raise SignatureError("bad_signature", "malformed x-orrad-nonce")
        if not _SIGNATURE_RE.fullmatch(signature):
            raise SignatureError("bad_signature", "malformed x-orrad-signature")
        secret = self._secrets.get(origin)
        if secret is None:
            shown = repr(origin) if _NAME_RE.fullmatch(origin) else "(invalid name)"
            raise SignatureError("unknown_peer", f"unknown peer {shown}")
        if destination != self.instance:
            shown = repr(destination) if _NAME_RE.fullmatch(destination) else "another daemon"
            raise SignatureError("wrong_destination", f"request is for {shown}, this is "
                                                      f"{self.instance!r}")
        now = self._clock()
        skew = int(timestamp) - now
        if abs(skew) > self.tolerance_s:
            raise SignatureError("clock_skew", f"timestamp is {skew:+.0f}s from this daemon's "
                                               f"clock (tolerance ±{self.tolerance_s:g}s)")
        expected = compute_signature(
            secret, string_to_sign(method, target, origin, destination, timestamp, nonce, body)
        )
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("bad_signature", "signature does not match")
        key = (origin, nonce)
        if self.nonces.seen(key, now):
            raise SignatureError("replayed", "nonce already used")
        self.nonces.add(key, int(timestamp) + self.tolerance_s, now)
        return origin
