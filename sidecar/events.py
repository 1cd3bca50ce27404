"""Audit events as typed values: one frozen dataclass per kind of record.

The engine emits these; the journal writes `event.record()` to the audit log (the JSON
records docs/api.md "Audit log" describes: `event` and `time`, then the event's fields, a
field left out when it is None) and hands the values themselves to the state store, which
dispatches on their type. `from_record` reads a record back, for the replay at start-up.

Times are kept as the RFC 3339 strings the record carries, so an event applied live and the
same event replayed from the log give the store exactly the same values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What every audit record has: its kind (`name`) and when it happened."""

    name: ClassVar[str] = ""
    time: str
    """RFC 3339 UTC, microseconds (sidecar.clock.rfc3339)."""
    principal: dict[str, Any] | None = None
    """The person the record's task acts for (docs/delegation.md): `subject` and `issuer`,
    and on `task_begun` the recorded `claims` too. Set by the journal's stamp, never by the
    code that makes the event; absent for a task without a principal."""

    def record(self) -> dict[str, Any]:
        """The audit record without its chain fields (`seq`, `prev_hash`, `hash`)."""
        out: dict[str, Any] = {"event": self.name}
        for key in _fields(type(self)):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskBegun(Event):
    """BeginTask opened a task."""

    name: ClassVar[str] = "task_begun"
    task_id: str
    subject: str
    expires_at: str
    heartbeat_interval_seconds: int
    goal: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    pop_jkt: str | None = None
    identity_method: str | None = None
    plan: list[dict[str, Any]] | None = None
    """The declared plan (intents), when BeginTask carried one (model.TaskFlow)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCompleted(Event):
    """A task ended (completed, failed, crashed, expired, revoked)."""

    name: ClassVar[str] = "task_completed"
    task_id: str
    subject: str | None = None
    state: str
    reason: str | None = None
    detail: str | None = None
    revoked_grants: int | None = None
    origin: str | None = None
    """The sidecar whose fleet revocation caused this (docs/scale-out.md)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantIssued(Event):
    """A token was issued."""

    name: ClassVar[str] = "grant_issued"
    task_id: str
    grant_id: str
    subject: str
    intent: dict[str, Any]
    tier: str
    scope: list[str]
    audience: str
    expires_at: str
    kid: str
    decision_id: str | None = None
    ttl_seconds: int | None = None
    ttl_limited_by: str | None = None
    reasons: list[str] | None = None
    cnf_jkt: str | None = None
    cached: bool | None = None
    approval_id: str | None = None
    actor: dict[str, Any] | None = None
    """The token's RFC 8693 `act` claim, when the task has a principal or after exchange."""
    exchanged_from: str | None = None
    """The grant whose token was exchanged for this one (RFC 8693 token exchange)."""
    flow_class: str | None = None
    """The intent's risk class, from the policy's flow report."""
    flow_labels: list[str] | None = None
    """The intent's flow labels, from the policy's flow report: the task accumulates them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantEnded(Event):
    """A grant ended: the common shape of `grant_revoked` and `grant_expired`."""

    task_id: str
    grant_id: str
    subject: str | None = None
    tier: str | None = None
    reason: str | None = None
    detail: str | None = None
    origin: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRevoked(GrantEnded):
    """A grant was revoked before its `exp` (see docs/api.md for the reasons)."""

    name: ClassVar[str] = "grant_revoked"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantExpired(GrantEnded):
    """A grant reached its `exp`."""

    name: ClassVar[str] = "grant_expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantDenied(Event):
    """The policy denied an intent, or an approval contradicted it."""

    name: ClassVar[str] = "grant_denied"
    task_id: str
    subject: str
    intent: dict[str, Any]
    reasons: list[str]
    decision_id: str | None = None
    approval_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantPending(Event):
    """An intent waits for a human's approval."""

    name: ClassVar[str] = "grant_pending"
    approval_id: str
    task_id: str
    subject: str
    intent: dict[str, Any]
    intent_hash: str
    ttl_seconds: int
    expires_at: str
    decision: dict[str, Any] | None = None
    """The decision the approval yields: tier, ttl_seconds, audience, scope (and `four_eyes`,
    `owners` when set)."""
    reasons: list[str] | None = None
    decision_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalDecided(Event):
    """An approver approved or denied a pending intent."""

    name: ClassVar[str] = "approval_decided"
    approval_id: str
    approved: bool
    task_id: str | None = None
    subject: str | None = None
    approver: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalExpired(Event):
    """Nobody decided in time, or the approval's task ended first."""

    name: ClassVar[str] = "approval_expired"
    approval_id: str
    task_id: str | None = None
    subject: str | None = None
    reason: str | None = None
    origin: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyFailed(Event):
    """OPA gave no usable decision."""

    name: ClassVar[str] = "policy_error"
    task_id: str
    subject: str
    intent: dict[str, Any]
    reason: str
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRejected(Event):
    """An authenticated request was refused (bad input, limits, unknown task)."""

    name: ClassVar[str] = "request_rejected"
    rpc: str
    subject: str
    reason: str
    detail: str
    task_id: str | None = None
    intent: dict[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRotated(Event):
    """A signing key became current."""

    name: ClassVar[str] = "key_rotated"
    kid: str
    jwk: dict[str, str]
    previous_kid: str | None = None
    previous_jwk: dict[str, str] | None = None
    retire_at: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationOrdered(Event):
    """An operator's fleet-wide revocation, for the shared store to publish."""

    name: ClassVar[str] = "revocation_ordered"
    scope: str
    revocation_expires_at: str
    reason: str
    grant_id: str | None = None
    task_id: str | None = None
    subject: str | None = None
    cutoff: str | None = None
    detail: str | None = None
    person: str | None = None
    """scope `principal`: the person (a principal's `sub`) whose tasks end, by any agent."""

    @property
    def target(self) -> str:
        """The grant id, task id, subject or person the order names ("" for everything)."""
        return {
            "grant": self.grant_id,
            "task": self.task_id,
            "subject": self.subject,
            "principal": self.person,
        }.get(self.scope) or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzenDecided(Event):
    """An AuthZEN evaluation was answered (docs/authzen.md); no token is involved."""

    name: ClassVar[str] = "authzen_decision"
    subject: str
    authzen: dict[str, str]
    """subject_type, action, resource_type and resource of the request, clipped."""
    decision: bool
    request_id: str | None = None
    reason: str | None = None
    cause: str | None = None
    evaluation_id: str | None = None
    approval_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressUsage(Event):
    """What a grant did through the egress proxy, once, when it ended or the sidecar
    stopped while it was active (docs/brokers.md, "Audit and metrics")."""

    name: ClassVar[str] = "egress_usage"
    task_id: str
    grant_id: str
    subject: str
    upstream: str
    requests: int
    denials: int
    bytes_sent: int
    bytes_received: int
    streams_cut: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SsfStreamChanged(Event):
    """A Shared Signals stream was created, updated, had its status changed or was deleted
    (docs/shared-signals.md); audited before the change. Never the push secret."""

    name: ClassVar[str] = "ssf_stream_changed"
    stream_id: str
    change: str
    """`created`, `updated`, `status_changed` or `deleted`."""
    aud: str
    delivery_method: str
    endpoint_url: str | None = None
    status: str
    events_delivered: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unrecognised(Event):
    """A record of a kind this version does not know, or that is not the engine's (the
    audit log's own records): replayed as nothing."""

    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialIssued(Event):
    """A broker issued a downstream credential for a grant (committed with `grant_issued`).
    Carries the broker and its non-secret handle, never the secret."""

    name: ClassVar[str] = "credential_issued"
    task_id: str
    grant_id: str
    broker: str
    handle: str
    expires_at: str
    subject: str | None = None
    details: dict[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialRevoked(Event):
    """A broker revoked a downstream credential (its grant had ended, or nobody recorded
    it: `reason` orphan)."""

    name: ClassVar[str] = "credential_revoked"
    grant_id: str
    broker: str
    handle: str
    task_id: str | None = None
    reason: str | None = None
    attempts: int | None = None
    """Broker calls it took (retries after the downstream system was unreachable)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowFlagged(Event):
    """A flow rule fired on an intent, or the intent left the task's declared plan
    (model.TaskFlow): the labels the task held and the rules that escalated or denied it.
    The outcome (grant_issued, grant_pending, grant_denied) follows in its own record."""

    name: ClassVar[str] = "flow_flagged"
    task_id: str
    subject: str
    intent: dict[str, Any]
    task_flow_labels: list[str]
    intent_flow_labels: list[str]
    rules: list[str]
    plan_deviation: bool
    decision_id: str | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event as the audit log holds it: with its sequence number (`seq`)."""

    seq: int
    event: Event


KINDS: Mapping[str, type[Event]] = {
    cls.name: cls
    for cls in (
        TaskBegun,
        TaskCompleted,
        GrantIssued,
        GrantRevoked,
        GrantExpired,
        GrantDenied,
        GrantPending,
        ApprovalDecided,
        ApprovalExpired,
        PolicyFailed,
        RequestRejected,
        KeyRotated,
        RevocationOrdered,
        AuthzenDecided,
        EgressUsage,
        CredentialIssued,
        CredentialRevoked,
        SsfStreamChanged,
        FlowFlagged,
    )
}

_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def _fields(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def from_record(record: Mapping[str, Any]) -> Event:
    """The event an audit record holds (chain fields and unknown fields are ignored)."""
    cls = KINDS.get(record.get("event", ""))
    if cls is None:
        return Unrecognised(time=record.get("time", ""), kind=str(record.get("event", "")))
    return cls(**{k: record[k] for k in _fields(cls) if k in record})
