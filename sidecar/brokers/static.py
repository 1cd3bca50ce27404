"""The `static` broker: hands out one long-lived secret (an API key) read from a file or the
environment, for the egress proxy to inject (docs/brokers.md, "Secretless HTTP egress").

It makes nothing and so revokes nothing: the secret belongs to the upstream, and the agent
never holds it; what ends with the grant is the agent's ability to have the proxy use it.
Rotation is the secret source's: replace the file and the next request uses the new value.
The lease names the secret by `secret_id` (a hash prefix), never by value.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .base import CredentialSpec, CredentialSpecInvalid, IssuedCredential, Lease, LeaseRequest
from .sources import SecretSource, secret_id

NAME = "static"


def configured_spec(broker: str, spec: Mapping[str, Any]) -> CredentialSpec:
    """`{"broker": <broker>}` and nothing else: for brokers whose credential is chosen by
    configuration (one per upstream), never by a decision."""
    unknown = set(spec) - {"broker"}
    if unknown:
        raise CredentialSpecInvalid(f"unknown member(s) {sorted(unknown)}")
    return CredentialSpec(broker)


def upstream_credential(
    broker: str, upstream: str, request: LeaseRequest, secret: str
) -> IssuedCredential:
    """An upstream's secret for one grant; the lease names it by `secret_id`, never by value."""
    version = secret_id(secret)
    lease = Lease(
        broker=broker,
        handle=f"{upstream}:{version}",
        grant_id=request.grant_id,
        expires_at=request.expires_at,
        details={"upstream": upstream, "secret_id": version},
    )
    return IssuedCredential(lease, {"value": secret})


class StaticBroker:
    """One upstream's static secret."""

    def __init__(self, upstream: str, source: SecretSource) -> None:
        self.upstream = upstream
        self._source = source

    @property
    def name(self) -> str:
        return NAME

    def parse(self, spec: Mapping[str, Any], *, resource: str) -> CredentialSpec:
        """`{"broker": "static"}`: the secret is chosen by configuration, never by a decision."""
        return configured_spec(NAME, spec)

    async def issue(self, request: LeaseRequest, spec: CredentialSpec) -> IssuedCredential:
        return upstream_credential(NAME, self.upstream, request, self._source.current())

    async def revoke(self, lease: Lease) -> None:
        """Nothing to undo: the secret is the upstream's, not made for this grant."""

    async def orphans(self, known: Collection[str]) -> list[Lease]:
        return []

    async def aclose(self) -> None:
        pass
