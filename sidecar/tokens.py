"""Signing keys, RFC 9068 access tokens and the JWKS that verifies them.

Keys are parsed once; signing builds the compact JWS directly (the header is encoded once per
key), which costs about half of a generic JWT library's encode. Verification of our own
tokens (introspection) goes through PyJWT with an explicit per-key algorithm allow-list.
Nothing here ever logs or returns private key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import ConfigError
from .model import Grant

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a secret)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_bytes(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (OKP, EC or RSA)."""
    kty = jwk.get("kty")
    members: tuple[str, ...]
    if kty == "OKP":
        members = ("crv", "kty", "x")
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
    return b64url(hashlib.sha256(canonical.encode()).digest())


def public_jwk(key: PrivateKey) -> dict[str, str]:
    """The public half as a JWK (without kid/alg/use)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
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
    def from_private_key(cls, key: PrivateKey) -> SigningKey:
        if isinstance(key, ed25519.Ed25519PrivateKey):
            alg = "EdDSA"
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
            header_b64=_b64url_bytes(header),
        )

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Compact JWS of `claims` (RFC 7515), signed with this key."""
        payload = _b64url_bytes(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = self.header_b64 + b"." + payload
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            signature = self.private_key.sign(signing_input)
        else:
            der = self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return (signing_input + b"." + _b64url_bytes(signature)).decode("ascii")


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
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


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


def load_or_create_key(path: Path, alg: str, *, create: bool) -> tuple[SigningKey, bool]:
    """Load the key at `path`; with `create` (dev mode) generate it when missing.

    Returns the key and whether it was generated.
    """
    if not path.exists():
        if not create:
            raise ConfigError(f"signing key {path} does not exist")
        key = generate_private_key(alg)
        write_private_key(path, key)
        return SigningKey.from_private_key(key), True
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"signing key {path} is readable by others (mode {mode:o}); chmod 600 it")
    return SigningKey.from_private_key(load_private_key(path)), False


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
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    kid = header.get("kid")
    if not isinstance(kid, str) or header.get("typ") != TOKEN_TYPE:
        return None
    return kid


def verify_with(token: str, jwk: Mapping[str, str], *, issuer: str) -> dict[str, Any] | None:
    """Claims of `token` when `jwk` (public) verifies its signature and `iss` matches.

    The algorithm is pinned by the key; time claims are the caller's to check, with its
    (injectable) clock.
    """
    try:
        key = jwt.PyJWK(dict(jwk))
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=[jwk["alg"]],
            issuer=issuer,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    return claims


def new_grant_id() -> str:
    """A jti with 128 random bits (URL-safe, 22 characters)."""
    return b64url(secrets.token_bytes(16))


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
    return claims
