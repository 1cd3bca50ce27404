"""The operator client: `jit.v1.AdminService` over the admin socket."""

from __future__ import annotations

import os
from typing import Any, cast

import grpc

from .._proto.jit.v1 import admin_pb2 as admin_pb
from .._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from ..errors import Reason
from ._base import DEFAULT_ADMIN_SOCKET, DEFAULT_TIMEOUT, socket_target
from ._errors import InvalidRequest, translate_error


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
        principal: str = "",
    ) -> int:
        if grant_id:
            request = admin_pb.RevokeRequest(grant_id=grant_id, reason=reason)
        elif task_id:
            request = admin_pb.RevokeRequest(task_id=task_id, reason=reason)
        elif subject:
            request = admin_pb.RevokeRequest(subject=subject, reason=reason)
        elif principal:
            request = admin_pb.RevokeRequest(principal=principal, reason=reason)
        elif everything:
            request = admin_pb.RevokeRequest(all=True, reason=reason)
        else:
            raise InvalidRequest.local(
                "choose grant_id, task_id, subject, principal or everything",
                Reason.INVALID_ARGUMENT,
            )
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
