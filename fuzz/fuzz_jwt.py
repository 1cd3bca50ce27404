"""Coverage-guided fuzzing of the JWT parsing path, for long runs outside CI (`make fuzz`).

Feeds arbitrary bytes, read as a compact JWS, to everything that parses a caller-supplied
token: `sidecar.jws.parse` (the JOSE core), the JWT-SVID authenticator (strict header and
claim rules, with a real trust bundle), `KeyRing.verify` (IntrospectToken and /introspect),
BeginTask's key-binding proof check (`KeyBindingVerifier`) and `parse_decision` (OPA
answers). Any exception other than each one's documented refusal is
a finding: libFuzzer stops and writes the input to fuzz/crashes/.

Runs under atheris when it is installed (`pip install -e '.[fuzz]'`); otherwise falls back to
a random Hypothesis search over the same target for the same time.

    FUZZ_SECONDS=600 make fuzz
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None


def _imports() -> None:
    global parse, JwsError, AUTH, RING, Unauthenticated, parse_decision, PolicyResultInvalid
    global SEEDS, SIGNED, BINDINGS, InvalidArgument
    from sidecar.bundles import TrustBundles
    from sidecar.dpop import KeyBindingVerifier
    from sidecar.errors import InvalidArgument, PolicyResultInvalid, Unauthenticated
    from sidecar.identity import JwtSvidAuthenticator, TokenRules
    from sidecar.jws import JwsError, parse, parse_jwks
    from sidecar.policy import parse_decision
    from sidecar.tokens import KeyRing, SigningKey, generate_private_key
    from tests.identity_kit import AUDIENCE, TrustDomain

    domain = TrustDomain.create("example.org")
    bundles = TrustBundles()
    keys, _ = parse_jwks(domain.bundle(), uses=(None, "jwt-svid"))
    bundles.set_file_bundle(domain.name, keys)
    rules = TokenRules(
        AUDIENCE, 10, "https://jit-sidecar.local", lambda: (), frozenset({None, "jwt"})
    )
    AUTH = JwtSvidAuthenticator(bundles, rules)
    own = SigningKey.from_private_key(generate_private_key("EdDSA"))
    RING = KeyRing(own)
    BINDINGS = KeyBindingVerifier()
    # Seeds: inputs that reach deep into each parser, for libFuzzer to mutate.
    SEEDS = [
        domain.svid("agent/a").encode(),
        domain.svid("agent/a", aud=["x", AUDIENCE], nbf=0).encode(),
        own.sign({"iss": "https://jit-sidecar.local", "jti": "j", "exp": 1}).encode(),
        b'{"result": {"allow": true, "tier": "jit", "ttl_seconds": 60, "audience": "a"}}',
    ]
    SIGNED = {seed.decode().rsplit(".", 1)[0] for seed in SEEDS[:3]}


if atheris is not None:
    with atheris.instrument_imports(include=["sidecar"]):
        _imports()
else:
    _imports()


def one_input(data: bytes) -> None:
    """One fuzz case: every parser refuses garbage with its own error type only."""
    token = data.decode("utf-8", "replace")
    with contextlib.suppress(JwsError):
        parse(token)
    # Only what we signed (the seeds) may verify: a mutation cannot forge a signature.
    signed = token.rsplit(".", 1)[0] in SIGNED
    try:
        AUTH.verify(token)
        assert signed, "an unsigned input was accepted as an identity"
    except Unauthenticated:
        pass
    try:
        BINDINGS.jkt(token, None, time.time())
        raise AssertionError("an unsigned input bound a key")
    except InvalidArgument:
        pass
    claims = RING.verify(token, issuer="https://jit-sidecar.local", now=time.time())
    assert claims is None or signed, "an unsigned input verified as our own token"
    with contextlib.suppress(PolicyResultInvalid):
        parse_decision(data, action="docs.read")


def main() -> None:
    seconds = int(os.environ.get("FUZZ_SECONDS", "180"))
    crashes = ROOT / "fuzz" / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    corpus = ROOT / "fuzz" / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for number, seed in enumerate(SEEDS):
        (corpus / f"seed-{number}").write_bytes(seed)
    if atheris is not None:
        print(f"atheris: fuzzing the JWT parsing path for {seconds} s", flush=True)
        args = [
            sys.argv[0],
            f"-max_total_time={seconds}",
            f"-artifact_prefix={crashes}/",
            "-max_len=16384",
            str(corpus),
        ]
        atheris.Setup(args, one_input)
        atheris.Fuzz()
        return
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    print(f"atheris not installed: Hypothesis search for {seconds} s", flush=True)
    deadline = time.monotonic() + seconds
    tried = 0

    @settings(
        max_examples=10**9,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=4096))
    def search(data: bytes) -> None:
        nonlocal tried
        if time.monotonic() > deadline:
            raise TimeoutError
        tried += 1
        one_input(data)

    with contextlib.suppress(TimeoutError):
        search()
    print(f"{tried} inputs, no finding", flush=True)


if __name__ == "__main__":
    main()
