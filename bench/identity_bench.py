"""Cost of caller authentication (runs on every RPC) and of the DPoP check, in-process.

    .venv/bin/python bench/identity_bench.py [--n 20000]

Prints microseconds per call for: dev mode; JWT-SVID (ES256, RS256) and OIDC (RS256) with
the verified-token cache (the steady state: an agent reuses its SVID for minutes) and without
it (every call verifies the signature); DPoP proof verification (ES256, EdDSA). Each
authenticate figure includes one `run_until_complete` round trip (the `dev` row), which a
real RPC does not pay separately.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.bundles import TrustBundles
from sidecar.dpop import ReplayCache, verify_dpop_proof
from sidecar.identity import (
    Authenticator,
    DevAuthenticator,
    JwtSvidAuthenticator,
    OidcAuthenticator,
    SubjectRule,
    TokenRules,
)
from sidecar.jws import parse_jwks
from sidecar.oidc import OidcKeys
from tests.identity_kit import AUDIENCE, Key, TrustDomain, dpop_proof, thumbprint

RULES = TokenRules(
    AUDIENCE, 10, "https://jit-sidecar.local", lambda: ["own"], frozenset({None, "jwt", "jose"})
)
ISSUER = "https://kubernetes.default.svc"


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 500)):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def auth_us(loop: asyncio.AbstractEventLoop, auth: Authenticator, token: str, n: int) -> float:
    metadata = {"authorization": f"Bearer {token}"}
    return per_call_us(lambda: loop.run_until_complete(auth.authenticate(metadata)), n)


def jwt_svid(alg: str, cache: int) -> tuple[JwtSvidAuthenticator, str]:
    domain = TrustDomain.create("example.org", alg)
    bundles = TrustBundles()
    bundles.set_file_bundle("example.org", parse_jwks(domain.bundle(), uses=(None, "jwt-svid"))[0])
    return JwtSvidAuthenticator(bundles, RULES, cache_size=cache), domain.svid()


def oidc(loop: asyncio.AbstractEventLoop, cache: int) -> tuple[OidcAuthenticator, str]:
    key = Key.generate("RS256")
    doc = {"keys": [key.public_jwk(use="sig", alg="RS256")]}
    keys = OidcKeys([ISSUER], lambda _i: parse_jwks(doc)[0], refresh=300, max_age=3600)
    loop.run_until_complete(keys.fetch(ISSUER))
    rule = SubjectRule.compile(
        "system:serviceaccount:{ns}:{sa}", "spiffe://cluster.local/ns/{ns}/sa/{sa}"
    )
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:agents:billing",
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
    }
    return OidcAuthenticator(keys, RULES, [rule], cache_size=cache), key.sign(claims, typ=None)


def dpop_us(alg: str, n: int) -> float:
    agent = Key.generate(alg)
    access = "header.payload.signature"
    url = "https://api.example.com/x"
    claims = {"cnf": {"jkt": thumbprint(agent)}}
    proofs = iter([dpop_proof(agent, "GET", url, access) for _ in range(n + 500)])
    cache = ReplayCache()
    return per_call_us(
        lambda: verify_dpop_proof(
            access, next(proofs), "GET", url, token_claims=claims, replay_cache=cache
        ),
        n,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    loop = asyncio.new_event_loop()
    rows = [("dev", auth_us(loop, DevAuthenticator("spiffe://jit.local/agent/dev"), "", n))]
    for alg in ("ES256", "RS256"):
        for cache in (4096, 0):
            auth, token = jwt_svid(alg, cache)
            label = f"jwt-svid {alg} {'cached' if cache else 'uncached'}"
            rows.append((label, auth_us(loop, auth, token, n if cache else n // 4)))
    for cache in (4096, 0):
        oauth, token = oidc(loop, cache)
        label = f"oidc RS256 {'cached' if cache else 'uncached'}"
        rows.append((label, auth_us(loop, oauth, token, n if cache else n // 4)))
    for alg in ("ES256", "EdDSA"):
        rows.append((f"dpop proof {alg}", dpop_us(alg, n // 4)))
    print(f"{'case':28s} µs/call")
    for label, us in rows:
        print(f"{label:28s} {us:8.1f}")


if __name__ == "__main__":
    main()
