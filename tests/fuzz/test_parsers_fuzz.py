"""Property-based fuzzing of the parsers that read hostile bytes, in-process: compact JWS
parsing and base64url (`sidecar.jws`), BeginTask's key-binding proof, the JWT-SVID
authenticator, OPA decision parsing (`sidecar.policy.parse_decision`) and our own token
verification (`KeyRing.verify`).

Each property: the parser either accepts (and then what it accepted satisfies the contract)
or raises its one documented error type — never anything else, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sidecar.bundles import TrustBundles
from sidecar.dpop import KeyBindingVerifier
from sidecar.errors import InvalidArgument, PolicyResultInvalid, Reason, Unauthenticated
from sidecar.identity import JwtSvidAuthenticator, OidcAuthenticator, SubjectRule, TokenRules
from sidecar.jws import JwsError, b64url_decode, b64url_encode, parse, parse_jwks
from sidecar.model import Tier
from sidecar.oidc import OidcKeys
from sidecar.policy import parse_decision
from sidecar.tokens import KeyRing, SigningKey, generate_private_key
from tests.fakes import VALID_JIT
from tests.fuzz.strategies import b64, examples, hostile_text, json_values, jwt_like
from tests.identity_kit import AUDIENCE, TrustDomain

DOMAIN = TrustDomain.create("example.org")
OTHER = TrustDomain.create("other.org")
ISSUER = "https://jit-sidecar.local"


def _authenticator() -> JwtSvidAuthenticator:
    bundles = TrustBundles()
    keys, _ = parse_jwks(DOMAIN.bundle(), uses=(None, "jwt-svid"))
    bundles.set_file_bundle(DOMAIN.name, keys)
    rules = TokenRules(AUDIENCE, 10, ISSUER, lambda: (), frozenset({None, "jwt"}))
    return JwtSvidAuthenticator(bundles, rules)


AUTH = _authenticator()


@settings(max_examples=examples(400))
@given(jwt_like())
def test_jws_parse_accepts_or_raises_malformed(token: str) -> None:
    """jws.parse on token-shaped garbage returns a header and claims object or raises
    JwsError("malformed"); nothing else escapes (deep nesting included)."""
    try:
        parsed = parse(token)
    except JwsError as err:
        refused = err
    else:
        assert isinstance(parsed.header, dict) and isinstance(parsed.claims, dict)
        return
    assert refused.cause == "malformed"
    assert len(token) < 16 or token not in refused.message  # never echoes the token


@settings(max_examples=examples(300))
@given(jwt_like())
def test_svid_authenticator_refuses_garbage(token: str) -> None:
    """The JWT-SVID authenticator answers garbage with Unauthenticated identity_invalid and
    a bounded cause; it never accepts an unsigned token."""
    refused: Unauthenticated | None = None
    try:
        AUTH.verify(token)
    except Unauthenticated as err:
        refused = err
    assert refused is not None, "garbage accepted"
    assert refused.reason is Reason.IDENTITY_INVALID
    assert refused.metadata.get("cause")


_claim_changes = {
    "sub": st.one_of(
        st.just("spiffe://other.org/agent/a"),
        hostile_text(valid=["spiffe://example.org/x", "spiffe://example.org/"]),
    ),
    "aud": st.one_of(st.lists(st.sampled_from([AUDIENCE, "x"]), max_size=3), json_values(3)),
    "exp": st.one_of(st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=5)),
    "nbf": st.one_of(st.integers(-(2**40), 2**40), st.booleans()),
    "iat": st.integers(-(2**40), 2**40),
    "iss": st.one_of(st.just(ISSUER), hostile_text()),
}
_header_changes = {
    "alg": st.sampled_from(["RS256", "none", "HS256", "EdDSA", "ES384", "", "es256"]),
    "kid": st.one_of(st.just(OTHER.key.kid), hostile_text()),
    "typ": st.sampled_from(["JWT", "jwt", "at+jwt", "application/at+jwt", "dpop+jwt", ""]),
    "jku": st.just("https://evil.example/jwks"),
    "jwk": st.just({"kty": "EC"}),
    "crit": st.just(["exp"]),
}


def _changed(base: dict[str, Any], choices: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with up to three members replaced by hostile values or removed."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(base)
        for name in draw(st.lists(st.sampled_from(sorted(choices)), max_size=3, unique=True)):
            if draw(st.booleans()):
                out.pop(name, None)
            else:
                out[name] = draw(choices[name])
        return out

    return build()


svid_claims = st.builds(lambda: None).flatmap(
    lambda _: _changed(
        {"sub": "spiffe://example.org/agent/a", "aud": AUDIENCE, "exp": int(time.time()) + 300},
        _claim_changes,
    )
)
svid_headers = _changed({"alg": "ES256", "kid": DOMAIN.key.kid, "typ": "JWT"}, _header_changes)


#: A workload SPIFFE ID in example.org (SPIFFE ID spec, section 2).
_SPIFFE_ID = re.compile(r"spiffe://example\.org(/[A-Za-z0-9._-]+)+")


def _sign_es256(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    """Whatever the header says, an ES256 signature by `key` (a P-256 key)."""
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{h}.{p}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _oracle_accepts(header: dict[str, Any], claims: dict[str, Any], now: float) -> bool:
    """The JWT-SVID rules written out independently of sidecar.identity."""
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    return (
        header.get("alg") == "ES256"
        and header.get("kid") == DOMAIN.key.kid
        and header.get("typ", "JWT").lower() in ("jwt",)
        and not {"jku", "jwk", "crit", "x5u", "x5c"} & header.keys()
        and claims.get("iss") != ISSUER
        and isinstance(claims.get("sub"), str)
        and _SPIFFE_ID.fullmatch(claims["sub"]) is not None
        and not {"", ".", ".."} & set(claims["sub"][len("spiffe://example.org/") :].split("/"))
        and len(claims["sub"]) <= 2048
        and number(exp)
        and now < exp + 10
        and (nbf is None or (number(nbf) and nbf <= now + 10))
        and (iat is None or (number(iat) and iat <= now + 10))
        and isinstance(auds, list)
        and AUDIENCE in auds
    )


@settings(max_examples=examples(300))
@given(svid_headers, svid_claims, st.booleans())
def test_svid_authenticator_signed_with_trusted_key(
    header: dict[str, Any], claims: dict[str, Any], other_key: bool
) -> None:
    """Correctly signed tokens with random headers and claims: accepted exactly when every
    JWT-SVID rule holds (checked by an independent oracle), else Unauthenticated."""
    key = (OTHER if other_key else DOMAIN).key
    token = _sign_es256(header, claims, key.private)
    now = time.time()
    reasons: list[Reason] = []
    try:
        identity = AUTH.verify(token, now=now)
        accepted = True
    except Unauthenticated as err:
        reasons.append(err.reason)
        accepted = False
    assert reasons in ([], [Reason.IDENTITY_INVALID])
    expected = not other_key and _oracle_accepts(header, claims, now)
    assert accepted == expected, (header, claims)
    event("accepted" if accepted else "refused")
    if accepted:
        assert identity.subject == claims["sub"]


@settings(max_examples=examples(200))
@given(st.data())
def test_mutated_svid_is_refused(data: st.DataObject) -> None:
    """Changing any one character of a valid JWT-SVID makes it invalid, unless the change
    decodes to the very same bytes (base64url's unused trailing bits)."""
    token = DOMAIN.svid("agent/a")
    index = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0189-_.=+/ \x00\u00e9"
    char = data.draw(st.sampled_from(alphabet))
    mutated = token[:index] + char + token[index + 1 :]
    if mutated == token:
        return
    try:
        AUTH.verify(mutated)
    except Unauthenticated:
        return
    same = [parse(x) for x in (token, mutated)]
    assert (same[0].signature, same[0].header, same[0].claims) == (
        same[1].signature,
        same[1].header,
        same[1].claims,
    )


decision_docs = st.one_of(
    json_values(20),
    st.builds(
        lambda result, extra: {"result": result, **extra},
        st.one_of(
            json_values(10),
            st.builds(
                lambda base, changes: {**base, **changes},
                st.just(VALID_JIT),
                st.dictionaries(
                    st.sampled_from([*sorted(VALID_JIT), "credential"]), json_values(4), max_size=4
                ),
            ),
        ),
        st.dictionaries(st.sampled_from(["decision_id", "x"]), json_values(2), max_size=2),
    ),
)


@settings(max_examples=examples(500))
@given(st.one_of(decision_docs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200)))
def test_parse_decision_is_strict(body: bytes) -> None:
    """parse_decision on any body: PolicyResultInvalid, or a decision whose every field has
    the documented type and range (an allowed decision has a tier, ttl >= 1, an audience and
    a non-empty space-free scope; only standing decisions are cacheable; a credential is a
    small object naming a broker)."""
    try:
        decision = parse_decision(body, action="docs.read")
    except PolicyResultInvalid as err:
        refused = err
    else:
        refused = None
    if refused is not None:
        assert refused.reason is Reason.POLICY_RESULT_INVALID
        assert refused.cause in {"bad_json", "shape", "undefined"}
        return
    assert isinstance(decision.allow, bool)
    assert all(isinstance(r, str) and r for r in decision.reasons)
    if decision.allow:
        assert isinstance(decision.tier, Tier)
        assert isinstance(decision.ttl_seconds, int) and decision.ttl_seconds >= 1
        assert isinstance(decision.audience, str) and 0 < len(decision.audience) <= 256
        assert decision.scope and all(s and " " not in s for s in decision.scope)
        assert decision.cache_seconds == 0 or decision.tier is Tier.STANDING
        credential = decision.credential
        if credential is not None:  # a small object naming a broker, of plain members
            assert isinstance(credential, dict) and 0 < len(credential) <= 16
            assert isinstance(credential["broker"], str) and credential["broker"][:1].isalpha()
            for member in credential.values():
                assert isinstance(member, str | int | list) and not isinstance(member, bool)
                if isinstance(member, list):
                    assert all(isinstance(m, str) and m for m in member)
    else:
        assert decision.tier is None and decision.scope == () and decision.cache_seconds == 0


def test_parse_decision_deep_nesting_is_bad_json() -> None:
    """100 000 nested arrays (deeper than the JSON parser's stack) are bad_json, not a
    RecursionError escaping to the RPC as `internal`."""
    try:
        parse_decision(b"[" * 100_000, action="x")
    except PolicyResultInvalid as err:
        cause = err.cause
    assert cause == "bad_json"


def test_jws_deep_nesting_is_malformed() -> None:
    """A token whose payload nests thousands of arrays is malformed, not a RecursionError."""
    token = f"{b64(b'{}')}.{b64(b'[' * 6000)}.AAAA"
    try:
        parse(token)
    except JwsError as err:
        cause = err.cause
    assert cause == "malformed"


OWN = SigningKey.from_private_key(generate_private_key("EdDSA"))
RING = KeyRing(OWN)


@settings(max_examples=examples(300))
@given(st.one_of(jwt_like(), st.data()))
def test_own_token_verification(value: Any) -> None:
    """KeyRing.verify (behind gRPC IntrospectToken and HTTP /introspect) returns claims only
    for a token our key signed unchanged; garbage and one-character mutations give None."""
    now = time.time()
    valid = OWN.sign({"iss": ISSUER, "sub": "s", "jti": "j", "exp": int(now) + 60})
    if isinstance(value, str):
        assert RING.verify(value, issuer=ISSUER, now=now) is None
        return
    index = value.draw(st.integers(0, len(valid) - 1))
    char = value.draw(st.sampled_from("AQgw-_.x="))
    mutated = valid[:index] + char + valid[index + 1 :]
    claims = RING.verify(mutated, issuer=ISSUER, now=now)
    if claims is not None:
        # Canonical base64url only: not even a change in a character's unused bits survives.
        assert mutated == valid
        assert claims["jti"] == "j"


@settings(max_examples=examples(500))
@given(st.one_of(st.text(max_size=40), st.binary(max_size=30).map(b64)))
def test_base64url_is_canonical(text: str) -> None:
    """b64url_decode accepts exactly the canonical unpadded encodings: what it accepts
    encodes back to the same text, and every encoding decodes back to its bytes."""
    try:
        raw = b64url_decode(text)
    except ValueError:
        return
    assert b64url_encode(raw) == text


BINDINGS = KeyBindingVerifier()


@settings(max_examples=examples(300))
@given(jwt_like())
def test_binding_proof_refuses_garbage(proof: str) -> None:
    """BeginTask's proof check answers garbage with INVALID_ARGUMENT invalid_pop_proof and a
    bounded cause, never another error and never a binding."""
    with pytest.raises(InvalidArgument) as err:
        BINDINGS.jkt(proof, None, time.time())
    assert err.value.reason is Reason.INVALID_POP_PROOF
    assert re.fullmatch(r"[a-z_]{3,32}", err.value.metadata["cause"])


OIDC_ISSUER = "https://issuer.example"
OIDC_KEYS, _ = parse_jwks(DOMAIN.bundle(), uses=(None, "jwt-svid"))


def _oidc() -> OidcAuthenticator:
    keys = OidcKeys([OIDC_ISSUER], lambda issuer: OIDC_KEYS, refresh=300, max_age=3600)
    asyncio.run(keys.fetch(OIDC_ISSUER))
    rules = TokenRules(AUDIENCE, 10, ISSUER, lambda: (), frozenset({None, "jwt"}))
    rule = SubjectRule.compile(
        "system:serviceaccount:{ns}:{sa}", "spiffe://cluster.local/ns/{ns}/sa/{sa}"
    )
    return OidcAuthenticator(keys, rules, [rule])


OIDC = _oidc()
_oidc_claim_changes = dict(
    _claim_changes,
    sub=hostile_text(valid=["system:serviceaccount:a:b", "system:serviceaccount:a/b:c"]),
    iss=st.one_of(st.just(ISSUER), st.just("https://other.example"), hostile_text()),
)


@settings(max_examples=examples(300))
@given(
    st.one_of(jwt_like(), st.builds(lambda: None)),
    _changed({"alg": "ES256", "kid": DOMAIN.key.kid, "typ": "JWT"}, _header_changes),
    st.builds(lambda: None).flatmap(
        lambda _: _changed(
            {
                "iss": OIDC_ISSUER,
                "sub": "system:serviceaccount:agents:billing",
                "aud": AUDIENCE,
                "exp": int(time.time()) + 300,
            },
            _oidc_claim_changes,
        )
    ),
)
def test_oidc_authenticator(
    garbage: str | None, header: dict[str, Any], claims: dict[str, Any]
) -> None:
    """The OIDC authenticator: garbage is Unauthenticated; a correctly signed token is
    accepted only from the allowed issuer, for our audience, unexpired, with a `sub` the
    subject rules map — and then the identity is exactly the mapped subject."""
    token = garbage if garbage is not None else _sign_es256(header, claims, DOMAIN.key.private)
    reasons: list[Reason] = []
    try:
        identity = asyncio.run(OIDC.verify(token))
    except Unauthenticated as err:
        reasons.append(err.reason)
    assert reasons in ([], [Reason.IDENTITY_INVALID])
    if reasons:
        return
    assert garbage is None
    event("accepted")
    sub = claims["sub"]
    assert claims["iss"] == OIDC_ISSUER
    assert AUDIENCE in ([claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"])
    assert header.get("alg") == "ES256" and not {"jku", "jwk", "crit"} & header.keys()
    ns, sa = sub.removeprefix("system:serviceaccount:").split(":")
    assert identity.subject == f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
