"""The `static` broker: hands out one long-lived secret (an API key) read from a file or the
environment, for the egress proxy to inject (docs/brokers.md, "Secretless HTTP egress").

It makes nothing and so revokes nothing: the secret belongs to the upstream, and the agent
never holds it; what ends with the grant is the agent's ability to have the proxy use it.
Rotation is the secret source's: replace the file and the next request uses the new value.
The lease names the secret by `secret_id` (a hash prefix), never by value.

`UpstreamSecretBroker` is what such brokers share (the `oauth2` broker is the other one): the
credential is chosen by configuration, one per upstream, never by a decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from .base import CredentialSpec, CredentialSpecInvalid, IssuedCredential, Lease, LeaseRequest
from .sources import SecretSource, secret_id


class UpstreamSecretBroker:
    """A broker handing out the one secret of an upstream; subclasses say how to get it."""

    NAME: ClassVar[str]

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    @property
    def name(self) -> str:
        return self.NAME

    def parse(self, spec: Mapping[str, Any], *, resource: str) -> CredentialSpec:
        """`{"broker": <name>}` and nothing else."""
        unknown = set(spec) - {"broker"}
        if unknown:
            raise CredentialSpecInvalid(f"unknown member(s) {sorted(unknown)}")
        return CredentialSpec(self.NAME)

    async def secret(self) -> str:
        raise NotImplementedError

    async def issue(self, request: LeaseRequest, spec: CredentialSpec) -> IssuedCredential:
        secret = await self.secret()
        version = secret_id(secret)
        lease = Lease(
            broker=self.NAME,
            handle=f"{self.upstream}:{version}",
            grant_id=request.grant_id,
            expires_at=request.expires_at,
            details={"upstream": self.upstream, "secret_id": version},
        )
        return IssuedCredential(lease, {"value": secret})

    async def revoke(self, lease: Lease) -> None:
        """Nothing per grant: the secret is the upstream's (or shared), not made for it."""

    async def orphans(self, known: Collection[str]) -> list[Lease]:
        return []

    async def aclose(self) -> None:
        pass


class StaticBroker(UpstreamSecretBroker):
    """One upstream's static secret."""

    NAME = "static"

    def __init__(self, upstream: str, source: SecretSource) -> None:
        super().__init__(upstream)
        self._source = source

    async def secret(self) -> str:
        return self._source.current()
