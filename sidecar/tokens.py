"""Signing keys, RFC 9068 access tokens and the JWKS that verifies them.

Keys are parsed once; signing builds the compact JWS directly (the header is encoded once per
key), which costs about half of a generic JWT library's encode. Verification of our own
tokens (introspection, the fleet's) goes through the JOSE core (`sidecar.jws`) with the
algorithm pinned by the key. Nothing here ever logs or returns private key material.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import ConfigError
from .files import replace_atomically
from .jws import (
    EDDSA_ALGS,
    JwsError,
    b64url_bytes,
    b64url_encode,
    check_header,
    jwk_thumbprint,
    parse,
    verify_key_from_jwk,
    verify_signature,
)
from .model import Grant

_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""Built once: `json.dumps(claims, separators=…)` builds an encoder per call, which costs
more than encoding a token's claims."""

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)
#: Longest access token we read back (introspection, fleet): ours stay far below it.
MAX_TOKEN_LENGTH = 16 * 1024


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public half as a JWK (without kid/alg/use)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A loaded private key and everything derived from it once."""

    kid: str
    """RFC 7638 thumbprint of the public key."""
    alg: str
    private_key: PrivateKey
    jwk: Mapping[str, str]
    """Public JWK with kid, alg and use."""
    header_b64: bytes

    def __repr__(self) -> str:  # never print the key
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    @classmethod
    def from_private_key(cls, key: PrivateKey, *, ed25519_alg: str = "EdDSA") -> SigningKey:
        """`ed25519_alg`: the `alg` an Ed25519 key signs under, `EdDSA` (RFC 8037) or its
        fully specified name `Ed25519` (RFC 9864 §2.2); the signature is the same."""
        if isinstance(key, ed25519.Ed25519PrivateKey):
            if ed25519_alg not in EDDSA_ALGS:
                raise ConfigError(f"ed25519_alg must be one of {sorted(EDDSA_ALGS)}")
            alg = ed25519_alg
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            alg = "ES256"
        else:
            raise ConfigError("signing key must be Ed25519 or EC P-256")
        jwk = public_jwk(key)
        kid = jwk_thumbprint(jwk)
        header = json.dumps(
            {"alg": alg, "typ": TOKEN_TYPE, "kid": kid}, separators=(",", ":")
        ).encode()
        return cls(
            kid=kid,
            alg=alg,
            private_key=key,
            jwk={**jwk, "kid": kid, "alg": alg, "use": "sig"},
            header_b64=b64url_bytes(header),
        )

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Compact JWS of `claims` (RFC 7515), signed with this key."""
        return self._sign(self.header_b64, claims)

    def sign_typed(self, claims: Mapping[str, Any], typ: str) -> str:
        """Compact JWS of `claims` whose header `typ` is `typ`, not `at+jwt`: explicit typing
        keeps another kind of JWT this key signs from passing for an access token (RFC 8725
        §3.11, RFC 9068 §4)."""
        header = json.dumps({"alg": self.alg, "typ": typ, "kid": self.kid}, separators=(",", ":"))
        return self._sign(b64url_bytes(header.encode()), claims)

    def _sign(self, header_b64: bytes, claims: Mapping[str, Any]) -> str:
        payload = b64url_bytes(_COMPACT.encode(claims).encode())
        signing_input = header_b64 + b"." + payload
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            signature = self.private_key.sign(signing_input)
        else:
            der = self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return (signing_input + b"." + b64url_bytes(signature)).decode("ascii")


def generate_private_key(alg: str) -> PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ConfigError(f"unsupported signing algorithm {alg!r}")


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write PKCS#8 PEM atomically with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    replace_atomically(path, pem, 0o600)


def load_private_key(path: Path) -> PrivateKey:
    """Parse a PEM private key file; errors name the file, never its content."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read signing key {path}: {err.strerror}") from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: signing key must be Ed25519 or EC P-256")
    return key


def load_or_create_key(
    path: Path, alg: str, *, create: bool, ed25519_alg: str = "EdDSA"
) -> tuple[SigningKey, bool]:
    """Load the key at `path`; with `create` (dev mode) generate it when missing.

    Returns the key and whether it was generated.
    """
    if not path.exists():
        if not create:
            raise ConfigError(f"signing key {path} does not exist")
        key = generate_private_key(alg)
        write_private_key(path, key)
        return SigningKey.from_private_key(key, ed25519_alg=ed25519_alg), True
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"signing key {path} is readable by others (mode {mode:o}); chmod 600 it")
    return SigningKey.from_private_key(load_private_key(path), ed25519_alg=ed25519_alg), False


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A public key in the JWKS: the current one, or a retired one until `retire_at`."""

    jwk: Mapping[str, str]
    retire_at: float | None = None
    """None for the current key; otherwise when its last token expires."""


class KeyRing:
    """The current signing key plus retired public keys still needed for verification."""

    def __init__(self, current: SigningKey, retired: Iterable[PublishedKey] = ()) -> None:
        self.current = current
        self._published: dict[str, PublishedKey] = {
            p.jwk["kid"]: p for p in retired if p.jwk["kid"] != current.kid
        }
        self._published[current.kid] = PublishedKey(current.jwk)
        self._jwks_cache: tuple[float, bytes] | None = None
        self.fleet_jwks: Callable[[float], Iterable[Mapping[str, str]]] | None = None
        """Public keys of the other sidecars of a fleet, served in the JWKS too."""

    def rotate(self, new: SigningKey, old_retire_at: float) -> PublishedKey | None:
        """Make `new` current; the old public key stays published until `old_retire_at`."""
        old = self.current
        if new.kid == old.kid:
            return None
        retired = PublishedKey(old.jwk, old_retire_at)
        self._published[old.kid] = retired
        self._published[new.kid] = PublishedKey(new.jwk)
        self.current = new
        self._jwks_cache = None
        return retired

    def publish_retired(self, jwk: Mapping[str, str], retire_at: float) -> None:
        """Keep a no-longer-current public key in the JWKS until `retire_at`."""
        if jwk.get("kid") and jwk["kid"] != self.current.kid:
            self._published[jwk["kid"]] = PublishedKey(jwk, retire_at)
            self._jwks_cache = None

    def published(self, now: float) -> list[PublishedKey]:
        return [p for p in self._published.values() if p.retire_at is None or p.retire_at > now]

    def drop_expired(self, now: float) -> list[str]:
        gone = [
            kid
            for kid, p in self._published.items()
            if p.retire_at is not None and p.retire_at <= now
        ]
        for kid in gone:
            del self._published[kid]
        if gone:
            self._jwks_cache = None
        return gone

    def jwks_json(self, now: float) -> bytes:
        self.drop_expired(now)
        cache = self._jwks_cache
        # A fleet's keys change without our knowing: rebuild at most once a second.
        if cache is None or (self.fleet_jwks is not None and not 0 <= now - cache[0] < 1.0):
            keys = [dict(p.jwk) for p in self._published.values()]
            if self.fleet_jwks is not None:
                ours = set(self._published)
                keys += [dict(k) for k in self.fleet_jwks(now) if k.get("kid") not in ours]
            cache = self._jwks_cache = (
                now,
                json.dumps({"keys": keys}, separators=(",", ":")).encode(),
            )
        return cache[1]

    def verify(self, token: str, *, issuer: str, now: float) -> dict[str, Any] | None:
        """Claims of a token we signed with a still-published key, or None.

        Checks signature (algorithm pinned by the key), `typ`, `iss`; `exp` and `nbf` are
        left to the caller, which knows the grant's state and owns the clock.
        """
        kid = token_kid(token)
        if kid is None:
            return None
        published = self._published.get(kid)
        if published is None or (published.retire_at is not None and published.retire_at <= now):
            return None
        return verify_with(token, published.jwk, issuer=issuer)

    def owns(self, kid: str) -> bool:
        """True when `kid` is (or was, and is still published as) one of our keys."""
        return kid in self._published


def token_kid(token: str) -> str | None:
    """The `kid` of an `at+jwt` header, or None for anything else (unverified)."""
    try:
        header = parse(token, max_length=MAX_TOKEN_LENGTH).header
    except JwsError:
        return None
    kid = header.get("kid")
    if not isinstance(kid, str) or header.get("typ") != TOKEN_TYPE:
        return None
    return kid


def verify_with(token: str, jwk: Mapping[str, str], *, issuer: str) -> dict[str, Any] | None:
    """Claims of `token` when `jwk` (public) verifies its signature and `iss` matches.

    The algorithm is pinned by the key (its JWK `alg`); time claims are the caller's to
    check, with its (injectable) clock.
    """
    try:
        key = verify_key_from_jwk(jwk)
        jws = parse(token, max_length=MAX_TOKEN_LENGTH)
        alg = check_header(jws.header, key.algs)
        verify_signature(jws, alg, key)
    except (JwsError, ValueError, TypeError):
        return None
    if jws.claims.get("iss") != issuer:
        return None
    return jws.claims


def new_grant_id() -> str:
    """A jti with 128 random bits (URL-safe, 22 characters)."""
    return b64url_encode(secrets.token_bytes(16))


def access_token_claims(grant: Grant, issuer: str) -> dict[str, Any]:
    """The claim set of a grant's access token (RFC 9068 §2.2), `iat` and `nbf` being the
    grant's issue second."""
    iat = int(grant.issued_at)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": grant.subject,
        "client_id": grant.subject,  # RFC 9068 §2.2: the agent is its own OAuth client
        "aud": grant.audience,
        "iat": iat,
        "nbf": iat,
        "exp": int(grant.expires_at),
        "jti": grant.grant_id,
        "scope": " ".join(grant.scope),
        # RFC 9396 rich authorization request: the one action on the one resource granted.
        "authorization_details": [
            {"type": "jit_intent", "actions": [grant.action], "locations": [grant.resource]}
        ],
        "txn": grant.task_id,
        "tier": grant.tier.value,
    }
    if grant.cnf_jkt:
        claims["cnf"] = {"jkt": grant.cnf_jkt}  # RFC 9449 §6.1: bound to the DPoP key
    if grant.actor:
        # RFC 8693 §4.1 delegation: `sub` is the person the task acts for (when it has one)
        # and `act` the agent acting, nested for chains. `client_id` stays the agent that
        # owns the task, so that it names the same workload as before (docs/delegation.md).
        claims["sub"] = grant.principal or grant.subject
        claims["act"] = dict(grant.actor)
    return claims
