"""Proof-of-possession: binding a task's tokens to a key the agent holds (RFC 9449 DPoP).

An agent may give `BeginTask` the public JWK of a key pair it generated for the task; every
token of the task then carries `cnf.jkt` = the key's RFC 7638 thumbprint, and a resource
server accepts the token only with a DPoP proof signed by that key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .errors import InvalidArgument, Reason
from .tokens import jwk_thumbprint

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
