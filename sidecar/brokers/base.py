"""The broker interface and its value objects.

A broker implements three operations (docs/brokers.md, "Writing a broker"):
- `issue` makes a credential for exactly one granted intent, valid until the grant's `exp`;
- `revoke` takes it back, idempotently (it is retried until it succeeds);
- `orphans` lists credentials the broker made that nobody recorded (a crash between the
  broker's work and the journal's commit), so that start-up can revoke them.

What a broker hands back is split in two on purpose: the `Lease` is the non-secret record
(persisted, audited, listed, shown to operators) and the `IssuedCredential.secret` goes to the
agent once, in the RequestGrant response, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import PolicyResultInvalid, Reason, Unavailable


class BrokerError(Exception):
    """A broker operation failed; `message` never contains a secret."""


class BrokerUnavailable(Unavailable):
    """The downstream system could not issue (or revoke) a credential: fail closed."""

    default_reason = Reason.BROKER_UNAVAILABLE

    def __init__(self, broker: str, message: str, cause: str = "unavailable") -> None:
        super().__init__(
            f"{broker} broker: {message}",
            metadata={"broker": broker, "cause": cause},
        )
        self.broker = broker
        self.cause = cause


class CredentialSpecInvalid(PolicyResultInvalid):
    """The decision's `credential` object is malformed or names an unknown broker."""

    def __init__(self, message: str) -> None:
        super().__init__(f"decision.credential: {message}", cause="shape")


@dataclass(frozen=True, slots=True)
class CredentialSpec:
    """A validated `credential` object of a decision: which broker, with what parameters."""

    broker: str
    params: Mapping[str, Any] = field(default_factory=dict)
    """Broker-specific and already validated by that broker's `parse`."""

    def as_record(self) -> dict[str, Any]:
        return {"broker": self.broker, **{k: _plain(v) for k, v in self.params.items()}}


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """What a broker needs to know about the grant it issues for."""

    grant_id: str
    task_id: str
    subject: str
    action: str
    resource: str
    expires_at: float
    """The grant's `exp` (Unix seconds): the credential must not outlive it."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The non-secret record of one downstream credential."""

    broker: str
    handle: str
    """The broker's own name for the credential (a role name, a key id): never a secret."""
    grant_id: str
    expires_at: float
    details: Mapping[str, str] = field(default_factory=dict)
    """Non-secret facts an operator needs (database, privileges, objects)."""
    state: str = "active"
    """`active`; `revoking` once its grant ended (the broker's revoke is pending or being
    retried); `revoked`. Kept by the store, not part of the record."""

    def as_record(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "handle": self.handle,
            "grant_id": self.grant_id,
            "expires_at": self.expires_at,
            "details": dict(self.details),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Lease:
        return cls(
            broker=str(record["broker"]),
            handle=str(record["handle"]),
            grant_id=str(record["grant_id"]),
            expires_at=float(record["expires_at"]),
            details={str(k): str(v) for k, v in dict(record.get("details") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A lease and the secret that goes to the agent, once."""

    lease: Lease
    secret: Mapping[str, str] = field(repr=False)
    """E.g. `{"dsn": …, "username": …, "password": …}`. Never logged, stored or audited."""

    def __repr__(self) -> str:  # the dataclass repr already hides `secret`; say so
        return f"IssuedCredential(lease={self.lease!r}, secret=<redacted>)"


class Broker(Protocol):
    """One downstream system. Implementations live in `sidecar/brokers/<name>.py`."""

    @property
    def name(self) -> str:
        """The value of `credential.broker` in a decision that selects this broker."""
        ...

    def parse(self, spec: Mapping[str, Any], *, resource: str) -> CredentialSpec:
        """Validate a decision's `credential` object for this broker, as strictly as the rest
        of the decision: anything unexpected raises `CredentialSpecInvalid`."""
        ...

    async def issue(self, request: LeaseRequest, spec: CredentialSpec) -> IssuedCredential:
        """Make the credential. On failure raise `BrokerUnavailable` and leave nothing
        behind (undo any half-made credential before raising)."""
        ...

    async def revoke(self, lease: Lease) -> None:
        """End the credential and every session opened with it. Idempotent: revoking a
        lease that is already gone succeeds. Raise `BrokerUnavailable` to be retried."""
        ...

    async def orphans(self, known: Collection[str]) -> list[Lease]:
        """Credentials this broker made whose handle is not in `known` (crash between the
        broker's work and the journal's commit); start-up revokes them."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
