"""The SDK's value objects: what a grant looks like to an agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from .._proto.jit.v1 import access_pb2 as pb
from ._errors import AccessDenied, ApprovalPending

_TIER_NAMES = {pb.TIER_STANDING: "standing", pb.TIER_JIT: "jit"}
_STATE_NAMES = {
    pb.GRANT_STATE_ACTIVE: "active",
    pb.GRANT_STATE_REVOKED: "revoked",
    pb.GRANT_STATE_EXPIRED: "expired",
}


def _datetime(ts: Any) -> datetime:
    return cast(datetime, ts.ToDatetime(tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class Lease:
    """The non-secret record of a grant's downstream credential (docs/brokers.md)."""

    broker: str
    handle: str
    """The broker's name for it (a PostgreSQL role name): safe to log."""
    expires_at: datetime
    state: str
    """`active`, `revoking` (its grant ended; the broker is taking it back) or `revoked`."""
    details: dict[str, str]

    @classmethod
    def from_proto(cls, lease: pb.Lease) -> Lease:
        return cls(
            broker=lease.broker,
            handle=lease.handle,
            expires_at=_datetime(lease.expires_at),
            state=lease.state,
            details=dict(lease.details),
        )


@dataclass(frozen=True, slots=True)
class Credential:
    """A downstream credential (a PostgreSQL login): SECRET, like the token. Never log it;
    it stops working when the grant ends (task completed, revoked, expired)."""

    broker: str
    username: str
    dsn: str = field(repr=False)
    """A libpq connection string: `psycopg.connect(grant.credential.dsn)`."""
    password: str = field(repr=False)
    expires_at: datetime

    @classmethod
    def from_proto(cls, credential: pb.Credential) -> Credential:
        return cls(
            broker=credential.broker,
            username=credential.username,
            dsn=credential.dsn,
            password=credential.password,
            expires_at=_datetime(credential.expires_at),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A credential for one intent. Send `token` to the resource server; never log it."""

    grant_id: str
    """Equals the token's `jti`: safe to log."""
    token: str = field(repr=False)
    """The RFC 9068 access token (empty in `task.grants()`: listings never carry tokens)."""
    tier: str
    """`standing` or `jit`."""
    action: str
    resource: str
    justification: str
    """The justification the intent was granted with."""
    audience: str
    scope: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    task_id: str
    state: str
    """`active`, `revoked` or `expired` as the sidecar last saw it (`unspecified` from a
    sidecar too old to say)."""
    end_reason: str
    """Why the grant ended (`completed`, `revoked_by_agent`, `agent_lost`, ...); empty while
    it is active."""
    decision_id: str
    """OPA's decision id for the evaluation that allowed the grant (audit correlation)."""
    raw: pb.Grant = field(repr=False, compare=False)
    """The protobuf message as the sidecar sent it."""
    lease: Lease | None = None
    """The downstream credential's non-secret record, when the policy asked for one."""
    credential: Credential | None = field(default=None, repr=False)
    """The downstream credential itself (e.g. `grant.credential.dsn`): only in the grant
    RequestGrant returned, never in listings."""

    @classmethod
    def from_proto(cls, grant: pb.Grant, credential: pb.Credential | None = None) -> Grant:
        """The SDK's view of a `jit.v1.Grant` (and of the RequestGrant answer's secret
        `credential`, when there is one)."""
        return cls(
            grant_id=grant.grant_id,
            token=grant.token,
            tier=_TIER_NAMES.get(grant.tier, "unspecified"),
            action=grant.intent.action,
            resource=grant.intent.resource,
            justification=grant.intent.justification,
            audience=grant.audience,
            scope=tuple(grant.scope),
            issued_at=_datetime(grant.issued_at),
            expires_at=_datetime(grant.expires_at),
            task_id=grant.task_id,
            state=_STATE_NAMES.get(grant.state, "unspecified"),
            end_reason=grant.revocation_reason,
            decision_id=grant.decision_id,
            raw=grant,
            lease=Lease.from_proto(grant.lease) if grant.HasField("lease") else None,
            credential=Credential.from_proto(credential) if credential is not None else None,
        )

    @property
    def active(self) -> bool:
        """Active when the sidecar answered and not expired since (a revocation after that
        answer shows only in a fresh `task.grants()` or in introspection)."""
        return self.state == "active" and self.expires_in > 0

    @property
    def expires_in(self) -> float:
        """Seconds until the token expires (negative once it has)."""
        return (self.expires_at - datetime.now(UTC)).total_seconds()

    @property
    def authorization(self) -> str:
        """The `Authorization` header value for a bearer token."""
        return f"Bearer {self.token}"


def grant_from_response(response: pb.RequestGrantResponse) -> Grant:
    """The grant of a GRANTED answer; AccessDenied or ApprovalPending otherwise."""
    if response.decision == pb.DECISION_GRANTED:
        credential = response.credential if response.HasField("credential") else None
        return Grant.from_proto(response.grant, credential)
    if response.decision == pb.DECISION_PENDING_APPROVAL:
        raise ApprovalPending(response.approval_id, response.reasons)
    raise AccessDenied(response.reasons, response.decision_id)
