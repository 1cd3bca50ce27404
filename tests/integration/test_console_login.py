"""The console's ID token checks (OIDC Core §3.1.3.7) against a real OIDC issuer served over
HTTP on loopback (tests/oidc_issuer.py): discovery, JWKS, and tokens it signs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.console.auth import LoginError, OidcLogin
from sidecar.console.settings import ConsoleSettings
from tests.identity_kit import Key, sign_raw
from tests.oidc_issuer import OidcIssuer

pytestmark = pytest.mark.integration
CLIENT = "jit-console"
NONCE = "n-0123456789"


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    server = OidcIssuer().start()
    yield server
    server.stop()


def claims(issuer: OidcIssuer, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": issuer.url,
        "sub": "u-bob",
        "aud": CLIENT,
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "email": "bob@example.com",
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def check(issuer: OidcIssuer, token: str) -> dict[str, Any] | LoginError:
    settings = ConsoleSettings(
        sidecars={"local": Path("admin.sock")}, oidc_issuer=issuer.url, oidc_client_id=CLIENT
    )

    async def run() -> dict[str, Any] | LoginError:
        login = OidcLogin(settings)
        try:
            return await login.verify_id_token(token, NONCE)
        except LoginError as err:
            return err
        finally:
            await login.aclose()

    return asyncio.run(run())


def test_a_good_id_token_is_accepted(issuer: OidcIssuer) -> None:
    """A token the issuer signed, for this client, in time, with our nonce, is accepted."""
    result = check(issuer, issuer.keys[0].sign(claims(issuer), typ=None))
    assert isinstance(result, dict)
    assert result["email"] == "bob@example.com"


def test_an_ed25519_id_token_is_accepted(issuer: OidcIssuer) -> None:
    """An issuer signing with Ed25519 (EdDSA) is accepted, as for the sidecar's OIDC
    identities (jws.OIDC_JWT_ALGS)."""
    issuer.keys = [Key.generate("EdDSA")]
    result = check(issuer, issuer.keys[0].sign(claims(issuer), typ=None))
    assert isinstance(result, dict)
    assert result["sub"] == "u-bob"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"nonce": "another"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"aud": [CLIENT, "other"]}, "azp"),
        ({"iss": "https://evil.example"}, "iss"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"iat": int(time.time()) + 3600}, "future"),
        ({"sub": None}, "sub"),
    ],
)
def test_bad_id_token_claims_are_refused(
    issuer: OidcIssuer, changes: dict[str, Any], problem: str
) -> None:
    """A wrong nonce, audience, azp, issuer, time or a missing sub refuses the login."""
    result = check(issuer, issuer.keys[0].sign(claims(issuer, **changes), typ=None))
    assert isinstance(result, LoginError)
    assert result.reason == "id_token_invalid"
    assert problem in result.message


def test_forged_id_tokens_are_refused(issuer: OidcIssuer) -> None:
    """A token signed by a key outside the issuer's JWKS, `alg: none`, or HS256 with the
    public key as secret is refused by the strict JWS checks."""
    stranger = Key.generate("RS256", kid=issuer.keys[0].kid)
    public = issuer.keys[0].public_pem()
    tokens = [
        stranger.sign(claims(issuer), typ=None),
        sign_raw({"alg": "none", "kid": issuer.keys[0].kid}, claims(issuer), None),
        sign_raw({"alg": "HS256", "kid": issuer.keys[0].kid}, claims(issuer), public),
    ]
    results = [check(issuer, t) for t in tokens]
    assert [r.reason if isinstance(r, LoginError) else r for r in results] == [
        "id_token_invalid"
    ] * 3
