"""Federation signing headers are parsed exactly, even when the signature covers the odd
spelling: only the parse can refuse these (the signature itself is valid), so a lenient
``int()`` or ``str.split()`` anywhere in the verifier would let them through."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orrad.federation.errors import SignatureError
from orrad.federation.signing import (
    HEADER_DESTINATION,
    HEADER_NONCE,
    HEADER_ORIGIN,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    Verifier,
    compute_signature,
    string_to_sign,
)

T0 = 1_700_000_000
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"
BODY = b"{}"
TARGET = "/federation/v1/relay"


def headers(*, timestamp: str = str(T0), nonce: str = NONCE, origin: str = "alpha",
            destination: str = "beta") -> dict[str, str]:
    """Headers whose signature is valid over exactly these values."""
    message = string_to_sign("POST", TARGET, origin, destination, timestamp, nonce, BODY)
    return {HEADER_ORIGIN: origin, HEADER_DESTINATION: destination,
            HEADER_TIMESTAMP: timestamp, HEADER_NONCE: nonce,
            HEADER_SIGNATURE: compute_signature("s3cret", message)}


def verifier() -> Verifier:
    return Verifier("beta", {"alpha": "s3cret"}, clock=lambda: float(T0))


def test_the_exact_spelling_is_accepted() -> None:
    assert verifier().verify("POST", TARGET, headers(), BODY) == "alpha"


@pytest.mark.parametrize("timestamp", [
    f"+{T0}", f"{T0:_}", f" {T0}", f"{T0} ", f"\xa0{T0}", f"{T0}\x85", f"0000{T0}",
    f"{T0}.0", f"-{T0}", "１７００００００００", "١٧٠٠٠٠٠٠٠٠", f"{T0}\n", ""])
def test_a_signed_lenient_timestamp_is_bad_signature(timestamp: str) -> None:
    with pytest.raises(SignatureError) as info:
        verifier().verify("POST", TARGET, headers(timestamp=timestamp), BODY)
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("nonce", [f"{NONCE}\n", f" {NONCE}", "Ａ" * 22, f"{NONCE}=", "é" * 22])
def test_a_signed_odd_nonce_is_bad_signature(nonce: str) -> None:
    with pytest.raises(SignatureError) as info:
        verifier().verify("POST", TARGET, headers(nonce=nonce), BODY)
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("change", [str.upper, lambda s: s + "\n", lambda s: " " + s,
                                    lambda s: s.replace("a", "ａ", 1)])
def test_a_signature_in_another_spelling_is_bad_signature(change: Callable[[str], str]) -> None:
    sent = headers()
    sent[HEADER_SIGNATURE] = change(sent[HEADER_SIGNATURE])
    with pytest.raises(SignatureError) as info:
        verifier().verify("POST", TARGET, sent, BODY)
    assert info.value.code == "bad_signature"
