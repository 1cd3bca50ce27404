"""One error tree for the whole sidecar.

Every error carries a fixed snake_case reason code (docs/api.md, "Errors"): the same
code goes into the gRPC `google.rpc.ErrorInfo` detail, the log line and metric labels. The gRPC
layer (`sidecar.service`) is the only place that turns these classes into status codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Reason(StrEnum):
    """The fixed set of reason codes. Add new ones; never rename one."""

    INVALID_ARGUMENT = "invalid_argument"
    INVALID_INTENT = "invalid_intent"
    INVALID_RESOURCE = "invalid_resource"
    INVALID_TTL = "invalid_ttl"
    INVALID_TASK = "invalid_task"
    IDENTITY_INVALID = "identity_invalid"
    TASK_NOT_OWNED = "task_not_owned"
    TASK_NOT_FOUND = "task_not_found"
    TASK_EXISTS = "task_exists"
    TASK_INACTIVE = "task_inactive"
    GRANT_NOT_FOUND = "grant_not_found"
    APPROVAL_NOT_FOUND = "approval_not_found"
    APPROVAL_INACTIVE = "approval_inactive"
    POLICY_UNAVAILABLE = "policy_unavailable"
    POLICY_RESULT_INVALID = "policy_result_invalid"
    STORE_UNAVAILABLE = "store_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    SIGNING_UNAVAILABLE = "signing_unavailable"
    BROKER_UNAVAILABLE = "broker_unavailable"
    TOO_MANY_GRANTS = "too_many_grants"
    TOO_MANY_TASKS = "too_many_tasks"
    TOO_MANY_APPROVALS = "too_many_approvals"
    FOUR_EYES = "four_eyes"
    TOO_MANY_REQUESTS = "too_many_requests"
    MESSAGE_TOO_LARGE = "message_too_large"
    SHUTTING_DOWN = "shutting_down"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    INVALID_POP_PROOF = "invalid_pop_proof"
    PRINCIPAL_INVALID = "principal_invalid"
    MAY_ACT = "may_act"


class SidecarError(Exception):
    """Root of every error the sidecar raises on purpose.

    `message` is safe to show to the caller: it never contains a token or key material.
    """

    default_reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        reason: Reason | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(SidecarError):
    default_reason = Reason.INVALID_ARGUMENT


class Unauthenticated(SidecarError):
    default_reason = Reason.IDENTITY_INVALID


class PermissionDenied(SidecarError):
    default_reason = Reason.TASK_NOT_OWNED


class NotFound(SidecarError):
    default_reason = Reason.TASK_NOT_FOUND


class AlreadyExists(SidecarError):
    default_reason = Reason.TASK_EXISTS


class FailedPrecondition(SidecarError):
    default_reason = Reason.TASK_INACTIVE


class ResourceExhausted(SidecarError):
    default_reason = Reason.TOO_MANY_REQUESTS


class Unavailable(SidecarError):
    default_reason = Reason.STORE_UNAVAILABLE


class Internal(SidecarError):
    default_reason = Reason.INTERNAL


class Unimplemented(SidecarError):
    default_reason = Reason.UNIMPLEMENTED


class PolicyError(SidecarError):
    """OPA could not give a usable decision. `cause` is a bounded label for metrics."""

    def __init__(self, message: str, reason: Reason, cause: str) -> None:
        super().__init__(message, reason, metadata={"cause": cause})
        self.cause = cause


class PolicyUnavailable(PolicyError, Unavailable):
    """OPA unreachable, timed out or answering 5xx."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message, Reason.POLICY_UNAVAILABLE, cause)


class PolicyResultInvalid(PolicyError, Internal):
    """OPA answered something that is not a valid decision."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message, Reason.POLICY_RESULT_INVALID, cause)


class ConfigError(SidecarError):
    """The configuration cannot be used; raised at start-up only."""

    default_reason = Reason.INVALID_ARGUMENT
