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

Errors are typed: `AccessDenied` (a policy deny, with reasons), `ApprovalPending`, `TaskEnded`,
`NoActiveTask`, and `SidecarRpcError` subclasses carrying the gRPC status and the sidecar's
reason code (`SidecarUnavailable`, `InvalidRequest`, `IdentityRejected`). Every RPC has a
deadline. Tokens are never logged; `Grant`'s repr leaves the token out.

The lower-level methods (`begin_task`, `request_grant`, ...) return the protobuf messages and
are what the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._proto.jit.v1 import access_pb2 as pb
from ._proto.jit.v1 import access_pb2_grpc as pb_grpc
from ._proto.jit.v1 import admin_pb2 as admin_pb
from ._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from .dpop import binding_proof

log = logging.getLogger("jit_sidecar.client")

DEFAULT_SOCKET = "var/sidecar.sock"
DEFAULT_ADMIN_SOCKET = "var/admin.sock"
DEFAULT_TIMEOUT = 10.0
DEFAULT_GRANT_TTL = 60
# Used only when a sidecar does not say how often it wants heartbeats.
_FALLBACK_HEARTBEAT_INTERVAL = 5.0
# A server that answers PENDING_APPROVAL at once (instead of holding the call) is polled no
# faster than this.
_MIN_APPROVAL_POLL = 0.2
_OUTCOMES = {
    "succeeded": pb.OUTCOME_SUCCEEDED,
    "failed": pb.OUTCOME_FAILED,
    "errored": pb.OUTCOME_ERRORED,
}
_TIER_NAMES = {pb.TIER_STANDING: "standing", pb.TIER_JIT: "jit"}

IdentityToken: TypeAlias = "str | Callable[[], str] | IdentityTokenSource | None"
"""A fixed identity token, a provider called before every RPC (a callable, or an object with
`.token()` such as `TokenFile` or `WorkloadApiToken`, so rotated JWT-SVIDs and refreshed OIDC
token files are picked up), or None: then the file named by $JIT_SIDECAR_IDENTITY_TOKEN_FILE
if set, else no token (dev mode)."""


# ====================================================================== errors
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
    """The request was malformed or out of limits (do not retry as is)."""


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
    task is not an asyncio one, or the reverse)."""


def translate_error(err: grpc.RpcError) -> SidecarRpcError:
    """Turn a grpc.RpcError into the typed error, reading the ErrorInfo detail."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    reason, metadata = "", {}
    try:
        status = rpc_status.from_call(err)
    except (ValueError, AttributeError, TypeError):
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
    elif code is grpc.StatusCode.FAILED_PRECONDITION and reason == "task_inactive":
        cls = TaskEnded
    else:
        cls = SidecarRpcError
    return cls(code, message or "", reason or code.name.lower(), metadata)


# ====================================================================== identity tokens
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


# ====================================================================== value objects
def _datetime(ts: Any) -> datetime:
    return cast(datetime, ts.ToDatetime(tzinfo=UTC))


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
    audience: str
    scope: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    task_id: str
    raw: pb.Grant = field(repr=False, compare=False)
    """The protobuf message as the sidecar sent it."""

    @classmethod
    def from_proto(cls, grant: pb.Grant) -> Grant:
        """The SDK's view of a `jit.v1.Grant`."""
        return cls(
            grant_id=grant.grant_id,
            token=grant.token,
            tier=_TIER_NAMES.get(grant.tier, "unspecified"),
            action=grant.intent.action,
            resource=grant.intent.resource,
            audience=grant.audience,
            scope=tuple(grant.scope),
            issued_at=_datetime(grant.issued_at),
            expires_at=_datetime(grant.expires_at),
            task_id=grant.task_id,
            raw=grant,
        )

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
        return Grant.from_proto(response.grant)
    if response.decision == pb.DECISION_PENDING_APPROVAL:
        raise ApprovalPending(response.approval_id, response.reasons)
    raise AccessDenied(response.reasons, response.decision_id)


def socket_target(path: str | os.PathLike[str]) -> str:
    return f"unix:{Path(path).resolve()}"


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    json_format.ParseDict(json.loads(json.dumps(value)), out)
    return out


def _socket_path(socket: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    return socket or os.environ.get("JIT_SIDECAR_SOCKET") or DEFAULT_SOCKET


def _begin_request(
    goal: str,
    task_id: str,
    labels: Mapping[str, str] | None,
    max_duration: int,
    pop_jwk: Mapping[str, Any] | None,
) -> pb.BeginTaskRequest:
    request = pb.BeginTaskRequest(
        task_id=task_id, goal=goal, max_duration_seconds=max_duration, labels=dict(labels or {})
    )
    if pop_jwk and "d" in pop_jwk:
        # The task key itself: prove possession (RFC 9449 §4.2); its private half stays here.
        request.pop_proof = binding_proof(pop_jwk)
    elif pop_jwk:  # a bare public key no longer binds: the sidecar answers invalid_pop_proof
        request.pop_jwk.CopyFrom(dict_to_struct(pop_jwk))
    return request


def _grant_request(
    task_id: str,
    action: str,
    resource: str,
    justification: str,
    ttl_seconds: int,
    context: Mapping[str, Any] | None,
) -> pb.RequestGrantRequest:
    intent = pb.Intent(action=action, resource=resource, justification=justification)
    if context:
        intent.context.CopyFrom(dict_to_struct(context))
    return pb.RequestGrantRequest(task_id=task_id, intent=intent, ttl_seconds=ttl_seconds)


def _complete_request(task_id: str, outcome: str, detail: str) -> pb.CompleteTaskRequest:
    if outcome not in _OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(_OUTCOMES)}")
    return pb.CompleteTaskRequest(task_id=task_id, outcome=_OUTCOMES[outcome], detail=detail)


def _pending(approval_id: str, reasons: Sequence[str]) -> pb.RequestGrantResponse:
    return pb.RequestGrantResponse(
        decision=pb.DECISION_PENDING_APPROVAL, approval_id=approval_id, reasons=list(reasons)
    )


def _grant_id(grant: Grant | str) -> str:
    return grant if isinstance(grant, str) else grant.grant_id


def _heartbeat_interval(task: pb.Task) -> float:
    return float(task.heartbeat_interval_seconds) or _FALLBACK_HEARTBEAT_INTERVAL


def _task_gone(err: SidecarRpcError) -> bool:
    """Does this heartbeat error mean the task is over (rather than a passing fault)?"""
    return isinstance(err, TaskEnded) or err.reason in ("task_not_found", "task_not_owned")


def _error_detail(exc: BaseException | None) -> str:
    # Only the exception's type: its message may carry data (even secrets) that does not
    # belong in the audit log.
    return "" if exc is None else f"raised {type(exc).__name__}"


class _Credentials:
    """Per-call `authorization` metadata from a fixed token or a provider."""

    def __init__(self, identity_token: IdentityToken) -> None:
        if identity_token is None and os.environ.get("JIT_SIDECAR_IDENTITY_TOKEN_FILE"):
            identity_token = TokenFile(os.environ["JIT_SIDECAR_IDENTITY_TOKEN_FILE"])
        self._source = identity_token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        source = self._source
        if source is None or isinstance(source, str):
            token = source
        elif hasattr(source, "token"):
            token = source.token()
        else:
            token = source()
        return (("authorization", f"Bearer {token}"),) if token else ()


# ====================================================================== the current task
_current_task: contextvars.ContextVar[TaskHandle | AsyncTaskHandle | None] = contextvars.ContextVar(
    "jit_current_task", default=None
)


def current_task() -> TaskHandle | AsyncTaskHandle | None:
    """The innermost task opened with `with client.task(...)` in this context, if any."""
    return _current_task.get()


# ====================================================================== sync client
class AccessClient:
    """Synchronous client of `jit.v1.AccessService` over the sidecar's Unix socket.

    `socket` defaults to $JIT_SIDECAR_SOCKET, then var/sidecar.sock. `identity_token` is a
    token string or a zero-argument callable returning one, evaluated before every call.
    `timeout` is the deadline of each RPC in seconds (each method also takes `timeout=`).
    Thread-safe: one client may serve many threads.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        identity_token: IdentityToken = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._channel = grpc.insecure_channel(socket_target(_socket_path(socket)))
        self._stub = pb_grpc.AccessServiceStub(self._channel)
        self._timeout = timeout
        self._credentials = _Credentials(identity_token)

    def __enter__(self) -> AccessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
                request,
                timeout=timeout if timeout is not None else self._timeout,
                metadata=self._credentials.metadata(),
            )
        except grpc.RpcError as err:
            raise translate_error(err) from None

    # ------------------------------------------------------------------ high level
    def task(
        self,
        goal: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        max_duration: int = 0,
        ttl: int = DEFAULT_GRANT_TTL,
        task_id: str = "",
        pop_jwk: Mapping[str, Any] | None = None,
        heartbeats: bool = True,
    ) -> TaskHandle:
        """A task as a context manager: `with client.task(goal=...) as task:`.

        `max_duration` (seconds, 0 = the sidecar's default) bounds the task; `ttl` is the
        default lifetime asked for each grant. Leaving the block completes the task
        (SUCCEEDED, or ERRORED when an exception escapes) and so revokes its grants.
        """
        return TaskHandle(
            self,
            goal=goal,
            labels=labels,
            max_duration=max_duration,
            ttl=ttl,
            task_id=task_id,
            pop_jwk=pop_jwk,
            heartbeats=heartbeats,
        )

    # ------------------------------------------------------------------ one call per RPC
    def begin_task(
        self,
        goal: str = "",
        *,
        task_id: str = "",
        labels: Mapping[str, str] | None = None,
        max_duration: int = 0,
        pop_jwk: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.Task:
        request = _begin_request(goal, task_id, labels, max_duration, pop_jwk)
        return cast(pb.Task, self._call("BeginTask", request, timeout).task)

    def request_grant_raw(
        self,
        task_id: str,
        action: str,
        resource: str,
        *,
        justification: str = "",
        ttl_seconds: int = DEFAULT_GRANT_TTL,
        context: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.RequestGrantResponse:
        """The full answer, whatever the decision."""
        request = _grant_request(task_id, action, resource, justification, ttl_seconds, context)
        return cast(pb.RequestGrantResponse, self._call("RequestGrant", request, timeout))

    def request_grant(self, task_id: str, action: str, resource: str, **kwargs: Any) -> pb.Grant:
        """The grant (protobuf), or AccessDenied / ApprovalPending."""
        response = self.request_grant_raw(task_id, action, resource, **kwargs)
        return grant_from_response(response).raw

    def await_approval(
        self, approval_id: str, timeout: float, *, reasons: Sequence[str] = ()
    ) -> pb.RequestGrantResponse:
        """Wait up to `timeout` seconds for a human decision on `approval_id`.

        Returns the final answer (GRANTED or DENIED), or a PENDING_APPROVAL answer when the
        time ran out. Long waits are made of several AwaitApproval calls, each bounded by
        what is left of `timeout` (the sidecar may also end one early).
        """
        deadline = time.monotonic() + timeout
        request = pb.AwaitApprovalRequest(approval_id=approval_id)
        while (remaining := deadline - time.monotonic()) > 0:
            started = time.monotonic()
            try:
                response = self._stub.AwaitApproval(
                    request, timeout=remaining, metadata=self._credentials.metadata()
                )
            except grpc.RpcError as err:
                # DEADLINE_EXCEEDED is this call's deadline (ours or the sidecar's own cap),
                # not the decision's: ask again while time is left.
                if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise translate_error(err) from None
            else:
                result = response.result
                if result.decision != pb.DECISION_PENDING_APPROVAL:
                    return cast(pb.RequestGrantResponse, result)
                reasons = list(result.reasons) or list(reasons)
            pause = _MIN_APPROVAL_POLL - (time.monotonic() - started)
            if pause > 0:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        return _pending(approval_id, reasons)

    def heartbeat(self, task_id: str, *, timeout: float | None = None) -> pb.HeartbeatResponse:
        return cast(
            pb.HeartbeatResponse,
            self._call("Heartbeat", pb.HeartbeatRequest(task_id=task_id), timeout),
        )

    def complete_task(
        self,
        task_id: str,
        outcome: str = "succeeded",
        detail: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.CompleteTaskResponse:
        request = _complete_request(task_id, outcome, detail)
        return cast(pb.CompleteTaskResponse, self._call("CompleteTask", request, timeout))

    def revoke_grant(
        self, grant_id: str, reason: str = "", *, timeout: float | None = None
    ) -> pb.RevokeGrantResponse:
        request = pb.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return cast(pb.RevokeGrantResponse, self._call("RevokeGrant", request, timeout))

    def introspect(self, token: str, *, timeout: float | None = None) -> pb.IntrospectTokenResponse:
        request = pb.IntrospectTokenRequest(token=token)
        return cast(pb.IntrospectTokenResponse, self._call("IntrospectToken", request, timeout))

    def list_grants(
        self, task_id: str, include_inactive: bool = False, *, timeout: float | None = None
    ) -> list[pb.Grant]:
        response = self._call(
            "ListGrants",
            pb.ListGrantsRequest(task_id=task_id, include_inactive=include_inactive),
            timeout,
        )
        return list(response.grants)


class _TaskBase:
    """What the sync and async task handles share (state, not I/O)."""

    def __init__(
        self,
        *,
        goal: str,
        labels: Mapping[str, str] | None,
        max_duration: int,
        ttl: int,
        task_id: str,
        pop_jwk: Mapping[str, Any] | None,
        heartbeats: bool,
    ) -> None:
        self._goal = goal
        self._labels = dict(labels or {})
        self._max_duration = max_duration
        self.ttl = ttl
        """Default lifetime (seconds) asked for each grant."""
        self._requested_id = task_id
        self._pop_jwk = pop_jwk
        self._heartbeats = heartbeats
        self._raw: pb.Task | None = None
        self._ended: SidecarRpcError | None = None
        self._closed = False
        self._context_token: contextvars.Token[TaskHandle | AsyncTaskHandle | None] | None = None
        self.completion: pb.CompleteTaskResponse | None = None
        """The CompleteTask answer once the task has been completed by this handle."""

    @property
    def raw(self) -> pb.Task:
        """The task as the sidecar returned it from BeginTask."""
        if self._raw is None:
            raise NoActiveTask("the task has not been opened yet (use it in a with block)")
        return self._raw

    @property
    def task_id(self) -> str:
        return self.raw.task_id

    @property
    def subject(self) -> str:
        """The workload identity the sidecar saw."""
        return self.raw.subject

    @property
    def deadline(self) -> datetime:
        return _datetime(self.raw.deadline)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats, as the sidecar asked."""
        return _heartbeat_interval(self.raw)

    @property
    def ended(self) -> SidecarRpcError | None:
        """Why the sidecar considers the task over, once a heartbeat or call has said so."""
        return self._ended

    def _check_usable(self) -> None:
        if self._raw is None:
            raise NoActiveTask("the task has not been opened yet (use it in a with block)")
        ended = self._ended
        if ended is not None:
            raise TaskEnded(ended.code, ended.message, ended.reason, ended.metadata)
        if self._closed:
            raise NoActiveTask(f"task {self.task_id} has been completed")

    def _note(self, err: SidecarRpcError) -> None:
        if isinstance(err, TaskEnded):
            self._ended = err

    def _remember_ended(self, err: SidecarRpcError) -> None:
        log.warning(
            "task %s ended on the sidecar: %s",
            self.task_id,
            err.message,
            extra={"task_id": self.task_id},
        )
        self._ended = (
            err
            if isinstance(err, TaskEnded)
            else TaskEnded(err.code, err.message, err.reason, err.metadata)
        )


class TaskHandle(_TaskBase):
    """An open task (sync). Use as `with client.task(...) as task:`; or call `open()` and
    `complete()` yourself. Heartbeats run in a daemon thread while it is open."""

    def __init__(self, client: AccessClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> TaskHandle:
        """BeginTask, then start heartbeating."""
        if self._raw is not None:
            raise NoActiveTask("a task handle can be opened once")
        self._raw = self._client.begin_task(
            self._goal,
            task_id=self._requested_id,
            labels=self._labels,
            max_duration=self._max_duration,
            pop_jwk=self._pop_jwk,
        )
        if self._heartbeats:
            self._thread = threading.Thread(
                target=self._heartbeat_loop, name=f"jit-heartbeat-{self.task_id}", daemon=True
            )
            self._thread.start()
        return self

    def complete(
        self, outcome: str = "succeeded", detail: str = ""
    ) -> pb.CompleteTaskResponse | None:
        """Stop heartbeats and complete the task (revoking its grants).

        Returns None when the sidecar had already ended the task (its grants are revoked
        then too).
        """
        self._stop_heartbeats()
        if self._closed:
            return self.completion
        self._closed = True
        if self._ended is not None:
            return None  # the sidecar ended it already (and revoked its grants)
        try:
            self.completion = self._client.complete_task(self.task_id, outcome, detail)
        except TaskEnded as err:
            self._remember_ended(err)
            return None
        return self.completion

    def __enter__(self) -> TaskHandle:
        self.open()
        self._context_token = _current_task.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._context_token is not None:
            _current_task.reset(self._context_token)
            self._context_token = None
        if exc is None:
            self.complete("succeeded")
            return
        try:
            self.complete("errored", _error_detail(exc))
        except SidecarClientError as err:
            # The body's exception is what the caller needs to see; the grants expire anyway.
            log.error("could not complete task %s after an error: %s", self.task_id, err)

    # ------------------------------------------------------------------ grants
    def grant(
        self,
        action: str,
        resource: str,
        *,
        justification: str = "",
        ttl: int | None = None,
        context: Mapping[str, Any] | None = None,
        wait_for_approval: float | None = None,
        timeout: float | None = None,
    ) -> Grant:
        """Ask for a credential for one intent.

        Raises AccessDenied (with the policy's reasons), ApprovalPending (needs a human; with
        `wait_for_approval=seconds` waits that long first), TaskEnded (the sidecar ended the
        task, e.g. missed heartbeats) or a SidecarRpcError.
        """
        self._check_usable()
        try:
            response = self._client.request_grant_raw(
                self.task_id,
                action,
                resource,
                justification=justification,
                ttl_seconds=self.ttl if ttl is None else ttl,
                context=context,
                timeout=timeout,
            )
        except SidecarRpcError as err:
            self._note(err)
            raise
        if response.decision == pb.DECISION_PENDING_APPROVAL and wait_for_approval is not None:
            response = self._client.await_approval(
                response.approval_id, wait_for_approval, reasons=response.reasons
            )
        return grant_from_response(response)

    def await_approval(self, approval_id: str, timeout: float) -> Grant:
        """Wait for a pending approval (see `ApprovalPending.approval_id`)."""
        return grant_from_response(self._client.await_approval(approval_id, timeout))

    def revoke(self, grant: Grant | str, reason: str = "") -> bool:
        """Revoke one grant now; False if it had already ended."""
        return bool(self._client.revoke_grant(_grant_id(grant), reason).revoked)

    def grants(self, include_inactive: bool = False) -> list[Grant]:
        """The task's grants (without tokens)."""
        return [
            Grant.from_proto(g) for g in self._client.list_grants(self.task_id, include_inactive)
        ]

    # ------------------------------------------------------------------ heartbeats
    def _stop_heartbeats(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._client._timeout + 1)
        self._thread = None

    def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval
        next_at = time.monotonic() + interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            now = time.monotonic()
            # Fixed rate, but never a burst to catch up after a stall.
            next_at = max(next_at + interval, now + interval / 2)
            try:
                self._client.heartbeat(self.task_id, timeout=interval)
            except SidecarRpcError as err:
                if _task_gone(err):
                    self._remember_ended(err)
                    return
                log.warning("heartbeat for task %s failed: %s", self.task_id, err)
            except Exception as err:  # e.g. an identity provider failing; keep trying
                log.warning("heartbeat for task %s failed: %r", self.task_id, err)


# ====================================================================== asyncio client
class AsyncAccessClient:
    """The asyncio flavour of `AccessClient` (grpc.aio): same methods, awaited.

    Create it inside a running event loop; `async with AsyncAccessClient() as jit:`.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        identity_token: IdentityToken = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(socket_target(_socket_path(socket)))
        self._stub = pb_grpc.AccessServiceStub(self._channel)
        self._timeout = timeout
        self._credentials = _Credentials(identity_token)

    async def __aenter__(self) -> AsyncAccessClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await getattr(self._stub, method)(
                request,
                timeout=timeout if timeout is not None else self._timeout,
                metadata=self._credentials.metadata(),
            )
        except grpc.RpcError as err:
            raise translate_error(err) from None

    def task(
        self,
        goal: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        max_duration: int = 0,
        ttl: int = DEFAULT_GRANT_TTL,
        task_id: str = "",
        pop_jwk: Mapping[str, Any] | None = None,
        heartbeats: bool = True,
    ) -> AsyncTaskHandle:
        """`async with client.task(goal=...) as task:` (see AccessClient.task)."""
        return AsyncTaskHandle(
            self,
            goal=goal,
            labels=labels,
            max_duration=max_duration,
            ttl=ttl,
            task_id=task_id,
            pop_jwk=pop_jwk,
            heartbeats=heartbeats,
        )

    async def begin_task(
        self,
        goal: str = "",
        *,
        task_id: str = "",
        labels: Mapping[str, str] | None = None,
        max_duration: int = 0,
        pop_jwk: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.Task:
        request = _begin_request(goal, task_id, labels, max_duration, pop_jwk)
        return cast(pb.Task, (await self._call("BeginTask", request, timeout)).task)

    async def request_grant_raw(
        self,
        task_id: str,
        action: str,
        resource: str,
        *,
        justification: str = "",
        ttl_seconds: int = DEFAULT_GRANT_TTL,
        context: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> pb.RequestGrantResponse:
        request = _grant_request(task_id, action, resource, justification, ttl_seconds, context)
        return cast(pb.RequestGrantResponse, await self._call("RequestGrant", request, timeout))

    async def await_approval(
        self, approval_id: str, timeout: float, *, reasons: Sequence[str] = ()
    ) -> pb.RequestGrantResponse:
        """See `AccessClient.await_approval`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request = pb.AwaitApprovalRequest(approval_id=approval_id)
        while (remaining := deadline - loop.time()) > 0:
            started = loop.time()
            try:
                response = await self._stub.AwaitApproval(
                    request, timeout=remaining, metadata=self._credentials.metadata()
                )
            except grpc.RpcError as err:
                if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise translate_error(err) from None
            else:
                result = response.result
                if result.decision != pb.DECISION_PENDING_APPROVAL:
                    return cast(pb.RequestGrantResponse, result)
                reasons = list(result.reasons) or list(reasons)
            pause = _MIN_APPROVAL_POLL - (loop.time() - started)
            if pause > 0:
                await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        return _pending(approval_id, reasons)

    async def heartbeat(
        self, task_id: str, *, timeout: float | None = None
    ) -> pb.HeartbeatResponse:
        request = pb.HeartbeatRequest(task_id=task_id)
        return cast(pb.HeartbeatResponse, await self._call("Heartbeat", request, timeout))

    async def complete_task(
        self,
        task_id: str,
        outcome: str = "succeeded",
        detail: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.CompleteTaskResponse:
        request = _complete_request(task_id, outcome, detail)
        return cast(pb.CompleteTaskResponse, await self._call("CompleteTask", request, timeout))

    async def revoke_grant(
        self, grant_id: str, reason: str = "", *, timeout: float | None = None
    ) -> pb.RevokeGrantResponse:
        request = pb.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return cast(pb.RevokeGrantResponse, await self._call("RevokeGrant", request, timeout))

    async def introspect(
        self, token: str, *, timeout: float | None = None
    ) -> pb.IntrospectTokenResponse:
        request = pb.IntrospectTokenRequest(token=token)
        return cast(
            pb.IntrospectTokenResponse, await self._call("IntrospectToken", request, timeout)
        )

    async def list_grants(
        self, task_id: str, include_inactive: bool = False, *, timeout: float | None = None
    ) -> list[pb.Grant]:
        request = pb.ListGrantsRequest(task_id=task_id, include_inactive=include_inactive)
        return list((await self._call("ListGrants", request, timeout)).grants)


class AsyncTaskHandle(_TaskBase):
    """An open task (asyncio). `async with client.task(...) as task:`; heartbeats run as an
    asyncio task on the same loop while it is open."""

    def __init__(self, client: AsyncAccessClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = client
        self._beats: asyncio.Task[None] | None = None

    async def open(self) -> AsyncTaskHandle:
        """BeginTask, then start heartbeating."""
        if self._raw is not None:
            raise NoActiveTask("a task handle can be opened once")
        self._raw = await self._client.begin_task(
            self._goal,
            task_id=self._requested_id,
            labels=self._labels,
            max_duration=self._max_duration,
            pop_jwk=self._pop_jwk,
        )
        if self._heartbeats:
            self._beats = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"jit-heartbeat-{self.task_id}"
            )
        return self

    async def complete(
        self, outcome: str = "succeeded", detail: str = ""
    ) -> pb.CompleteTaskResponse | None:
        """See TaskHandle.complete."""
        await self._stop_heartbeats()
        if self._closed:
            return self.completion
        self._closed = True
        if self._ended is not None:
            return None  # the sidecar ended it already (and revoked its grants)
        try:
            self.completion = await self._client.complete_task(self.task_id, outcome, detail)
        except TaskEnded as err:
            self._remember_ended(err)
            return None
        return self.completion

    async def __aenter__(self) -> AsyncTaskHandle:
        await self.open()
        self._context_token = _current_task.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._context_token is not None:
            _current_task.reset(self._context_token)
            self._context_token = None
        if exc is None:
            await self.complete("succeeded")
            return
        try:
            await self.complete("errored", _error_detail(exc))
        except SidecarClientError as err:
            log.error("could not complete task %s after an error: %s", self.task_id, err)

    async def grant(
        self,
        action: str,
        resource: str,
        *,
        justification: str = "",
        ttl: int | None = None,
        context: Mapping[str, Any] | None = None,
        wait_for_approval: float | None = None,
        timeout: float | None = None,
    ) -> Grant:
        """See TaskHandle.grant."""
        self._check_usable()
        try:
            response = await self._client.request_grant_raw(
                self.task_id,
                action,
                resource,
                justification=justification,
                ttl_seconds=self.ttl if ttl is None else ttl,
                context=context,
                timeout=timeout,
            )
        except SidecarRpcError as err:
            self._note(err)
            raise
        if response.decision == pb.DECISION_PENDING_APPROVAL and wait_for_approval is not None:
            response = await self._client.await_approval(
                response.approval_id, wait_for_approval, reasons=response.reasons
            )
        return grant_from_response(response)

    async def await_approval(self, approval_id: str, timeout: float) -> Grant:
        """Wait for a pending approval (see `ApprovalPending.approval_id`)."""
        return grant_from_response(await self._client.await_approval(approval_id, timeout))

    async def revoke(self, grant: Grant | str, reason: str = "") -> bool:
        """Revoke one grant now; False if it had already ended."""
        return bool((await self._client.revoke_grant(_grant_id(grant), reason)).revoked)

    async def grants(self, include_inactive: bool = False) -> list[Grant]:
        """The task's grants (without tokens)."""
        listed = await self._client.list_grants(self.task_id, include_inactive)
        return [Grant.from_proto(g) for g in listed]

    async def _stop_heartbeats(self) -> None:
        beats, self._beats = self._beats, None
        if beats is not None and not beats.done():
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.heartbeat_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time() + interval / 2)
            try:
                await self._client.heartbeat(self.task_id, timeout=interval)
            except SidecarRpcError as err:
                if _task_gone(err):
                    self._remember_ended(err)
                    return
                log.warning("heartbeat for task %s failed: %s", self.task_id, err)
            except Exception as err:
                log.warning("heartbeat for task %s failed: %r", self.task_id, err)


# ====================================================================== tools
R = TypeVar("R")
_Arg = Callable[..., Any]


def _evaluate(value: Any, arguments: Mapping[str, Any]) -> Any:
    return value(**arguments) if callable(value) else value


def requires(
    action: str,
    resource: str | Callable[..., str],
    *,
    justification: str | Callable[..., str] = "",
    ttl: int | None = None,
    context: Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None = None,
    wait_for_approval: float | None = None,
    inject: str = "grant",
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Make a function a "tool" that asks for its grant before it runs.

        @requires("tickets.update", lambda ticket_id, **_: f"tickets://{ticket_id}",
                  justification=lambda ticket_id, reason, **_: reason)
        def close_ticket(ticket_id: str, reason: str, *, grant: Grant) -> dict: ...

        with jit.task(goal="triage") as task:
            close_ticket("T-1001", "customer confirmed the fix")

    `resource`, `justification` and `context` may be callables; they receive the tool's
    arguments by name (defaults applied). The grant is passed as the keyword argument named
    `inject` when the function has such a parameter, and that parameter is hidden from the
    tool's visible signature (agent frameworks build schemas from it). The tool must run
    inside `with client.task(...)` (or `async with` for `async def` tools); otherwise it
    raises NoActiveTask. A denial raises AccessDenied and the function does not run.
    """

    def decorate(func: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(func)
        takes_grant = inject in signature.parameters
        visible = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != inject]
        )

        def intent(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            bound = visible.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            return {
                "action": action,
                "resource": _evaluate(resource, arguments),
                "justification": _evaluate(justification, arguments),
                "ttl": ttl,
                "context": _evaluate(context, arguments),
                "wait_for_approval": wait_for_approval,
            }

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_tool(*args: Any, **kwargs: Any) -> Any:
                handle = _current_task.get()
                if handle is None:
                    raise NoActiveTask(f"{func.__name__} needs an open task (async with)")
                wanted = intent(args, kwargs)
                if isinstance(handle, AsyncTaskHandle):
                    grant = await handle.grant(
                        wanted.pop("action"), wanted.pop("resource"), **wanted
                    )
                else:
                    grant = handle.grant(wanted.pop("action"), wanted.pop("resource"), **wanted)
                if takes_grant:
                    kwargs[inject] = grant
                return await cast(Callable[..., Awaitable[Any]], func)(*args, **kwargs)

            async_tool.__signature__ = visible  # type: ignore[attr-defined]
            return cast(Callable[..., R], async_tool)

        @functools.wraps(func)
        def tool(*args: Any, **kwargs: Any) -> R:
            handle = _current_task.get()
            if handle is None:
                raise NoActiveTask(f"{func.__name__} needs an open task (with client.task(...))")
            if not isinstance(handle, TaskHandle):
                raise NoActiveTask(
                    f"{func.__name__} is synchronous but the open task is an asyncio one; "
                    "make the tool `async def`"
                )
            wanted = intent(args, kwargs)
            grant = handle.grant(wanted.pop("action"), wanted.pop("resource"), **wanted)
            if takes_grant:
                kwargs[inject] = grant
            return func(*args, **kwargs)

        tool.__signature__ = visible  # type: ignore[attr-defined]
        return tool

    return decorate


# ====================================================================== operators
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
