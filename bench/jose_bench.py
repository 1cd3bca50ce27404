"""Cost of the JOSE paths around our own tokens, in-process (docs/performance.md, "JOSE").

    .venv/bin/python -m bench.jose_bench [--n 20000]

Prints microseconds per call for: signing an access token (`SigningKey.sign`, the hot path
of every grant); reading one back with `KeyRing.verify` (introspection, the fleet) and with
`sidecar.verify.TokenVerifier` (a resource server; JWKS fetched once from a loopback HTTP
server, no introspection); and checking BeginTask's key-binding proof
(`KeyBindingVerifier`, when this tree has it). Each for EdDSA and ES256.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.identity_bench import per_call_us
from sidecar.tokens import KeyRing, SigningKey, generate_private_key
from sidecar.verify import TokenVerifier
from tests.oidc_issuer import OidcIssuer

ISSUER = "https://jit-sidecar.local"


def claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": "spiffe://jit.local/agent/dev",
        "client_id": "spiffe://jit.local/agent/dev",
        "aud": "docs",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "Zm9vYmFyYmF6cXV4cXV1eA",
        "scope": "docs.read",
        "authorization_details": [
            {"type": "jit_intent", "actions": ["docs.read"], "locations": ["docs://a"]}
        ],
        "txn": "t-bench",
        "tier": "standing",
    }


class JwksServer(OidcIssuer):
    """The tests' loopback OIDC issuer, serving a given JWKS document."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self.document = document

    def jwks(self) -> dict[str, Any]:
        return self.document


def binding_us(alg: str, n: int) -> float | None:
    try:
        from sidecar.dpop import BINDING_HTU, KeyBindingVerifier
    except ImportError:  # a tree without BeginTask proofs
        return None
    from tests.identity_kit import Key, dpop_proof

    key = Key.generate(alg)
    proofs = iter([dpop_proof(key, "POST", BINDING_HTU, None) for _ in range(n + 500)])
    verifier = KeyBindingVerifier()
    return per_call_us(lambda: verifier.jkt(next(proofs), None, time.time()), n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    rows: list[tuple[str, float | None]] = []
    for alg in ("EdDSA", "ES256"):
        key = SigningKey.from_private_key(generate_private_key(alg))
        ring = KeyRing(key)
        body = claims()
        token = key.sign(body)
        server = JwksServer(json.loads(ring.jwks_json(time.time()))).start()
        verifier = TokenVerifier(server.url + "/openid/v1/jwks", ISSUER, "docs")
        rows.append((f"sign {alg}", per_call_us(lambda k=key, b=body: k.sign(b), n)))
        rows.append(
            (
                f"KeyRing.verify {alg}",
                per_call_us(lambda r=ring, t=token: r.verify(t, issuer=ISSUER, now=0.0), n),
            )
        )
        rows.append(
            (
                f"TokenVerifier.verify {alg}",
                per_call_us(
                    lambda v=verifier, t=token: v.verify(
                        t, action="docs.read", resource="docs://a"
                    ),
                    n,
                ),
            )
        )
        rows.append((f"BeginTask proof {alg}", binding_us(alg, n // 4)))
        server.stop()
    print(f"{'case':28s} µs/call")
    for label, us in rows:
        print(f"{label:28s} {'n/a' if us is None else f'{us:8.1f}'}")
    print(json.dumps({label: us for label, us in rows}))


if __name__ == "__main__":
    main()
