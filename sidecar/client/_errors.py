"""The SDK's one error tree, and the single place gRPC errors become SDK errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import Reason


class SidecarClientError(Exception):
    """Root of the client's errors."""


class SidecarRpcError(SidecarClientError):
    """The sidecar answered with an error status; `reason` is its fixed reason code."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class SidecarUnavailable(SidecarRpcError):
    """The sidecar, its policy engine or its store is unreachable, or the call's deadline
    passed (retry later)."""


class InvalidRequest(SidecarRpcError):
    """The request was malformed or out of limits (do not retry as is).

    Raised by the sidecar (INVALID_ARGUMENT / RESOURCE_EXHAUSTED), or by the SDK itself,
    before sending, for input that cannot be put on the wire (see `local`)."""

    @classmethod
    def local(cls, message: str, reason: Reason) -> InvalidRequest:
        """What the SDK raises for input it refuses to send: the status and reason code the
        sidecar would have answered with, and `metadata["source"] = "sdk"`."""
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message, reason.value, {"source": "sdk"})


class IdentityRejected(SidecarRpcError):
    """The caller's identity token was missing or invalid."""


class TaskEnded(SidecarRpcError):
    """The task is no longer active: completed, past its deadline, declared crashed (missed
    heartbeats) or ended by an operator. Its grants are revoked; open a new task."""


class AccessDenied(SidecarClientError):
    """The policy denied the intent; `reasons` say why."""

    def __init__(self, reasons: Sequence[str], decision_id: str = "") -> None:
        super().__init__("access denied: " + ("; ".join(reasons) or "no reason given"))
        self.reasons = list(reasons)
        self.decision_id = decision_id


class ApprovalPending(SidecarClientError):
    """The intent needs a human approval that has not been given (yet). Wait for it with
    `task.await_approval(approval_id, timeout)` or `grant(..., wait_for_approval=seconds)`."""

    def __init__(self, approval_id: str, reasons: Sequence[str]) -> None:
        super().__init__(f"approval {approval_id} pending: " + "; ".join(reasons))
        self.approval_id = approval_id
        self.reasons = list(reasons)


class NoActiveTask(SidecarClientError):
    """A `@requires` tool was called outside `with client.task(...)` (or an async tool's
    task is not an asyncio one, or the reverse), or a task handle was used before it was
    opened."""


class TaskCompleted(TaskEnded, NoActiveTask):
    """This handle completed the task already (reason `task_inactive`, as the sidecar would
    answer). A `TaskEnded`; also a `NoActiveTask`, which is what earlier SDK versions raised
    here, so existing `except NoActiveTask` handlers keep working."""


def translate_error(err: grpc.RpcError) -> SidecarRpcError:
    """Turn a grpc.RpcError into the typed error, reading the ErrorInfo detail."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    try:
        status = rpc_status.from_call(err)
    except (ValueError, AttributeError, TypeError):
        status = None
    return _typed(code, message or "", status)


def error_from_status(status: status_pb2.Status) -> SidecarRpcError:
    """The typed error for a google.rpc.Status carried inside a message (GrantStream's
    per-intent errors): the same as for the unary call that would have failed so."""
    try:
        code = grpc.StatusCode[code_pb2.Code.Name(status.code)]
    except (KeyError, ValueError):
        code = grpc.StatusCode.UNKNOWN
    return _typed(code, status.message, status)


def _typed(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> SidecarRpcError:
    reason, metadata = "", {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        cls: type[SidecarRpcError] = SidecarUnavailable
    elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        cls = InvalidRequest
    elif code is grpc.StatusCode.UNAUTHENTICATED:
        cls = IdentityRejected
    elif code is grpc.StatusCode.FAILED_PRECONDITION and reason == Reason.TASK_INACTIVE:
        cls = TaskEnded
    else:
        cls = SidecarRpcError
    return cls(code, message, reason or code.name.lower(), metadata)
