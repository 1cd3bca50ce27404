"""Proof-of-possession: binding a task's tokens to a key the agent holds (RFC 9449 DPoP).

An agent may give `BeginTask` the public JWK of a key pair it generated for the task; every
token of the task then carries `cnf.jkt` = the key's RFC 7638 thumbprint, and a resource
server accepts the token only with a DPoP proof signed by that key: `verify_dpop_proof` below
is that check (the resource-server side), `thumbprint_of_public_jwk` the BeginTask side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric import ec

from .errors import InvalidArgument, Reason
from .jws import PRIVATE_JWK_MEMBERS, JwsError, VerifyKey, public_key_from_jwk, verify_signature
from .jws import parse as jws_parse
from .tokens import b64url, jwk_thumbprint

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


def _b64(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, str) or "=" in value:
        raise InvalidArgument(
            f"pop_jwk.{name} must be base64url without padding", Reason.INVALID_ARGUMENT
        )
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as err:
        raise InvalidArgument(f"pop_jwk.{name} is not base64url", Reason.INVALID_ARGUMENT) from err
    if len(raw) != size:
        raise InvalidArgument(f"pop_jwk.{name} must be {size} bytes", Reason.INVALID_ARGUMENT)
    return raw


def thumbprint_of_public_jwk(jwk: Mapping[str, Any]) -> str:
    """Validate a public EC P-256 or Ed25519 JWK and return its RFC 7638 thumbprint."""
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise InvalidArgument(
            "pop_jwk must be a public key (it holds private members)", Reason.INVALID_ARGUMENT
        )
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "EC" and crv == "P-256":
        x = _b64(jwk.get("x"), "x", 32)
        y = _b64(jwk.get("y"), "y", 32)
        try:
            ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        except ValueError as err:
            raise InvalidArgument(
                "pop_jwk is not a point on P-256", Reason.INVALID_ARGUMENT
            ) from err
    elif kty == "OKP" and crv == "Ed25519":
        _b64(jwk.get("x"), "x", 32)
    else:
        raise InvalidArgument(
            "pop_jwk must be an EC P-256 or OKP Ed25519 public key", Reason.INVALID_ARGUMENT
        )
    return jwk_thumbprint(jwk)


# ---------------------------------------------------------------------------- resource server

DPOP_TYPE = "dpop+jwt"
#: RFC 9449 proof algorithms we accept: the key types BeginTask accepts.
DPOP_ALGORITHMS = frozenset({"ES256", "EdDSA"})
_ALG_FOR_KEY: dict[tuple[object, object], str] = {
    ("EC", "P-256"): "ES256",
    ("OKP", "Ed25519"): "EdDSA",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_METHOD = re.compile(r"[A-Z]{1,16}")


class DpopError(Exception):
    """A DPoP proof (or its binding to the token) is not acceptable.

    `reason` is a bounded snake_case label (`proof_missing`, `proof_malformed`,
    `typ_invalid`, `alg_not_allowed`, `jwk_invalid`, `jwk_private`, `signature_invalid`,
    `htm_mismatch`, `htu_mismatch`, `iat_invalid`, `proof_stale`, `jti_invalid`,
    `jti_replayed`, `replay_cache_full`, `ath_mismatch`, `nonce_mismatch`,
    `token_not_bound`, `jkt_mismatch`).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class DpopProof:
    """An accepted proof."""

    jkt: str
    """RFC 7638 thumbprint of the proof key (= the token's `cnf.jkt`)."""
    jti: str
    iat: float


class ReplayCache:
    """Proof `jti`s seen recently, bounded in size; thread-safe.

    An entry lives until the proof could no longer pass the `iat` window. When full of live
    entries, new proofs are refused (`replay_cache_full`) rather than forgetting one that
    could then be replayed (fail closed).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str, expires_at: float, now: float) -> bool:
        """Record `key` until `expires_at`; False when it is already recorded (a replay)."""
        with self._lock:
            while self._entries:
                first_key, first_expiry = next(iter(self._entries.items()))
                if first_expiry > now:
                    break
                del self._entries[first_key]
            seen = self._entries.get(key)
            if seen is not None and seen > now:
                return False
            if len(self._entries) >= self._max:
                # Entries are (nearly) in expiry order; drop any expired one further in.
                for k in [k for k, e in self._entries.items() if e <= now]:
                    del self._entries[k]
                if len(self._entries) >= self._max:
                    raise DpopError("replay_cache_full", "too many recent proofs to track")
            self._entries[key] = expires_at
            return True

    def __len__(self) -> int:
        return len(self._entries)


def _normalize_percent(text: str) -> str:
    def fix(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else "%" + m.group(1).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", fix, text)


def normalize_htu(url: str) -> str:
    """RFC 9449 §4.3 comparison form: scheme/host lowercased, default port and query and
    fragment dropped, empty path as `/`, percent-encoding normalised (RFC 3986 §6.2.2-3)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise DpopError("htu_mismatch", "the URL is not valid") from err
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise DpopError("htu_mismatch", "the URL must be absolute http(s)")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _normalize_percent(parts.path) or "/"
    return urlunsplit((scheme, netloc, path, "", ""))


def access_token_hash(access_token: str) -> str:
    """`ath`: base64url(SHA-256(ASCII access token)) without padding."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def verify_dpop_proof(
    access_token: str,
    proof: str | None,
    method: str,
    url: str,
    *,
    token_claims: Mapping[str, Any],
    replay_cache: ReplayCache,
    now: float | None = None,
    max_age: float = 60.0,
    leeway: float = 5.0,
    nonce: str | None = None,
) -> DpopProof:
    """Check an RFC 9449 DPoP proof presented with a sender-constrained access token.

    Args:
        access_token: the token exactly as presented (`Authorization: DPoP <token>`).
        proof: the `DPoP` request header (None or "" when absent).
        method: the request's HTTP method (`GET`, `POST`, ...).
        url: the request's absolute URL as the resource server sees it; query and fragment
            are ignored.
        token_claims: the access token's claims, ALREADY VERIFIED by the caller (signature,
            iss, aud, exp, revocation); the proof key must match their `cnf.jkt`.
        replay_cache: shared by every request of this resource server (process-wide).
        now: current time in epoch seconds (default: the system clock).
        max_age: how old (by `iat`) a proof may be; also how long its `jti` is remembered.
        leeway: how far in the future a proof's `iat` may lie (clock skew).
        nonce: the server-provided nonce when the resource server uses them.

    Returns the accepted proof; raises DpopError with a bounded `reason` otherwise. Checks:
    `typ` = dpop+jwt; `alg` ES256 or EdDSA matching a public `jwk` header (EC P-256 or
    Ed25519, no private members, no `jku`/`x5u`/`x5c`/`crit`); signature; `htm` = method;
    `htu` = url (normalised); `iat` within [now - max_age, now + leeway]; `jti` unseen;
    `ath` = hash of `access_token`; thumbprint of `jwk` = `cnf.jkt`.
    """
    now = time.time() if now is None else now
    cnf = token_claims.get("cnf")
    expected_jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if not isinstance(expected_jkt, str) or not expected_jkt:
        raise DpopError("token_not_bound", "the access token carries no cnf.jkt")
    if not proof:
        raise DpopError("proof_missing", "a DPoP proof is required for this token")
    try:
        jws = jws_parse(proof)
    except JwsError as err:
        raise DpopError("proof_malformed", err.message) from err
    header, claims = jws.header, jws.claims
    if header.get("typ") != DPOP_TYPE:
        raise DpopError("typ_invalid", "the proof's typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in DPOP_ALGORITHMS:
        raise DpopError("alg_not_allowed", "the proof's alg must be ES256 or EdDSA")
    for member in ("jku", "x5u", "x5c", "crit"):
        if member in header:
            raise DpopError("proof_malformed", f"header member {member!r} is refused")
    jwk = header.get("jwk")
    if not isinstance(jwk, Mapping):
        raise DpopError("jwk_invalid", "the proof has no jwk header")
    if any(m in jwk for m in PRIVATE_JWK_MEMBERS):
        raise DpopError("jwk_private", "the proof's jwk holds private key members")
    if _ALG_FOR_KEY.get((jwk.get("kty"), jwk.get("crv"))) != alg:
        raise DpopError("jwk_invalid", "the proof's jwk does not fit its alg")
    try:
        public = public_key_from_jwk(jwk)
        jkt = jwk_thumbprint(jwk)
    except (ValueError, TypeError) as err:
        raise DpopError("jwk_invalid", f"the proof's jwk is not usable: {err}") from err
    try:
        verify_signature(jws, alg, VerifyKey("dpop", public, frozenset({alg})))
    except JwsError as err:
        raise DpopError("signature_invalid", "the proof's signature does not verify") from err
    htm = claims.get("htm")
    if not isinstance(htm, str) or htm != method.upper() or not _METHOD.fullmatch(htm):
        raise DpopError("htm_mismatch", "the proof is for another HTTP method")
    htu = claims.get("htu")
    if not isinstance(htu, str):
        raise DpopError("htu_mismatch", "the proof has no htu")
    try:
        proof_target = normalize_htu(htu)
    except DpopError as err:
        raise DpopError("htu_mismatch", "the proof's htu is not a valid URL") from err
    if proof_target != normalize_htu(url):
        raise DpopError("htu_mismatch", "the proof is for another URL")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise DpopError("iat_invalid", "the proof has no numeric iat")
    if iat > now + leeway:
        raise DpopError("iat_invalid", "the proof was issued in the future")
    if iat < now - max_age:
        raise DpopError("proof_stale", "the proof is too old")
    if nonce is not None and claims.get("nonce") != nonce:
        raise DpopError("nonce_mismatch", "the proof does not carry the server's nonce")
    ath = claims.get("ath")
    if not isinstance(ath, str) or not hmac.compare_digest(ath, access_token_hash(access_token)):
        raise DpopError("ath_mismatch", "the proof is not bound to this access token")
    if not hmac.compare_digest(jkt, expected_jkt):
        raise DpopError("jkt_mismatch", "the proof key is not the key the token is bound to")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
        raise DpopError("jti_invalid", "the proof needs a jti of 8 to 256 characters")
    # Record the jti only once everything else holds, so junk cannot fill the cache.
    if not replay_cache.add(f"{jkt}:{jti}", float(iat) + max_age + leeway, now):
        raise DpopError("jti_replayed", "the proof's jti was used before")
    return DpopProof(jkt=jkt, jti=jti, iat=float(iat))
