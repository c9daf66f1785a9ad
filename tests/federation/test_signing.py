"""Request signing: the exact string, a vector checked with ``openssl dgst -hmac``, and
every verification failure with its code, in the documented order."""

from __future__ import annotations

import logging

import pytest

from orrad.federation.errors import SignatureError
from orrad.federation.signing import (
    SIGNED_HEADERS,
    NonceCache,
    Signer,
    Verifier,
    compute_signature,
    new_nonce,
    signed_headers,
    string_to_sign,
)

T0 = 1_700_000_000
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"
BODY = b'{"txn_id":"t1"}'
SECRETS = {"alpha": "s3cret", "gamma": "gamma-secret"}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sign(
    *, origin: str = "alpha", destination: str = "beta", secret: str = "s3cret",
    method: str = "POST", target: str = "/federation/v1/relay", body: bytes = BODY,
    at: float = T0, nonce: str = NONCE,
) -> dict[str, str]:
    return Signer(origin, {destination: secret}, clock=lambda: at,
                  nonce=lambda: nonce).headers(destination, method, target, body)


def code_of(verifier: Verifier, headers: dict[str, str], *, method: str = "POST",
            target: str = "/federation/v1/relay", body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.verify(method, target, headers, body)
    assert info.value.status == 401
    return info.value.code


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> Verifier:
    return Verifier("beta", SECRETS, clock=clock)


# -- the string and the vector ---------------------------------------------------------------


def test_string_to_sign_is_eight_lf_joined_lines_without_a_trailing_newline() -> None:
    assert string_to_sign("post", "/federation/v1/relay", "alpha", "beta", str(T0), NONCE,
                          BODY) == (
        b"ORRAD-HMAC-SHA256\n"
        b"POST\n"
        b"/federation/v1/relay\n"
        b"alpha\n"
        b"beta\n"
        b"1700000000\n"
        b"AAAAAAAAAAAAAAAAAAAAAA\n"
        b"9f971a90e452c8f26f8295bec20017e4d6ddabb501c82d94093fbd772ff222ae"
    )


def test_vector_matches_openssl() -> None:
    # printf '...' | openssl dgst -sha256 -hmac s3cret, with the lines above.
    assert sign() == {
        "x-orrad-origin": "alpha",
        "x-orrad-destination": "beta",
        "x-orrad-timestamp": "1700000000",
        "x-orrad-nonce": NONCE,
        "x-orrad-signature":
            "eb6da34b309b5a39ee63560e400447aecc792ffacf668a02eca96037c6e3b216",
    }


def test_vector_with_query_and_empty_body() -> None:
    target = "/federation/v1/sessions?prefix=team%3Aops"
    message = string_to_sign("GET", target, "alpha", "beta", str(T0), NONCE, b"")
    assert message.endswith(
        b"\n/federation/v1/sessions?prefix=team%3Aops\nalpha\nbeta\n1700000000\n"
        b"AAAAAAAAAAAAAAAAAAAAAA\n"
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert compute_signature("s3cret", message) == (
        "f9eeaae8403f7960c813e71de141f5df2bd77334523baf7a996bdd76682756c2"
    )


def test_nonces_are_22_char_base64url_and_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 22 and n.replace("-", "").replace("_", "").isalnum() for n in nonces)


# -- verification ----------------------------------------------------------------------------


def test_good_request_returns_its_origin(verifier: Verifier) -> None:
    assert verifier.verify("POST", "/federation/v1/relay", sign(), BODY) == "alpha"


def test_each_peer_verifies_with_its_own_secret(verifier: Verifier) -> None:
    headers = sign(origin="gamma", secret="gamma-secret")
    assert verifier.verify("POST", "/federation/v1/relay", headers, BODY) == "gamma"


def test_wrong_secret_is_bad_signature(verifier: Verifier) -> None:
    assert code_of(verifier, sign(secret="guess")) == "bad_signature"


def test_another_peers_secret_does_not_authenticate_as_that_peer(verifier: Verifier) -> None:
    # gamma knows its own secret, but claims to be alpha.
    assert code_of(verifier, sign(origin="alpha", secret="gamma-secret")) == "bad_signature"


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/federation/v1/relay", b'{"txn_id":"t2"}'),  # body changed
        ("PUT", "/federation/v1/relay", BODY),  # method changed
        ("POST", "/federation/v1/relay?x=1", BODY),  # query added
        ("POST", "/federation/v1/relay/", BODY),  # path changed
    ],
)
def test_any_change_to_the_signed_parts_is_bad_signature(
    verifier: Verifier, method: str, target: str, body: bytes
) -> None:
    assert code_of(verifier, sign(), method=method, target=target, body=body) == \
        "bad_signature"


def test_query_is_signed(verifier: Verifier) -> None:
    headers = sign(method="GET", target="/federation/v1/sessions?prefix=a", body=b"")
    assert code_of(verifier, headers, method="GET", target="/federation/v1/sessions?prefix=b",
                   body=b"") == "bad_signature"
    assert verifier.verify("GET", "/federation/v1/sessions?prefix=a", headers, b"") == "alpha"


def test_tampered_signed_header_is_bad_signature(verifier: Verifier) -> None:
    headers = sign()
    headers["x-orrad-nonce"] = "B" + NONCE[1:]
    assert code_of(verifier, headers) == "bad_signature"


def test_unknown_origin_is_unknown_peer(verifier: Verifier) -> None:
    assert code_of(verifier, sign(origin="mallory", secret="x")) == "unknown_peer"


def test_signed_for_another_destination_is_wrong_destination(verifier: Verifier) -> None:
    # Signed correctly with alpha's secret, but for gamma (T38).
    assert code_of(verifier, sign(destination="gamma")) == "wrong_destination"


@pytest.mark.parametrize(("offset", "code"), [
    (-301, "clock_skew"), (301, "clock_skew"), (-600, "clock_skew"),
    (-300, None), (300, None), (0, None),
])
def test_timestamp_tolerance_is_300_seconds_either_way(
    verifier: Verifier, offset: int, code: str | None
) -> None:
    headers = sign(at=T0 + offset)
    if code is None:
        assert verifier.verify("POST", "/federation/v1/relay", headers, BODY) == "alpha"
    else:
        assert code_of(verifier, headers) == code


def test_replayed_nonce_is_refused_within_the_window(verifier: Verifier, clock: Clock) -> None:
    headers = sign()
    verifier.verify("POST", "/federation/v1/relay", headers, BODY)
    clock.now += 299
    assert code_of(verifier, headers) == "replayed"
    clock.now = T0 + 300  # the last second the timestamp is acceptable: still remembered
    assert code_of(verifier, headers) == "replayed"
    clock.now = T0 + 301  # after the window the timestamp alone refuses it (T37)
    assert code_of(verifier, headers) == "clock_skew"


def test_same_nonce_from_two_peers_is_not_a_replay(verifier: Verifier) -> None:
    verifier.verify("POST", "/federation/v1/relay", sign(), BODY)
    gamma = sign(origin="gamma", secret="gamma-secret")
    assert verifier.verify("POST", "/federation/v1/relay", gamma, BODY) == "gamma"


def test_a_forged_request_does_not_burn_the_nonce(verifier: Verifier) -> None:
    forged = sign(secret="guess")
    assert code_of(verifier, forged) == "bad_signature"
    assert code_of(verifier, forged) == "bad_signature"  # not "replayed": nothing recorded
    assert len(verifier.nonces) == 0
    assert verifier.verify("POST", "/federation/v1/relay", sign(), BODY) == "alpha"


@pytest.mark.parametrize("missing", SIGNED_HEADERS)
def test_missing_header_is_bad_signature(verifier: Verifier, missing: str) -> None:
    headers = sign()
    del headers[missing]
    assert code_of(verifier, headers) == "bad_signature"


@pytest.mark.parametrize(("header", "value"), [
    ("x-orrad-timestamp", "+1700000000"), ("x-orrad-timestamp", "1.7e9"),
    ("x-orrad-nonce", "short"), ("x-orrad-nonce", "has space in it here"),
    ("x-orrad-signature", "EB6DA34B309B5A39EE63560E400447AECC792FFACF668A02ECA96037C6E3B216"),
    ("x-orrad-signature", "eb6d"),
])
def test_malformed_header_is_bad_signature(verifier: Verifier, header: str, value: str) -> None:
    headers = sign()
    headers[header] = value
    assert code_of(verifier, headers) == "bad_signature"


def test_check_order_peer_then_destination_then_clock_then_signature(
    verifier: Verifier,
) -> None:
    # Each request fails several checks; the first in the documented order wins.
    everything_wrong = sign(origin="mallory", destination="gamma", at=T0 + 999, secret="x")
    assert code_of(verifier, everything_wrong) == "unknown_peer"
    assert code_of(verifier, sign(destination="gamma", at=T0 + 999, secret="x")) == \
        "wrong_destination"
    assert code_of(verifier, sign(at=T0 + 999, secret="x")) == "clock_skew"


def test_signed_headers_picks_orrad_headers_and_refuses_duplicates() -> None:
    pairs = [("Host", "b"), ("X-Orrad-Origin", "alpha"), ("x-orrad-nonce", NONCE)]
    assert signed_headers(pairs) == {"x-orrad-origin": "alpha", "x-orrad-nonce": NONCE}
    with pytest.raises(SignatureError) as info:
        signed_headers([*pairs, ("x-orrad-origin", "gamma")])
    assert info.value.code == "bad_signature"


def test_signer_without_a_secret_for_the_destination() -> None:
    with pytest.raises(KeyError):
        Signer("alpha", {}).headers("beta", "GET", "/", b"")


def test_error_messages_never_contain_secrets(verifier: Verifier) -> None:
    for headers in (sign(secret="guess"), sign(destination="gamma"), sign(at=0)):
        with pytest.raises(SignatureError) as info:
            verifier.verify("POST", "/federation/v1/relay", headers, BODY)
        assert "s3cret" not in str(info.value)
        assert headers["x-orrad-signature"] not in str(info.value)


# -- the replay cache ------------------------------------------------------------------------


def test_nonce_cache_drops_expired_entries() -> None:
    cache = NonceCache()
    for i in range(100):
        cache.add(("alpha", f"n{i}"), expires_at=10.0, now=0.0)
    cache.add(("alpha", "late"), expires_at=20.0, now=10.0)  # expiry itself still live
    assert len(cache) == 101
    cache.add(("alpha", "later"), expires_at=30.0, now=10.5)
    assert len(cache) == 2
    assert cache.seen(("alpha", "late"), 20.0)
    assert not cache.seen(("alpha", "late"), 20.5)


def test_nonce_cache_is_bounded_and_evicts_the_soonest_to_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = NonceCache(max_entries=3)
    cache.add(("a", "1"), expires_at=50.0, now=0.0)
    cache.add(("a", "2"), expires_at=10.0, now=0.0)
    cache.add(("a", "3"), expires_at=40.0, now=0.0)
    with caplog.at_level(logging.WARNING):
        cache.add(("a", "4"), expires_at=60.0, now=0.0)
    assert len(cache) == 3
    assert ("a", "2") not in cache
    assert all(k in cache for k in [("a", "1"), ("a", "3"), ("a", "4")])
    assert "nonce cache full" in caplog.text


def test_verifier_memory_stays_bounded_over_many_windows(clock: Clock) -> None:
    verifier = Verifier("beta", SECRETS, clock=clock)
    for i in range(2000):
        clock.now = T0 + i  # one request a second for 2000 s
        headers = sign(at=clock.now, nonce=f"nonce-{i:016d}")
        verifier.verify("POST", "/federation/v1/relay", headers, BODY)
    # Only the nonces whose timestamps are still inside the window are kept.
    assert len(verifier.nonces) <= 301


def test_empty_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="empty federation secret for peer"):
        Verifier("beta", {"alpha": ""})
    with pytest.raises(ValueError, match="empty federation secret for peer"):
        Signer("alpha", {"beta": ""})
