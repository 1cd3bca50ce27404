"""Test-side identity material: trust domains with real keys, bundle files, JWT-SVIDs, OIDC
tokens, DPoP proofs, all minted here (any header, any algorithm, including the bad ones)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sidecar.jws import jwk_thumbprint

AUDIENCE = "jit-sidecar"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int | None = None) -> str:
    length = size or max(1, (value.bit_length() + 7) // 8)
    return b64(value.to_bytes(length, "big"))


@dataclass
class Key:
    """A private key, its kid and the algorithm it signs with."""

    private: PrivateKey
    kid: str
    alg: str

    @classmethod
    def generate(cls, alg: str = "ES256", kid: str | None = None) -> Key:
        private: PrivateKey
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            private = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return cls(private, kid or secrets.token_hex(16), alg)

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            n = pub.public_numbers()
            jwk: dict[str, Any] = {"kty": "RSA", "n": _int(n.n), "e": _int(n.e)}
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            n2 = pub.public_numbers()
            size = (pub.curve.key_size + 7) // 8
            crv = {256: "P-256", 384: "P-384"}[pub.curve.key_size]
            jwk = {"kty": "EC", "crv": crv, "x": _int(n2.x, size), "y": _int(n2.y, size)}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        return {**jwk, "kid": self.kid, **extra}

    def private_jwk(self) -> dict[str, Any]:
        """The JWK including the private scalar (for the 'private key in jwk' test)."""
        jwk = self.public_jwk()
        jwk.pop("kid")
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            jwk["d"] = _int(self.private.private_numbers().private_value, 32)
        elif isinstance(self.private, ed25519.Ed25519PrivateKey):
            raw = self.private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            jwk["d"] = b64(raw)
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], alg: str | None = None, **header: Any) -> str:
        hdr = {"alg": alg or self.alg, "kid": self.kid, "typ": "JWT", **header}
        hdr = {k: v for k, v in hdr.items() if v is not None}
        return sign_raw(hdr, claims, self.private)


def sign_raw(
    header: dict[str, Any], claims: dict[str, Any] | str, key: PrivateKey | bytes | None
) -> str:
    """A compact JWS with exactly this header, signed per header['alg'] (any alg, even none
    or HS* with a public key as the secret). `claims` as a string is the payload's JSON text
    verbatim (e.g. with a duplicate member)."""
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    text = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    p = b64(text.encode())
    data = f"{h}.{p}".encode()
    alg = header["alg"]
    if alg == "none":
        sig = b""
    elif alg.startswith("HS"):
        assert isinstance(key, bytes)
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        sig = hmac.new(key, data, digest).digest()
    else:
        digest_alg = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
        if isinstance(key, ed25519.Ed25519PrivateKey):
            sig = key.sign(data)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest_alg[alg[2:]])))
            size = (key.curve.key_size + 7) // 8
            sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        elif isinstance(key, rsa.RSAPrivateKey):
            hash_alg = digest_alg[alg[2:]]
            pad: padding.AsymmetricPadding = (
                padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
                if alg.startswith("PS")
                else padding.PKCS1v15()
            )
            sig = key.sign(data, pad, hash_alg)
        else:
            raise ValueError("no key")
    return f"{h}.{p}.{b64(sig)}"


@dataclass
class TrustDomain:
    """A SPIFFE trust domain of the tests: its JWT authorities and a bundle file."""

    name: str
    keys: list[Key] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, *algs: str) -> TrustDomain:
        return cls(name, [Key.generate(a) for a in (algs or ("ES256",))])

    @property
    def key(self) -> Key:
        return self.keys[0]

    def bundle(self) -> dict[str, Any]:
        """SPIFFE bundle format, with an X.509 authority member that must be ignored."""
        members = [k.public_jwk(use="jwt-svid") for k in self.keys]
        members.append({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["AAAA"]})
        return {"keys": members, "spiffe_sequence": 1}

    def write_bundle(self, path: Path) -> Path:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.bundle()))
        tmp.replace(path)
        return path

    def svid(
        self,
        path: str = "agent/billing",
        *,
        key: Key | None = None,
        aud: Any = AUDIENCE,
        ttl: int = 300,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": f"spiffe://{self.name}/{path}",
            "aud": aud,
            "exp": now + ttl,
            "iat": now,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return (key or self.key).sign(body)


def dpop_proof(
    key: Key,
    method: str,
    url: str,
    access_token: str | None,
    *,
    iat: float | None = None,
    jti: str | None = None,
    jwk: dict[str, Any] | None = None,
    **header: Any,
) -> str:
    """An RFC 9449 proof signed with `key` (`ath` only with an access token: a BeginTask
    proof binds a key before any token exists)."""
    claims = {
        "htm": method,
        "htu": url,
        "iat": int(time.time() if iat is None else iat),
        "jti": jti or secrets.token_urlsafe(16),
    }
    if access_token is not None:
        claims["ath"] = b64(hashlib.sha256(access_token.encode()).digest())
    public = jwk if jwk is not None else {k: v for k, v in key.public_jwk().items() if k != "kid"}
    hdr = {"typ": "dpop+jwt", "alg": key.alg, "jwk": public, **header}
    return sign_raw(hdr, claims, key.private)


def thumbprint(key: Key) -> str:
    return jwk_thumbprint(key.public_jwk())
