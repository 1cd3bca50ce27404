"""What the sync and async clients share, without I/O (the httpx `BaseClient` pattern):
building each call (request, deadline, credentials, how to read the answer), the approval
wait's bookkeeping, and the task handles' state. `_sync.py` and `_async.py` only send."""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from .._proto.jit.v1 import access_pb2 as pb
from ..errors import Reason
from . import _requests as req
from ._errors import (
    NoActiveTask,
    SidecarRpcError,
    SidecarUnavailable,
    TaskCompleted,
    TaskEnded,
    error_from_status,
    translate_error,
)
from ._identity import IdentityToken, _Credentials
from ._models import _datetime

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


def socket_target(path: str | os.PathLike[str]) -> str:
    return f"unix:{Path(path).resolve()}"


def _socket_path(socket: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    return socket or os.environ.get("JIT_SIDECAR_SOCKET") or DEFAULT_SOCKET


class _ClientBase:
    """Configuration and call building for `AccessClient` and `AsyncAccessClient`."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None,
        identity_token: IdentityToken,
        timeout: float,
    ) -> None:
        self._target = socket_target(_socket_path(socket))
        self._timeout = timeout
        self._credentials = _Credentials(identity_token)

    def _options(self, timeout: float | None) -> dict[str, Any]:
        """Every RPC has a deadline and carries the identity token of the moment."""
        return {
            "timeout": timeout if timeout is not None else self._timeout,
            "metadata": self._credentials.metadata(),
        }

    @staticmethod
    def _task_spec(
        goal: str,
        labels: Mapping[str, str] | None,
        max_duration: int,
        ttl: int,
        task_id: str,
        pop_jwk: Mapping[str, Any] | None,
        heartbeats: bool,
        subject_token: str = "",
        stream: bool = True,
    ) -> _TaskSpec:
        req.uint32(ttl, "ttl", Reason.INVALID_TTL)
        return _TaskSpec(
            goal, labels, max_duration, ttl, task_id, pop_jwk, heartbeats, subject_token, stream
        )


class _ApprovalWait:
    """The bookkeeping of `await_approval`: one deadline over several AwaitApproval calls."""

    def __init__(self, approval_id: str, timeout: float, reasons: Sequence[str]) -> None:
        self.request = req.await_request(approval_id)
        self._approval_id = approval_id
        self._deadline = time.monotonic() + timeout
        self._reasons = list(reasons)
        self._started = 0.0

    def remaining(self) -> float:
        """Seconds left; also marks the start of the next call."""
        self._started = time.monotonic()
        return self._deadline - self._started

    def answered(self, response: pb.AwaitApprovalResponse) -> pb.RequestGrantResponse | None:
        """The final answer, or None while still pending."""
        result: pb.RequestGrantResponse = response.result
        if result.decision != pb.DECISION_PENDING_APPROVAL:
            return result
        self._reasons = list(result.reasons) or self._reasons
        return None

    @staticmethod
    def failed(err: grpc.RpcError) -> None:
        # DEADLINE_EXCEEDED is this call's deadline (ours or the sidecar's own cap), not the
        # decision's: ask again while time is left.
        if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise translate_error(err) from None

    def pause(self) -> float:
        """How long to wait before asking again (never past the deadline)."""
        now = time.monotonic()
        pause = _MIN_APPROVAL_POLL - (now - self._started)
        return min(pause, max(0.0, self._deadline - now)) if pause > 0 else 0.0

    def gave_up(self) -> pb.RequestGrantResponse:
        """The PENDING_APPROVAL answer once the time is up."""
        return pb.RequestGrantResponse(
            decision=pb.DECISION_PENDING_APPROVAL,
            approval_id=self._approval_id,
            reasons=self._reasons,
        )


# ====================================================================== tasks
_current_task: contextvars.ContextVar[_TaskBase | None] = contextvars.ContextVar(
    "jit_current_task", default=None
)


@dataclass(frozen=True, slots=True)
class _TaskSpec:
    """What `client.task(...)` was asked for."""

    goal: str
    labels: Mapping[str, str] | None
    max_duration: int
    ttl: int
    task_id: str
    pop_jwk: Mapping[str, Any] | None
    heartbeats: bool
    subject_token: str = ""
    """The person the task acts for (docs/delegation.md)."""
    stream: bool = True
    """Ask for grants over one GrantStream when the sidecar offers it (else unary)."""


def _task_gone(err: SidecarRpcError) -> bool:
    """Does this heartbeat error mean the task is over (rather than a passing fault)?"""
    return isinstance(err, TaskEnded) or err.reason in (
        Reason.TASK_NOT_FOUND,
        Reason.TASK_NOT_OWNED,
    )


def _error_detail(exc: BaseException | None) -> str:
    # Only the exception's type: its message may carry data (even secrets) that does not
    # belong in the audit log.
    return "" if exc is None else f"raised {type(exc).__name__}"


def _next_beat(scheduled: float, interval: float) -> float:
    # Fixed rate, but never a burst to catch up after a stall.
    return max(scheduled + interval, time.monotonic() + interval / 2)


class _TaskBase:
    """What the sync and async task handles share (state, not I/O)."""

    def __init__(self, spec: _TaskSpec) -> None:
        self._spec = spec
        self.ttl = spec.ttl
        """Default lifetime (seconds) asked for each grant."""
        self._raw: pb.Task | None = None
        self._ended: SidecarRpcError | None = None
        self._closed = False
        self._context_token: contextvars.Token[_TaskBase | None] | None = None
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
        return float(self.raw.heartbeat_interval_seconds) or _FALLBACK_HEARTBEAT_INTERVAL

    @property
    def ended(self) -> SidecarRpcError | None:
        """Why the sidecar considers the task over, once a heartbeat or call has said so."""
        return self._ended

    # ------------------------------------------------------------------ lifecycle
    def _begin_rpc(self) -> req.Rpc[pb.Task]:
        if self._raw is not None:
            raise NoActiveTask("a task handle can be opened once")
        s = self._spec
        return req.begin_task(
            s.goal, s.task_id, s.labels, s.max_duration, s.pop_jwk, s.subject_token
        )

    def _complete_rpc(self, outcome: str, detail: str) -> req.Rpc[pb.CompleteTaskResponse]:
        return req.complete_task(self.task_id, outcome, detail)

    def _closing(self) -> bool:
        """Mark the handle closed; True when CompleteTask must still be sent (not when it was
        sent already, nor when the sidecar ended the task and revoked its grants itself)."""
        if self._closed:
            return False
        self._closed = True
        return self._ended is None

    def _enter(self) -> None:
        self._context_token = _current_task.set(self)

    def _leave(self, exc: BaseException | None) -> tuple[str, str]:
        """Leave the block: the outcome and detail to complete the task with."""
        if self._context_token is not None:
            _current_task.reset(self._context_token)
            self._context_token = None
        return ("succeeded", "") if exc is None else ("errored", _error_detail(exc))

    def _completion_failed(self, err: Exception) -> None:
        # The body's exception is what the caller needs to see; the grants expire anyway.
        log.error("could not complete task %s after an error: %s", self.task_id, err)

    # ------------------------------------------------------------------ grants
    def _grant_rpc(
        self,
        action: str,
        resource: str,
        justification: str,
        ttl: int | None,
        context: Mapping[str, Any] | None,
    ) -> req.Rpc[pb.RequestGrantResponse]:
        self._check_usable()
        return req.request_grant(
            self.task_id,
            action,
            resource,
            justification,
            self.ttl if ttl is None else ttl,
            context,
        )

    def _check_usable(self) -> None:
        if self._raw is None:
            raise NoActiveTask("the task has not been opened yet (use it in a with block)")
        ended = self._ended
        if ended is not None:
            raise TaskEnded(ended.code, ended.message, ended.reason, ended.metadata)
        if self._closed:
            # What the sidecar would answer (FAILED_PRECONDITION task_inactive), without
            # asking it.
            raise TaskCompleted(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {self.task_id} has been completed",
                Reason.TASK_INACTIVE.value,
                {"source": "sdk"},
            )

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

    # ------------------------------------------------------------------ heartbeats
    def _heartbeat_failed(self, err: Exception) -> bool:
        """Note a failed heartbeat; True when the task is over and heartbeats must stop."""
        if isinstance(err, SidecarRpcError):
            if _task_gone(err):
                self._remember_ended(err)
                return True
            log.warning("heartbeat for task %s failed: %s", self.task_id, err)
        else:  # e.g. an identity provider failing; keep trying
            log.warning("heartbeat for task %s failed: %r", self.task_id, err)
        return False


# ---------------------------------------------------------------------- GrantStream
def _stream_open(task_id: str) -> pb.GrantStreamRequest:
    """The first message of a task's GrantStream: names the task, asks for nothing."""
    return pb.GrantStreamRequest(task_id=task_id)


def _stream_request(rpc: req.Rpc[pb.RequestGrantResponse]) -> pb.GrantStreamRequest:
    """A RequestGrant call as one GrantStream message."""
    r = rpc.request
    return pb.GrantStreamRequest(
        intents=[pb.GrantStreamIntent(intent=r.intent, ttl_seconds=r.ttl_seconds)]
    )


def _stream_answer(response: object) -> pb.RequestGrantResponse:
    """RequestGrant's answer from a GrantStream answer, or the error RequestGrant would
    have raised (the per-intent google.rpc.Status)."""
    if not isinstance(response, pb.GrantStreamResponse) or len(response.results) != 1:
        raise _stream_ended()
    result = response.results[0]
    if result.HasField("error"):
        raise error_from_status(result.error)
    answer: pb.RequestGrantResponse = result.response
    return answer


def _stream_ended() -> SidecarUnavailable:
    return SidecarUnavailable(
        grpc.StatusCode.UNAVAILABLE, "the GrantStream ended", "stream_ended", {"source": "sdk"}
    )


def _stream_refused(err: SidecarRpcError) -> bool:
    """Opening the stream failed: False when the error is the task's (raise it), True
    when the sidecar just does not stream (older sidecar, UNIMPLEMENTED, ...): use unary."""
    if isinstance(err, TaskEnded) or err.reason in (Reason.TASK_NOT_FOUND, Reason.TASK_NOT_OWNED):
        return False
    if err.code is not grpc.StatusCode.UNIMPLEMENTED:
        log.warning("GrantStream unavailable (%s); using unary calls", err.reason)
    return True


def _grant_id(grant: Any) -> str:
    return grant if isinstance(grant, str) else str(grant.grant_id)
