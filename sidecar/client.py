"""Python client for the sidecar's gRPC socket (used by agents and by the CLI).

    client = AccessClient()                       # $JIT_SIDECAR_SOCKET or var/sidecar.sock
    task = client.begin_task(goal="refund order 42", labels={"purpose": "refunds"})
    grant = client.request_grant(task.task_id, "payments.refund", "payments://orders/42",
                                 justification="ticket 991", ttl_seconds=60)
    client.complete_task(task.task_id)

Errors are typed: `AccessDenied` (a policy deny, with reasons), `ApprovalPending`, and
`SidecarRpcError` subclasses carrying the gRPC status and the sidecar's reason code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._proto.jit.v1 import access_pb2 as pb
from ._proto.jit.v1 import access_pb2_grpc as pb_grpc
from ._proto.jit.v1 import admin_pb2 as admin_pb
from ._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc

DEFAULT_SOCKET = "var/sidecar.sock"
DEFAULT_ADMIN_SOCKET = "var/admin.sock"
DEFAULT_TIMEOUT = 10.0
_OUTCOMES = {
    "succeeded": pb.OUTCOME_SUCCEEDED,
    "failed": pb.OUTCOME_FAILED,
    "errored": pb.OUTCOME_ERRORED,
}


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
    """The sidecar, its policy engine or its store is unreachable (retry later)."""


class InvalidRequest(SidecarRpcError):
    """The request was malformed or out of limits (do not retry as is)."""


class IdentityRejected(SidecarRpcError):
    """The caller's identity token was missing or invalid."""


class AccessDenied(SidecarClientError):
    """The policy denied the intent; `reasons` say why."""

    def __init__(self, reasons: Sequence[str], decision_id: str = "") -> None:
        super().__init__("access denied: " + ("; ".join(reasons) or "no reason given"))
        self.reasons = list(reasons)
        self.decision_id = decision_id


class ApprovalPending(SidecarClientError):
    """The intent needs a human approval; wait with `await_approval(approval_id)`."""

    def __init__(self, approval_id: str, reasons: Sequence[str]) -> None:
        super().__init__(f"approval {approval_id} pending: " + "; ".join(reasons))
        self.approval_id = approval_id
        self.reasons = list(reasons)


def translate_error(err: grpc.RpcError) -> SidecarRpcError:
    """Turn a grpc.RpcError into the typed error, reading the ErrorInfo detail."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    reason, metadata = "", {}
    try:
        status = rpc_status.from_call(err)
    except (ValueError, AttributeError):
        status = None
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
    else:
        cls = SidecarRpcError
    return cls(code, message or "", reason or code.name.lower(), metadata)


class IdentityTokenSource(Protocol):
    """Where an agent's identity token comes from; asked before every call."""

    def token(self) -> str:
        """The current token (JWT-SVID or OIDC ID token)."""
        ...


class TokenFile:
    """A token kept fresh in a file by someone else: a Kubernetes projected service-account
    token, or a JWT-SVID written by spiffe-helper. Re-read whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        st = self.path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._token = self.path.read_text().strip()
            self._stamp = stamp
        return self._token


class WorkloadApiToken:
    """JWT-SVIDs for `audience` from the SPIFFE Workload API (a SPIRE agent), fetched again
    once half of the current one's lifetime has passed.

    `socket` defaults to the SPIFFE_ENDPOINT_SOCKET environment variable.
    """

    def __init__(
        self, audience: str = "jit-sidecar", socket: str | None = None, *, timeout: float = 5.0
    ) -> None:
        from spiffe import WorkloadApiClient

        self._client = WorkloadApiClient(socket, default_timeout=timeout)
        self._audience = audience
        self._token = ""
        self._refresh_at = 0.0

    def token(self) -> str:
        now = time.time()
        if not self._token or now >= self._refresh_at:
            svid = self._client.fetch_jwt_svid(audience={self._audience})
            self._token = svid.token
            self._refresh_at = now + max(1.0, (svid.expiry - now) / 2)
        return self._token

    def close(self) -> None:
        self._client.close()


class _StaticToken:
    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token


def socket_target(path: str | os.PathLike[str]) -> str:
    return f"unix:{Path(path).resolve()}"


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    json_format.ParseDict(json.loads(json.dumps(value)), out)
    return out


class AccessClient:
    """Synchronous client of `jit.v1.AccessService` over the sidecar's Unix socket."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        identity_token: str | IdentityTokenSource | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """`identity_token`: a token, or a source asked before every call (`TokenFile`,
        `WorkloadApiToken`); default: the file named by $JIT_SIDECAR_IDENTITY_TOKEN_FILE,
        else none (dev mode)."""
        path = socket or os.environ.get("JIT_SIDECAR_SOCKET") or DEFAULT_SOCKET
        self._channel = grpc.insecure_channel(socket_target(path))
        self._stub = pb_grpc.AccessServiceStub(self._channel)
        self._timeout = timeout
        if identity_token is None and os.environ.get("JIT_SIDECAR_IDENTITY_TOKEN_FILE"):
            identity_token = TokenFile(os.environ["JIT_SIDECAR_IDENTITY_TOKEN_FILE"])
        self._token_source: IdentityTokenSource | None = (
            _StaticToken(identity_token) if isinstance(identity_token, str) else identity_token
        )
        if isinstance(identity_token, str) and not identity_token:
            self._token_source = None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token_source is None:
            return ()
        return (("authorization", f"Bearer {self._token_source.token()}"),)

    def __enter__(self) -> AccessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self._timeout, metadata=self._metadata()
            )
        except grpc.RpcError as err:
            raise translate_error(err) from None

    def begin_task(
        self,
        goal: str = "",
        *,
        task_id: str = "",
        labels: Mapping[str, str] | None = None,
        max_duration: int = 0,
        pop_jwk: Mapping[str, Any] | None = None,
    ) -> pb.Task:
        request = pb.BeginTaskRequest(
            task_id=task_id,
            goal=goal,
            max_duration_seconds=max_duration,
            labels=dict(labels or {}),
        )
        if pop_jwk:
            request.pop_jwk.CopyFrom(dict_to_struct(pop_jwk))
        return cast(pb.Task, self._call("BeginTask", request).task)

    def request_grant_raw(
        self,
        task_id: str,
        action: str,
        resource: str,
        *,
        justification: str = "",
        ttl_seconds: int = 60,
        context: Mapping[str, Any] | None = None,
    ) -> pb.RequestGrantResponse:
        """The full answer, whatever the decision."""
        intent = pb.Intent(action=action, resource=resource, justification=justification)
        if context:
            intent.context.CopyFrom(dict_to_struct(context))
        request = pb.RequestGrantRequest(task_id=task_id, intent=intent, ttl_seconds=ttl_seconds)
        return cast(pb.RequestGrantResponse, self._call("RequestGrant", request))

    def request_grant(self, task_id: str, action: str, resource: str, **kwargs: Any) -> pb.Grant:
        """The grant, or AccessDenied / ApprovalPending."""
        response = self.request_grant_raw(task_id, action, resource, **kwargs)
        if response.decision == pb.DECISION_GRANTED:
            return response.grant
        if response.decision == pb.DECISION_PENDING_APPROVAL:
            raise ApprovalPending(response.approval_id, response.reasons)
        raise AccessDenied(response.reasons, response.decision_id)

    def heartbeat(self, task_id: str) -> pb.HeartbeatResponse:
        return cast(
            pb.HeartbeatResponse, self._call("Heartbeat", pb.HeartbeatRequest(task_id=task_id))
        )

    def complete_task(
        self, task_id: str, outcome: str = "succeeded", detail: str = ""
    ) -> pb.CompleteTaskResponse:
        request = pb.CompleteTaskRequest(task_id=task_id, outcome=_OUTCOMES[outcome], detail=detail)
        return cast(pb.CompleteTaskResponse, self._call("CompleteTask", request))

    def revoke_grant(self, grant_id: str, reason: str = "") -> pb.RevokeGrantResponse:
        request = pb.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return cast(pb.RevokeGrantResponse, self._call("RevokeGrant", request))

    def introspect(self, token: str) -> pb.IntrospectTokenResponse:
        request = pb.IntrospectTokenRequest(token=token)
        return cast(pb.IntrospectTokenResponse, self._call("IntrospectToken", request))

    def list_grants(self, task_id: str, include_inactive: bool = False) -> list[pb.Grant]:
        response = self._call(
            "ListGrants",
            pb.ListGrantsRequest(task_id=task_id, include_inactive=include_inactive),
        )
        return list(response.grants)


class AdminClient:
    """Operator client of `jit.v1.AdminService` over the admin socket."""

    def __init__(
        self, socket: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        path = socket or os.environ.get("JIT_SIDECAR_ADMIN_SOCKET") or DEFAULT_ADMIN_SOCKET
        self._channel = grpc.insecure_channel(socket_target(path))
        self._stub = admin_pb_grpc.AdminServiceStub(self._channel)
        self._timeout = timeout

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise translate_error(err) from None

    def revoke(
        self,
        *,
        grant_id: str = "",
        task_id: str = "",
        subject: str = "",
        everything: bool = False,
        reason: str = "",
    ) -> int:
        if grant_id:
            request = admin_pb.RevokeRequest(grant_id=grant_id, reason=reason)
        elif task_id:
            request = admin_pb.RevokeRequest(task_id=task_id, reason=reason)
        elif subject:
            request = admin_pb.RevokeRequest(subject=subject, reason=reason)
        elif everything:
            request = admin_pb.RevokeRequest(all=True, reason=reason)
        else:
            raise ValueError("choose grant_id, task_id, subject or everything")
        return int(self._call("Revoke", request).revoked_grants)

    def list_approvals(self, include_decided: bool = False) -> list[admin_pb.Approval]:
        request = admin_pb.ListApprovalsRequest(include_decided=include_decided)
        return list(self._call("ListApprovals", request).approvals)

    def decide_approval(
        self, approval_id: str, *, approve: bool, reason: str = "", approver: str = ""
    ) -> admin_pb.Approval:
        request = admin_pb.DecideApprovalRequest(
            approval_id=approval_id, approve=approve, reason=reason, approver=approver
        )
        return cast(admin_pb.Approval, self._call("DecideApproval", request).approval)

    def rotate_signing_key(
        self, reload_from_file: bool = False
    ) -> admin_pb.RotateSigningKeyResponse:
        request = admin_pb.RotateSigningKeyRequest(reload_from_file=reload_from_file)
        return cast(admin_pb.RotateSigningKeyResponse, self._call("RotateSigningKey", request))
