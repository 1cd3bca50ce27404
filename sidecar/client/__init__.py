"""Python SDK for agents: the sidecar's gRPC socket, one `with` block away.

    from sidecar.client import AccessClient

    with AccessClient() as jit:                      # $JIT_SIDECAR_SOCKET or var/sidecar.sock
        with jit.task(goal="refund order 42", labels={"purpose": "refunds"}) as task:
            grant = task.grant("payments.refund", "payments://orders/42",
                               justification="ticket 991")
            call_api(grant.token)
    # leaving the block completes the task (SUCCEEDED); an exception completes it as ERRORED
    # (and propagates); both revoke every grant of the task.

While a task is open, heartbeats go out in the background at the interval the sidecar asked
for; if they stop (the process died), the sidecar revokes the task's grants. `AsyncAccessClient`
is the same API for asyncio (`async with`, `await task.grant(...)`). `requires(...)` turns a
function into a "tool" that asks for its grant before it runs (docs/agents.md).

Errors are typed, all under `SidecarClientError`: `AccessDenied` (a policy deny, with
reasons), `ApprovalPending`, `NoActiveTask`, and `SidecarRpcError` subclasses carrying the
gRPC status and the sidecar's reason code (`SidecarUnavailable`, `InvalidRequest`,
`IdentityRejected`, `TaskEnded`). Input the SDK cannot send raises `InvalidRequest` with the
reason code the sidecar would use, before anything is sent. Every RPC has a deadline. Tokens
are never logged; `Grant`'s repr leaves the token out.

The lower-level methods (`begin_task`, `request_grant`, ...) return the protobuf messages and
are what the CLI uses.

One module per concept: `_errors` (the error tree), `_models` (`Grant`), `_identity`
(identity token sources), `_requests` (checked request building), `_base` (what the sync
and async flavours share, without I/O), `_sync` and `_async` (the I/O), `_tools`
(`@requires`), `_admin` (the operator client).
"""

from __future__ import annotations

from ._admin import AdminClient
from ._async import AsyncAccessClient, AsyncTaskHandle
from ._base import (
    DEFAULT_ADMIN_SOCKET,
    DEFAULT_GRANT_TTL,
    DEFAULT_SOCKET,
    DEFAULT_TIMEOUT,
    socket_target,
)
from ._errors import (
    AccessDenied,
    ApprovalPending,
    IdentityRejected,
    InvalidRequest,
    NoActiveTask,
    SidecarClientError,
    SidecarRpcError,
    SidecarUnavailable,
    TaskCompleted,
    TaskEnded,
    translate_error,
)
from ._identity import IdentityToken, IdentityTokenSource, TokenFile, WorkloadApiToken
from ._models import Credential, Grant, Lease, grant_from_response
from ._requests import dict_to_struct
from ._sync import AccessClient, TaskHandle
from ._tools import current_task, requires

__all__ = [
    "DEFAULT_ADMIN_SOCKET",
    "DEFAULT_GRANT_TTL",
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "AccessClient",
    "AccessDenied",
    "AdminClient",
    "ApprovalPending",
    "AsyncAccessClient",
    "AsyncTaskHandle",
    "Credential",
    "Grant",
    "IdentityRejected",
    "IdentityToken",
    "IdentityTokenSource",
    "InvalidRequest",
    "Lease",
    "NoActiveTask",
    "SidecarClientError",
    "SidecarRpcError",
    "SidecarUnavailable",
    "TaskCompleted",
    "TaskEnded",
    "TaskHandle",
    "TokenFile",
    "WorkloadApiToken",
    "current_task",
    "dict_to_struct",
    "grant_from_response",
    "requires",
    "socket_target",
    "translate_error",
]
