"""Signing keys, thumbprints and the key ring."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import jwt
import pytest

from sidecar.errors import ConfigError
from sidecar.tokens import (
    KeyRing,
    SigningKey,
    generate_private_key,
    jwk_thumbprint,
    load_or_create_key,
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
