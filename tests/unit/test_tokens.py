"""Signing keys, thumbprints and the key ring, and the JOSE core's strictness rules
(`sidecar.jws`: base64url, compact parsing, header rules, Ed25519 algorithm names)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidecar.errors import ConfigError
from sidecar.jws import (
    EDDSA_ALGS,
    JwsError,
    b64url_decode,
    b64url_encode,
    check_header,
    jwk_thumbprint,
    narrow_algorithms,
    parse,
)
from sidecar.tokens import (
    KeyRing,
    SigningKey,
    generate_private_key,
    load_or_create_key,
    verify_with,
)


def test_rfc7638_example_thumbprint() -> None:
    """The RFC 7638 §3.1 example key has the published thumbprint."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
        "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_signed_token_verifies_with_pyjwt(alg: str) -> None:
    """Our hand-built compact JWS verifies with PyJWT for both algorithms."""
    key = SigningKey.from_private_key(generate_private_key(alg))
    token = key.sign({"sub": "s", "aud": "a"})
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, key=jwt.PyJWK(dict(key.jwk)), algorithms=[alg], audience="a")
    assert header == {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    assert claims == {"sub": "s", "aud": "a"}
    assert "d" not in key.jwk
    assert key.kid not in repr(key.private_key)


def test_generated_dev_key_is_private(tmp_path: Path) -> None:
    """A generated key file is mode 0600; a group/world-readable key is refused."""
    path = tmp_path / "k.pem"
    key, generated = load_or_create_key(path, "EdDSA", create=True)
    assert generated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, generated_again = load_or_create_key(path, "EdDSA", create=False)
    assert again.kid == key.kid
    assert not generated_again
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_key(path, "EdDSA", create=False)


def test_missing_key_outside_dev_is_refused(tmp_path: Path) -> None:
    """Without dev mode, a missing key file is a start-up error, not a generated key."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_or_create_key(tmp_path / "nope.pem", "EdDSA", create=False)


def test_keyring_retires_old_key_after_its_last_token() -> None:
    """After rotation both keys verify until the old key's retirement time, then only the
    new one is published."""
    old = SigningKey.from_private_key(generate_private_key("EdDSA"))
    new = SigningKey.from_private_key(generate_private_key("ES256"))
    ring = KeyRing(old)
    token = old.sign({"iss": "i", "jti": "j", "exp": 2000})
    ring.rotate(new, old_retire_at=1000.0)
    assert ring.verify(token, issuer="i", now=999.0) is not None
    assert {p.jwk["kid"] for p in ring.published(999.0)} == {old.kid, new.kid}
    assert ring.drop_expired(1000.0) == [old.kid]
    assert ring.verify(token, issuer="i", now=1001.0) is None
    assert [p.jwk["kid"] for p in ring.published(1001.0)] == [new.kid]


# ---------------------------------------------------------------------------- the JOSE core


def _compact(header: str, payload: str, key: ed25519.Ed25519PrivateKey) -> str:
    """A compact JWS of exactly these JSON texts, validly signed by `key` (EdDSA)."""
    signing_input = f"{b64url_encode(header.encode())}.{b64url_encode(payload.encode())}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


@pytest.mark.parametrize(
    "value",
    ["QR", "QUF", "QQ==", "Q", "a+b/", "a b", "é"],
    ids=["noncanonical-2", "noncanonical-3", "padded", "one-char-tail", "std-alphabet",
         "space", "non-ascii"],
)  # fmt: skip
def test_base64url_is_strict(value: str) -> None:
    """Only canonical base64url without padding decodes (RFC 7515 §2, RFC 4648 §3.5): "QR"
    would otherwise decode like "QQ", letting a token change without changing its meaning."""
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode(value)
    assert b64url_decode("QQ") == b"A"
    assert b64url_decode(b64url_encode(bytes(range(256)))) == bytes(range(256))


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ('{"alg":"EdDSA","alg":"none"}', '{"sub":"a"}'),
        ('{"alg":"EdDSA"}', '{"sub":"a","sub":"b"}'),
        ('{"alg":"EdDSA"}', '{"aud":"x","iss":"i","aud":"y"}'),
    ],
    ids=["header", "sub", "aud"],
)
def test_duplicate_members_are_refused_even_when_signed(header: str, payload: str) -> None:
    """A validly signed token with a duplicate header or claim member is malformed: parsers
    would disagree on which value counts (RFC 7515 §5.2, RFC 7519 §4)."""
    private = ed25519.Ed25519PrivateKey.generate()
    key = SigningKey.from_private_key(private)
    token = _compact(header, payload, private)
    with pytest.raises(JwsError) as err:
        parse(token)
    assert err.value.cause == "malformed"
    assert "duplicate member" in err.value.message
    assert verify_with(token, key.jwk, issuer="i") is None


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
def test_key_reference_headers_are_refused_before_any_key_lookup(member: str) -> None:
    """RFC 8725 §3.10: a header that points at key material is refused outright; only a
    DPoP proof may carry `jwk` (its key IS the jwk, RFC 9449 §4.2)."""
    header = {"alg": "ES256", member: "x"}
    with pytest.raises(JwsError) as err:
        check_header(header, frozenset({"ES256"}))
    dpop = "ES256" if member == "jwk" else None
    if dpop is None:
        with pytest.raises(JwsError):
            check_header(header, frozenset({"ES256"}), embedded_jwk=True)
    else:
        assert check_header(header, frozenset({"ES256"}), embedded_jwk=True) == dpop
    assert err.value.cause == "header_key_reference"


def test_crit_and_unlisted_algorithms_are_refused() -> None:
    """`crit` (RFC 7515 §4.1.11: we understand no extension), `none`, HS256 and any alg
    outside the caller's allow-list are refused (RFC 8725 §3.1)."""
    allowed = frozenset({"ES256"})
    causes = {}
    for name, header in {
        "crit": {"alg": "ES256", "crit": ["exp"], "exp": 1},
        "none": {"alg": "none"},
        "hs256": {"alg": "HS256"},
        "missing": {},
    }.items():
        with pytest.raises(JwsError) as err:
            check_header(header, allowed)
        causes[name] = err.value.cause
    assert causes == {
        "crit": "crit_unsupported",
        "none": "alg_not_allowed",
        "hs256": "alg_not_allowed",
        "missing": "alg_not_allowed",
    }


def test_ed25519_names_are_one_algorithm_for_an_ed25519_key() -> None:
    """RFC 9864 §2.2: `Ed25519` and `EdDSA` name the same operation on an Ed25519 key, so a
    JWK pinned to either verifies both; an alg that does not fit the key is refused."""
    assert narrow_algorithms(EDDSA_ALGS, "EdDSA") == EDDSA_ALGS
    assert narrow_algorithms(EDDSA_ALGS, "Ed25519") == EDDSA_ALGS
    assert narrow_algorithms(frozenset({"ES256"}), None) == frozenset({"ES256"})
    with pytest.raises(ValueError, match="does not fit"):
        narrow_algorithms(frozenset({"ES256"}), "Ed25519")


def test_sidecar_can_emit_the_fully_specified_ed25519_name() -> None:
    """With ed25519_alg=Ed25519 the header and the JWKS say Ed25519 (same key id, same
    signature); the key ring verifies it, and tokens of either name verify with either JWK."""
    private = generate_private_key("EdDSA")
    modern = SigningKey.from_private_key(private, ed25519_alg="Ed25519")
    classic = SigningKey.from_private_key(private)
    token = modern.sign({"iss": "i", "jti": "j"})
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header == {"alg": "Ed25519", "typ": "at+jwt", "kid": classic.kid}
    assert modern.jwk["alg"] == "Ed25519"
    assert KeyRing(modern).verify(token, issuer="i", now=0.0) == {"iss": "i", "jti": "j"}
    assert verify_with(token, classic.jwk, issuer="i") == {"iss": "i", "jti": "j"}
    assert verify_with(classic.sign({"iss": "i"}), modern.jwk, issuer="i") == {"iss": "i"}
    es256 = SigningKey.from_private_key(generate_private_key("ES256"), ed25519_alg="Ed25519")
    assert es256.alg == "ES256"
    with pytest.raises(ConfigError, match="ed25519_alg"):
        SigningKey.from_private_key(private, ed25519_alg="Ed448")
