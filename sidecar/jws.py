"""The JOSE core: the one place that reads a compact JWS, a JWK or base64url (RFC 7515, 7517,
7518, 7638, 8037, 8725, 9864).

Every path that reads a JWT uses it: caller identity tokens (JWT-SVID, OIDC: `identity`),
DPoP proofs (`dpop`), our own access tokens (`tokens.KeyRing.verify` for introspection and
the fleet) and the resource-server verifier (`verify`). Signing our own tokens builds the
compact form directly in `tokens.SigningKey.sign` (the hot path) with `b64url_encode` below.

The signature itself is `cryptography`'s; this module is the strictness on top, each rule
with the reason it exists:
- exactly three parts, canonical base64url without padding, each part a JSON object without
  duplicate members (two parsers must never read two different claims from one token);
- an explicit algorithm allow-list per caller, and a key verifies only the algorithms its
  type (and its JWK `alg`) allows, so HS* never meets an asymmetric key (RFC 8725 §2.1, §3.1);
- header members that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are refused before any key
  lookup, and nothing here fetches anything (RFC 8725 §3.10); DPoP alone takes `jwk`;
- `crit` is refused: we understand no extension (RFC 7515 §4.1.11).
Other unknown header members are ignored, as RFC 7515 §4 requires. Errors carry a bounded
`cause` label for logs; messages never contain the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGS = frozenset({"ES256", "ES384", "ES512"})
#: EdDSA over Ed25519 under its RFC 8037 (polymorphic) name and its RFC 9864 §2.2 fully
#: specified name. With an Ed25519 key both name the same operation, so a key that may
#: verify one may verify the other.
EDDSA_ALGS = frozenset({"EdDSA", "Ed25519"})
#: What SPIFFE JWT-SVID validators accept (JWT-SVID spec §3: any other alg MUST be refused).
ASYMMETRIC_JWT_ALGS = RSA_ALGS | EC_ALGS
#: What we accept for OIDC ID tokens: the JWT-SVID set plus Ed25519.
OIDC_JWT_ALGS = ASYMMETRIC_JWT_ALGS | EDDSA_ALGS
#: Bounds the work one hostile token can cause before any key is looked up.
MAX_TOKEN_LENGTH = 8192
#: RFC 7518 §3.3: RSA keys of 2048 bits or more; shorter ones are factorable.
MIN_RSA_BITS = 2048

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVES: dict[str, tuple[type[ec.EllipticCurve], str, int]] = {
    # JWK crv -> (curve, the one ES alg it may verify, coordinate size in bytes)
    "P-256": (ec.SECP256R1, "ES256", 32),
    "P-384": (ec.SECP384R1, "ES384", 48),
    "P-521": (ec.SECP521R1, "ES512", 66),
}
_CURVE_BY_NAME: dict[str, str] = {cls().name: crv for crv, (cls, _, _) in _CURVES.items()}
#: Header members that would make a verifier trust key material chosen by the sender
#: (RFC 8725 §3.10; CVE-2018-0114 was a library trusting an embedded `jwk`).
KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: Per remainder (len % 4) of a canonical encoding, the characters allowed last: the unused
#: low bits of the final character must be zero (RFC 4648 §3.5), so one value has exactly
#: one encoding and a token cannot be altered without changing what it decodes to.
_LAST_CHAR = {
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}
#: kids seen in practice (SPIRE: base62, Kubernetes/most IdPs: base64url, some: hex or
#: dotted names). No `/`, quotes, backslash, whitespace or control characters, so a kid can
#: never be a path or break out of a log line.
_KID = re.compile(r"[A-Za-z0-9._~+=:-]{1,128}")
#: RFC 7518 §6.2.2, §6.3.2, §6.4.1 and RFC 8037 §2: members only a private or symmetric
#: key has; trust material and proof keys must be public.
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class JwsError(Exception):
    """The token is not acceptable. `cause` is a bounded snake_case label for logs."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key trusted to verify signatures, with the algorithms it may verify."""

    kid: str
    key: PublicKey
    algs: frozenset[str]


@dataclass(frozen=True, slots=True)
class Jws:
    """A parsed (not yet verified) compact JWS."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def b64url_bytes(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 §2), as ASCII bytes (for building a JWS)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return b64url_bytes(data).decode("ascii")


def b64url_decode(value: str) -> bytes:
    """Canonical base64url without padding (RFC 7515 §2, RFC 4648 §3.5); raises ValueError."""
    remainder = len(value) % 4
    if not _B64URL.fullmatch(value) or remainder == 1:
        raise ValueError("not base64url")
    if remainder and value[-1] not in _LAST_CHAR[remainder]:
        raise ValueError("not canonical base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-remainder % 4))
    except (binascii.Error, ValueError) as err:
        raise ValueError("not base64url") from err


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 step 4 / RFC 7519 §4: a JOSE header or claims set with duplicate members
    # is invalid, or parsers disagree on which one counts (two "sub", one checked, one used).
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    # RFC 8259 §6: NaN and Infinity are not JSON; Python's parser accepts them by default.
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # RecursionError: a few KB of `[[[[…` nests deeper than the parser's stack.
        raise JwsError("malformed", f"the {what} is not a JSON object: {err}") from err
    if not isinstance(value, dict):
        raise JwsError("malformed", f"the {what} is not a JSON object")
    return value


def parse(token: str, *, max_length: int = MAX_TOKEN_LENGTH) -> Jws:
    """Split and decode a compact JWS (no verification). Raises JwsError("malformed")."""
    if len(token) > max_length:
        raise JwsError("malformed", f"the token is longer than {max_length} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError("malformed", "the token is not a compact JWS (three dot-separated parts)")
    try:
        header_raw, claims_raw, signature = (b64url_decode(p) for p in parts)
    except ValueError as err:
        raise JwsError("malformed", "the token is not base64url-encoded") from err
    header = _json_object(header_raw, "header")
    claims = _json_object(claims_raw, "payload")
    return Jws(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def check_header(
    header: Mapping[str, Any], algorithms: frozenset[str], *, embedded_jwk: bool = False
) -> str:
    """Apply the RFC 8725 header rules; return the (allowed) `alg`.

    `embedded_jwk` lets a `jwk` header member through: only for DPoP proofs, whose key IS the
    `jwk` (RFC 9449 §4.2); `jku`, `x5u` and `x5c` stay refused.
    """
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
        raise JwsError(
            "alg_not_allowed",
            f"algorithm {shown!r} is not allowed here (allowed: {', '.join(sorted(algorithms))})",
        )
    present = [
        h for h in KEY_REFERENCE_HEADERS if h in header and not (embedded_jwk and h == "jwk")
    ]
    if present:
        raise JwsError(
            "header_key_reference",
            f"header member {present[0]!r} is refused (keys come only from configured trust)",
        )
    if "crit" in header:
        # RFC 7515 §4.1.11: a recipient that does not understand a listed extension MUST
        # refuse the JWS; we understand none.
        raise JwsError("crit_unsupported", "the header lists critical extensions we do not know")
    return alg


def is_valid_kid(kid: object) -> bool:
    """A kid we are willing to look up (and to log)."""
    return isinstance(kid, str) and _KID.fullmatch(kid) is not None


def kid_of(header: Mapping[str, Any]) -> str:
    """The header's `kid`, required and syntactically sane."""
    kid = header.get("kid")
    if kid is None:
        raise JwsError("kid_missing", "the header has no kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise JwsError("kid_invalid", "the header kid has characters or a length we refuse")
    return kid


def verify_signature(jws: Jws, alg: str, key: VerifyKey) -> None:
    """Check `jws`'s signature with `key` under `alg` (which `key` must allow)."""
    if alg not in key.algs:
        raise JwsError("alg_key_mismatch", f"key {key.kid!r} may not verify {alg}")
    data, sig = jws.signing_input, jws.signature
    try:
        if alg in EDDSA_ALGS:
            if not isinstance(key.key, ed25519.Ed25519PublicKey):
                raise JwsError("alg_key_mismatch", f"{alg} needs an Ed25519 key")
            key.key.verify(sig, data)
            return
        digest = _HASHES[alg[2:]]()
        if alg[0] == "E":
            if not isinstance(key.key, ec.EllipticCurvePublicKey):
                raise JwsError("alg_key_mismatch", f"{alg} needs an EC key")
            size = _CURVES[_CURVE_BY_NAME[key.key.curve.name]][2]
            if len(sig) != 2 * size:
                raise JwsError("signature_invalid", "the signature does not verify")
            r = int.from_bytes(sig[:size], "big")
            s = int.from_bytes(sig[size:], "big")
            key.key.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest))
            return
        if not isinstance(key.key, rsa.RSAPublicKey):
            raise JwsError("alg_key_mismatch", f"{alg} needs an RSA key")
        pad: padding.AsymmetricPadding
        if alg[0] == "P":
            pad = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        else:
            pad = padding.PKCS1v15()
        key.key.verify(sig, data, pad, digest)
    except InvalidSignature as err:
        raise JwsError("signature_invalid", "the signature does not verify") from err


def _int_member(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"member {name!r} missing")
    raw = b64url_decode(value)
    if not raw:
        raise ValueError(f"member {name!r} is empty")
    return int.from_bytes(raw, "big")


def _ec_coordinate(jwk: Mapping[str, Any], name: str, size: int) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"member {name!r} missing")
    raw = b64url_decode(value)
    if len(raw) != size:
        raise ValueError(f"member {name!r} must be {size} bytes")
    return int.from_bytes(raw, "big")


def algorithms_for(key: PublicKey) -> frozenset[str]:
    """Every algorithm a key of this type may verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGS
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_BY_NAME.get(key.curve.name)
        return frozenset({_CURVES[crv][1]}) if crv else frozenset()
    return EDDSA_ALGS


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """The public key of an RSA, EC (P-256/384/521) or Ed25519 JWK; raises ValueError.

    A JWK holding private members is refused: trust material must be public.
    """
    if any(m in jwk for m in PRIVATE_JWK_MEMBERS):
        raise ValueError("the JWK holds private key members")
    kty = jwk.get("kty")
    if kty == "RSA":
        n, e = _int_member(jwk, "n"), _int_member(jwk, "e")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES:
            raise ValueError("unsupported EC curve")
        curve, _alg, size = _CURVES[crv]
        x, y = _ec_coordinate(jwk, "x", size), _ec_coordinate(jwk, "y", size)
        return ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        x_member = jwk.get("x")
        raw = b64url_decode(x_member) if isinstance(x_member, str) else b""
        if len(raw) != 32:
            raise ValueError("member 'x' must be 32 bytes")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    raise ValueError(f"unsupported key type {kty!r}")


def verify_key_from_jwk(jwk: Mapping[str, Any]) -> VerifyKey:
    """A VerifyKey from a JWKS member: needs a sane `kid`; a JWK `alg` narrows its algorithms."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError("missing or unusable kid")
    key = public_key_from_jwk(jwk)
    algs = algorithms_for(key)
    return VerifyKey(kid, key, narrow_algorithms(algs, jwk.get("alg")))


def narrow_algorithms(algs: frozenset[str], jwk_alg: object) -> frozenset[str]:
    """The algorithms of a key whose JWK names `jwk_alg` (None: not named); ValueError when
    that alg does not fit the key (RFC 8725 §3.1: one key, one algorithm)."""
    if jwk_alg is None:
        return algs
    if not isinstance(jwk_alg, str) or jwk_alg not in algs:
        raise ValueError(f"alg {jwk_alg!r} does not fit the key type")
    return EDDSA_ALGS if jwk_alg in EDDSA_ALGS else frozenset({jwk_alg})


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (OKP, EC or RSA): the required members
    only (§3.2), in lexicographic order, without whitespace."""
    kty = jwk.get("kty")
    members: tuple[str, ...]
    if kty == "OKP":
        members = ("crv", "kty", "x")  # RFC 8037 §2
    elif kty == "EC":
        members = ("crv", "kty", "x", "y")
    elif kty == "RSA":
        members = ("e", "kty", "n")
    else:
        raise ValueError(f"unsupported JWK key type {kty!r}")
    for m in members:
        if not isinstance(jwk.get(m), str) or not jwk[m]:
            raise ValueError(f"JWK member {m!r} missing")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def parse_jwks(
    data: bytes | str | Mapping[str, Any], *, uses: Iterable[str | None] = (None, "sig")
) -> tuple[dict[str, VerifyKey], list[str]]:
    """Keys of a JWKS document by kid, and a list of problems with members that were skipped.

    Members whose `use` is not in `uses` (e.g. SPIFFE `x509-svid` authorities) are skipped
    silently; unusable members are skipped and reported; a duplicate kid, or a document that
    is not a JWKS, raises ValueError.
    """
    doc = data if isinstance(data, Mapping) else json.loads(data)
    keys_field = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(keys_field, list):
        raise ValueError("not a JWKS document (no `keys` array)")
    allowed_uses = set(uses)
    out: dict[str, VerifyKey] = {}
    problems: list[str] = []
    for index, member in enumerate(keys_field):
        if not isinstance(member, Mapping):
            problems.append(f"keys[{index}] is not an object")
            continue
        if member.get("use") not in allowed_uses:
            continue
        try:
            key = verify_key_from_jwk(member)
        except (ValueError, TypeError) as err:
            problems.append(f"keys[{index}]: {err}")
            continue
        if key.kid in out:
            raise ValueError(f"duplicate kid {key.kid!r}")
        out[key.kid] = key
    return out, problems
