"""The console's view of its sidecars: one `jit.v1.AdminService` channel per admin socket.

Every call has a deadline; a refusal comes back as `BackendError` with the sidecar's reason
code (its `google.rpc.ErrorInfo`), which the pages show as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from .._proto.jit.v1 import admin_pb2 as admin_pb
from .._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from ..service import struct_to_dict

TIMEOUT = 10.0

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class BackendError(Exception):
    """A sidecar refused or could not be reached."""

    def __init__(self, sidecar: str, reason: str, message: str, http_status: int) -> None:
        super().__init__(message)
        self.sidecar = sidecar
        self.reason = reason
        self.message = message
        self.http_status = http_status


def _translate(sidecar: str, err: grpc.aio.AioRpcError) -> BackendError:
    code = err.code()
    reason = code.name.lower() if code is not None else "unknown"
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.reason:
                    reason = info.reason
    if code is grpc.StatusCode.UNAVAILABLE and reason == "unavailable":
        reason = "sidecar_unreachable"
    http_status = _HTTP_STATUS.get(code, 502) if code is not None else 502
    return BackendError(sidecar, reason, err.details() or reason, http_status)


class SidecarLink:
    """One sidecar's admin API."""

    def __init__(self, name: str, admin_socket: Path) -> None:
        self.name = name
        self._channel = grpc.aio.insecure_channel(f"unix:{admin_socket.resolve()}")
        self._stub = admin_pb_grpc.AdminServiceStub(self._channel)

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise _translate(self.name, err) from None

    async def approvals(self) -> list[admin_pb.Approval]:
        response = await self._call("ListApprovals", admin_pb.ListApprovalsRequest())
        return list(response.approvals)

    async def decide(
        self, approval_id: str, *, approve: bool, approver: str, reason: str
    ) -> admin_pb.Approval:
        request = admin_pb.DecideApprovalRequest(
            approval_id=approval_id, approve=approve, approver=approver, reason=reason
        )
        response = await self._call("DecideApproval", request)
        return cast(admin_pb.Approval, response.approval)

    async def tasks(self) -> list[admin_pb.TaskView]:
        response = await self._call("ListTasks", admin_pb.ListTasksRequest())
        return list(response.tasks)

    async def revoke(self, what: str, target: str, reason: str) -> int:
        if what == "grant":
            request = admin_pb.RevokeRequest(grant_id=target, reason=reason)
        elif what == "task":
            request = admin_pb.RevokeRequest(task_id=target, reason=reason)
        else:
            request = admin_pb.RevokeRequest(subject=target, reason=reason)
        response = await self._call("Revoke", request)
        return int(response.revoked_grants)

    async def audit(
        self,
        *,
        task_id: str = "",
        subject: str = "",
        grant_id: str = "",
        events: Sequence[str] = (),
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        verify: bool = False,
    ) -> tuple[list[dict[str, Any]], bool, admin_pb.AuditChainStatus | None]:
        request = admin_pb.QueryAuditRequest(
            task_id=task_id,
            subject=subject,
            grant_id=grant_id,
            events=list(events),
            limit=limit,
            verify=verify,
        )
        if since is not None:
            request.since.FromNanoseconds(int(since * 1e9))
        if until is not None:
            request.until.FromNanoseconds(int(until * 1e9))
        response = await self._call("QueryAudit", request)
        records = [struct_to_dict(r) for r in response.records]
        return records, response.truncated, response.chain if verify else None

    async def close(self) -> None:
        await self._channel.close()


def open_links(sidecars: Mapping[str, Path]) -> dict[str, SidecarLink]:
    return {name: SidecarLink(name, path) for name, path in sidecars.items()}
