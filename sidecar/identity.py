"""Who is calling? Authenticators turn gRPC metadata into a verified `Identity`.

Modes (`--identity`): `dev` trusts every local caller and gives it `--dev-subject`; `jwt-svid`
and `oidc` verify a bearer token from the `authorization` metadata (docs/identity.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from .config import Config
from .errors import ConfigError, Unauthenticated
from .model import Identity

log = logging.getLogger("jit_sidecar.identity")


class Authenticator(Protocol):
    method: str

    async def authenticate(self, metadata: Mapping[str, str]) -> Identity:
        """The verified caller, or raise Unauthenticated (reason identity_invalid)."""
        ...


def trust_domain_of(spiffe_id: str) -> str:
    """`example.org` for `spiffe://example.org/agent/x`; raises ValueError otherwise."""
    if not spiffe_id.startswith("spiffe://"):
        raise ValueError("not a SPIFFE ID")
    domain, _, _path = spiffe_id[len("spiffe://") :].partition("/")
    if not domain:
        raise ValueError("SPIFFE ID without a trust domain")
    return domain


class DevAuthenticator:
    """Every caller is `dev_subject`. For a laptop, never for a shared machine."""

    method = "dev"

    def __init__(self, subject: str) -> None:
        try:
            domain = trust_domain_of(subject)
        except ValueError as err:
            raise ConfigError(f"dev_subject must be a SPIFFE ID: {err}") from err
        self._identity = Identity(subject=subject, trust_domain=domain, method="dev")

    async def authenticate(self, metadata: Mapping[str, str]) -> Identity:
        return self._identity


def bearer_token(metadata: Mapping[str, str]) -> str:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
    return token.strip()


def create_authenticator(config: Config) -> Authenticator:
    if config.identity == "dev":
        log.warning(
            "DEV IDENTITY MODE: every local caller is trusted as %s. Never use this on a "
            "shared machine or in production (use --identity jwt-svid or oidc).",
            config.dev_subject,
        )
        return DevAuthenticator(config.dev_subject)
    raise ConfigError(f"identity mode {config.identity!r} is not available in this build")
