"""The synchronous client and task handle: the I/O over a blocking gRPC channel."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from .._proto.jit.v1 import access_pb2 as pb
from .._proto.jit.v1 import access_pb2_grpc as pb_grpc
from . import _requests as req
from ._base import (
    DEFAULT_GRANT_TTL,
    DEFAULT_TIMEOUT,
    _ApprovalWait,
    _ClientBase,
    _grant_id,
    _next_beat,
    _stream_answer,
    _stream_ended,
    _stream_open,
    _stream_refused,
    _stream_request,
    _TaskBase,
    _TaskSpec,
)
from ._errors import (
    SidecarClientError,
    SidecarRpcError,
    TaskEnded,
    translate_error,
)
from ._identity import IdentityToken
from ._models import Grant, grant_from_response
from ._requests import T


class AccessClient(_ClientBase):
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
        super().__init__(socket, identity_token, timeout)
        self._channel = grpc.insecure_channel(self._target)
        self._stub = pb_grpc.AccessServiceStub(self._channel)

    def __enter__(self) -> AccessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _send(self, rpc: req.Rpc[T], timeout: float | None = None) -> T:
        try:
            response = getattr(self._stub, rpc.method)(rpc.request, **self._options(timeout))
        except grpc.RpcError as err:
            raise translate_error(err) from None
        return rpc.unwrap(response)

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
        subject_token: str = "",
        stream: bool = True,
    ) -> TaskHandle:
        """A task as a context manager: `with client.task(goal=...) as task:`.

        `max_duration` (seconds, 0 = the sidecar's default) bounds the task; `ttl` is the
        default lifetime asked for each grant. Leaving the block completes the task
        (SUCCEEDED, or ERRORED when an exception escapes) and so revokes its grants.
        With `stream` (the default) grants are asked over one GrantStream when the sidecar
        offers it, else with unary calls; the open stream also tells the sidecar the agent
        is alive, so a crash of this process revokes the task's grants at once.
        """
        spec = self._task_spec(
            goal, labels, max_duration, ttl, task_id, pop_jwk, heartbeats, subject_token, stream
        )
        return TaskHandle(self, spec)

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
        subject_token: str = "",
        plan: Sequence[Mapping[str, Any]] = (),
    ) -> pb.Task:
        """`plan`: the intents the task expects to need (`{"action", "resource",
        "justification"?, "context"?}`); `evaluate_plan` tells which need approval."""
        rpc = req.begin_task(goal, task_id, labels, max_duration, pop_jwk, subject_token, plan)
        return self._send(rpc, timeout)

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
        rpc = req.request_grant(task_id, action, resource, justification, ttl_seconds, context)
        return self._send(rpc, timeout)

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
        wait = _ApprovalWait(approval_id, timeout, reasons)
        while (remaining := wait.remaining()) > 0:
            try:
                response = self._stub.AwaitApproval(wait.request, **self._options(remaining))
            except grpc.RpcError as err:
                wait.failed(err)
            else:
                if (final := wait.answered(response)) is not None:
                    return final
            if pause := wait.pause():
                time.sleep(pause)
        return wait.gave_up()

    def heartbeat(self, task_id: str, *, timeout: float | None = None) -> pb.HeartbeatResponse:
        return self._send(req.heartbeat(task_id), timeout)

    def complete_task(
        self,
        task_id: str,
        outcome: str = "succeeded",
        detail: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.CompleteTaskResponse:
        return self._send(req.complete_task(task_id, outcome, detail), timeout)

    def revoke_grant(
        self, grant_id: str, reason: str = "", *, timeout: float | None = None
    ) -> pb.RevokeGrantResponse:
        return self._send(req.revoke_grant(grant_id, reason), timeout)

    def introspect(self, token: str, *, timeout: float | None = None) -> pb.IntrospectTokenResponse:
        return self._send(req.introspect(token), timeout)

    def list_grants(
        self, task_id: str, include_inactive: bool = False, *, timeout: float | None = None
    ) -> list[pb.Grant]:
        return self._send(req.list_grants(task_id, include_inactive), timeout)

    def evaluate_plan(
        self, task_id: str, *, request_approvals: bool = False, timeout: float | None = None
    ) -> pb.PlanEvaluation:
        """The policy's answer on the task's declared plan: `allowed`, each step's decision
        and `approval_steps`; with `request_approvals`, each such step's `approval_id`."""
        return self._send(req.evaluate_plan(task_id, request_approvals), timeout)


class TaskHandle(_TaskBase):
    """An open task (sync). Use as `with client.task(...) as task:`; or call `open()` and
    `complete()` yourself. Heartbeats run in a daemon thread while it is open."""

    def __init__(self, client: AccessClient, spec: _TaskSpec) -> None:
        super().__init__(spec)
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: _Stream | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> TaskHandle:
        """BeginTask, open the GrantStream (when asked and offered), start heartbeating."""
        self._raw = self._client._send(self._begin_rpc())
        if self._spec.stream:
            self._stream = _Stream.open(self._client, self.task_id)
        if self._spec.heartbeats:
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
        rpc = self._complete_rpc(outcome, detail)  # bad arguments change nothing
        self._stop_heartbeats()
        if not self._closing():
            self._close_stream()
            return self.completion
        try:
            self.completion = self._client._send(rpc)
        except TaskEnded as err:
            self._remember_ended(err)
        finally:
            # After CompleteTask: a stream closed before it would crash the task.
            self._close_stream()
        return self.completion

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __enter__(self) -> TaskHandle:
        self.open()
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome, detail = self._leave(exc)
        if exc is None:
            self.complete(outcome, detail)
            return
        try:
            self.complete(outcome, detail)
        except SidecarClientError as err:
            self._completion_failed(err)

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
        `wait_for_approval=seconds` waits that long first), TaskEnded (the task is over:
        completed by this handle, or ended by the sidecar, e.g. missed heartbeats),
        InvalidRequest (bad input) or another SidecarRpcError.
        """
        rpc = self._grant_rpc(action, resource, justification, ttl, context)
        try:
            response = self._ask(rpc, timeout)
        except SidecarRpcError as err:
            self._note(err)
            raise
        if response.decision == pb.DECISION_PENDING_APPROVAL and wait_for_approval is not None:
            response = self._client.await_approval(
                response.approval_id, wait_for_approval, reasons=response.reasons
            )
        return grant_from_response(response)

    def _ask(
        self, rpc: req.Rpc[pb.RequestGrantResponse], timeout: float | None
    ) -> pb.RequestGrantResponse:
        """Over the stream when one is open; unary otherwise, and from the moment the
        stream breaks (the sidecar restarting, say: the task then lives on)."""
        stream = self._stream
        if stream is not None:
            try:
                return _stream_answer(stream.ask(_stream_request(rpc)))
            except SidecarRpcError:
                if not stream.broken:
                    raise  # the intent's own answer (e.g. policy_unavailable)
                self._stream = None
        return self._client._send(rpc, timeout)

    def await_approval(self, approval_id: str, timeout: float) -> Grant:
        """Wait for a pending approval (see `ApprovalPending.approval_id`)."""
        return grant_from_response(self._client.await_approval(approval_id, timeout))

    def revoke(self, grant: Grant | str, reason: str = "") -> bool:
        """Revoke one grant now; False if it had already ended."""
        return bool(self._client.revoke_grant(_grant_id(grant), reason).revoked)

    def grants(self, include_inactive: bool = False) -> list[Grant]:
        """The task's grants (without tokens); with `include_inactive`, the ended ones too,
        each with its `state` and `end_reason`."""
        listed = self._client.list_grants(self.task_id, include_inactive)
        return [Grant.from_proto(g) for g in listed]

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
            next_at = _next_beat(next_at, interval)
            try:
                self._client.heartbeat(self.task_id, timeout=interval)
            except Exception as err:
                if self._heartbeat_failed(err):
                    return


_END = object()


class _Stream:
    """A task's GrantStream (sync): requests feed gRPC's iterator through a queue; one
    message is in flight at a time, so answers pair with requests."""

    def __init__(self, client: AccessClient) -> None:
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.broken = False
        """The stream itself failed (not one intent): further grants go unary."""
        self._answers: Iterator[pb.GrantStreamResponse] = client._stub.GrantStream(
            iter(self._requests.get, _END), metadata=client._options(None)["metadata"]
        )

    @classmethod
    def open(cls, client: AccessClient, task_id: str) -> _Stream | None:
        """The task's stream, or None when the sidecar offers none (use unary)."""
        stream = cls(client)
        try:
            stream.ask(_stream_open(task_id))
        except SidecarRpcError as err:
            stream.close()
            if _stream_refused(err):
                return None
            raise
        return stream

    def ask(self, request: pb.GrantStreamRequest) -> pb.GrantStreamResponse:
        with self._lock:
            if self.broken:
                raise _stream_ended()
            self._requests.put(request)
            try:
                return next(self._answers)
            except StopIteration:
                self.broken = True
                raise _stream_ended() from None
            except grpc.RpcError as err:
                self.broken = True
                raise translate_error(err) from None

    def close(self) -> None:
        """Half-close: the sidecar sees the end of the stream (after CompleteTask)."""
        self.broken = True
        self._requests.put(_END)
