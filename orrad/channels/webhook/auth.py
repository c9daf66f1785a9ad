"""Webhook authentication: bearer tokens and Standard Webhooks signatures.

Signatures follow Standard Webhooks 1.0: HMAC-SHA256 keyed with the base64 part of a
``whsec_`` secret over ``"{webhook-id}.{webhook-timestamp}.{raw body}"``, sent as
``webhook-signature: v1,<base64> [v1,<base64> ...]``, with a ±300 s freshness window in
both directions. Every comparison is constant-time and every parse failure is a plain
refusal (401), never an exception escaping to the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable

from orrad.config import WebhookAuthConfig
from orrad.http import HTTPError, Request

__all__ = ["TOLERANCE_S", "WebhookAuth", "decode_secret", "sign"]

log = logging.getLogger(__name__)

TOLERANCE_S = 300
# Header syntax, checked exactly (``int()`` alone would take "+17", "1_7", " 17" or
# non-ASCII digits): unix seconds as 1-12 ASCII digits; a signature entry as "v1," and the
# standard base64 of a 32-byte HMAC-SHA256 (44 characters, one "=" of padding).
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_SIGNATURE_RE = re.compile(r"[A-Za-z0-9+/]{43}=")
SIGNATURE_BYTES = 32


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (the prefix is optional, as in the reference)."""
    raw = secret.removeprefix("whsec_")
    return base64.b64decode(raw, validate=True)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _unauthorized(reason: str, request: Request) -> HTTPError:
    # The reason goes to the log only; callers learn nothing about which check failed.
    log.warning("webhook request from %s refused: %s", request.client, reason)
    return HTTPError(401, "unauthorized", "authentication failed")


def _offered_signatures(header: str) -> list[bytes]:
    """The well-formed ``v1`` signatures of a ``webhook-signature`` header: entries are
    separated by single ASCII spaces; other versions (``v1a``) and malformed entries are
    skipped (a header with none left is refused by the caller)."""
    offered: list[bytes] = []
    for entry in header.split(" "):
        version, comma, value = entry.partition(",")
        if version != "v1" or not comma or not _SIGNATURE_RE.fullmatch(value):
            continue
        digest = base64.b64decode(value, validate=True)  # cannot fail after the pattern
        if len(digest) == SIGNATURE_BYTES:
            offered.append(digest)
    return offered


class WebhookAuth:
    """Checks one request against a channel's ``auth`` settings (any may be absent)."""

    def __init__(self, config: WebhookAuthConfig | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.bearer = (f"Bearer {config.bearer_token}".encode()
                       if config and config.bearer_token else None)
        self.keys = [decode_secret(s) for s in config.signing_secrets] if config else []
        self.clock = clock

    @property
    def signs(self) -> bool:
        return bool(self.keys)

    def check(self, request: Request) -> None:
        """Raise :class:`HTTPError` 401 unless the request carries valid credentials."""
        if self.bearer is not None:
            given = (request.header("authorization") or "").encode("latin-1")
            if not hmac.compare_digest(given, self.bearer):
                raise _unauthorized("missing or wrong bearer token", request)
        if self.keys:
            self._check_signature(request)

    def _check_signature(self, request: Request) -> None:
        msg_id = request.header("webhook-id")
        stamp = request.header("webhook-timestamp")
        header = request.header("webhook-signature")
        if not msg_id or not stamp or not header:
            raise _unauthorized("missing webhook-id, webhook-timestamp or webhook-signature",
                                request)
        if not _TIMESTAMP_RE.fullmatch(stamp):
            raise _unauthorized("malformed webhook-timestamp", request)
        timestamp = int(stamp)
        if abs(self.clock() - timestamp) > TOLERANCE_S:
            raise _unauthorized("webhook-timestamp outside the 300 s window", request)
        offered = _offered_signatures(header)
        # The signature covers the header exactly as sent, not our re-formatting of it.
        prefix = f"{msg_id}.{stamp}.".encode()
        for key in self.keys:
            expected = hmac.new(key, prefix + request.body, hashlib.sha256).digest()
            # compare against every offer, without an early exit on the first match
            if any([hmac.compare_digest(expected, sig) for sig in offered]):
                return
        raise _unauthorized("no valid signature", request)

    def signature_headers(self, msg_id: str, body: bytes) -> list[tuple[str, str]]:
        """Headers for an outgoing callback, signed with the first secret when there is one."""
        timestamp = int(self.clock())
        headers = [("webhook-id", msg_id), ("webhook-timestamp", str(timestamp))]
        if self.keys:
            headers.append(("webhook-signature", sign(self.keys[0], msg_id, timestamp, body)))
        return headers
