"""The asyncio client and task handle: the I/O over a grpc.aio channel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
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


class AsyncAccessClient(_ClientBase):
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
        super().__init__(socket, identity_token, timeout)
        self._channel = grpc.aio.insecure_channel(self._target)
        self._stub = pb_grpc.AccessServiceStub(self._channel)

    async def __aenter__(self) -> AsyncAccessClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _send(self, rpc: req.Rpc[T], timeout: float | None = None) -> T:
        try:
            call = getattr(self._stub, rpc.method)
            response = await call(rpc.request, **self._options(timeout))
        except grpc.RpcError as err:
            raise translate_error(err) from None
        return rpc.unwrap(response)

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
    ) -> AsyncTaskHandle:
        """`async with client.task(goal=...) as task:` (see AccessClient.task)."""
        spec = self._task_spec(
            goal, labels, max_duration, ttl, task_id, pop_jwk, heartbeats, subject_token, stream
        )
        return AsyncTaskHandle(self, spec)

    async def begin_task(
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
        return await self._send(rpc, timeout)

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
        """See `AccessClient.request_grant_raw`."""
        rpc = req.request_grant(task_id, action, resource, justification, ttl_seconds, context)
        return await self._send(rpc, timeout)

    async def request_grant(
        self, task_id: str, action: str, resource: str, **kwargs: Any
    ) -> pb.Grant:
        """See `AccessClient.request_grant`."""
        response = await self.request_grant_raw(task_id, action, resource, **kwargs)
        return grant_from_response(response).raw

    async def await_approval(
        self, approval_id: str, timeout: float, *, reasons: Sequence[str] = ()
    ) -> pb.RequestGrantResponse:
        """See `AccessClient.await_approval`."""
        wait = _ApprovalWait(approval_id, timeout, reasons)
        while (remaining := wait.remaining()) > 0:
            try:
                response = await self._stub.AwaitApproval(wait.request, **self._options(remaining))
            except grpc.RpcError as err:
                wait.failed(err)
            else:
                if (final := wait.answered(response)) is not None:
                    return final
            if pause := wait.pause():
                await asyncio.sleep(pause)
        return wait.gave_up()

    async def heartbeat(
        self, task_id: str, *, timeout: float | None = None
    ) -> pb.HeartbeatResponse:
        return await self._send(req.heartbeat(task_id), timeout)

    async def complete_task(
        self,
        task_id: str,
        outcome: str = "succeeded",
        detail: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.CompleteTaskResponse:
        return await self._send(req.complete_task(task_id, outcome, detail), timeout)

    async def revoke_grant(
        self, grant_id: str, reason: str = "", *, timeout: float | None = None
    ) -> pb.RevokeGrantResponse:
        return await self._send(req.revoke_grant(grant_id, reason), timeout)

    async def introspect(
        self, token: str, *, timeout: float | None = None
    ) -> pb.IntrospectTokenResponse:
        return await self._send(req.introspect(token), timeout)

    async def list_grants(
        self, task_id: str, include_inactive: bool = False, *, timeout: float | None = None
    ) -> list[pb.Grant]:
        return await self._send(req.list_grants(task_id, include_inactive), timeout)

    async def evaluate_plan(
        self, task_id: str, *, request_approvals: bool = False, timeout: float | None = None
    ) -> pb.PlanEvaluation:
        """The policy's answer on the task's declared plan: `allowed`, each step's decision
        and `approval_steps`; with `request_approvals`, each such step's `approval_id`."""
        return await self._send(req.evaluate_plan(task_id, request_approvals), timeout)


class AsyncTaskHandle(_TaskBase):
    """An open task (asyncio). `async with client.task(...) as task:`; heartbeats run as an
    asyncio task on the same loop while it is open."""

    def __init__(self, client: AsyncAccessClient, spec: _TaskSpec) -> None:
        super().__init__(spec)
        self._client = client
        self._beats: asyncio.Task[None] | None = None
        self._stream: _Stream | None = None

    async def open(self) -> AsyncTaskHandle:
        """BeginTask, then start heartbeating."""
        self._raw = await self._client._send(self._begin_rpc())
        if self._spec.stream:
            self._stream = await _Stream.open(self._client, self.task_id)
        if self._spec.heartbeats:
            self._beats = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"jit-heartbeat-{self.task_id}"
            )
        return self

    async def complete(
        self, outcome: str = "succeeded", detail: str = ""
    ) -> pb.CompleteTaskResponse | None:
        """See TaskHandle.complete."""
        rpc = self._complete_rpc(outcome, detail)  # bad arguments change nothing
        await self._stop_heartbeats()
        if not self._closing():
            await self._close_stream()
            return self.completion
        try:
            self.completion = await self._client._send(rpc)
        except TaskEnded as err:
            self._remember_ended(err)
        finally:
            # After CompleteTask: a stream closed before it would crash the task.
            await self._close_stream()
        return self.completion

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    async def __aenter__(self) -> AsyncTaskHandle:
        await self.open()
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome, detail = self._leave(exc)
        if exc is None:
            await self.complete(outcome, detail)
            return
        try:
            await self.complete(outcome, detail)
        except SidecarClientError as err:
            self._completion_failed(err)

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
        rpc = self._grant_rpc(action, resource, justification, ttl, context)
        try:
            response = await self._ask(rpc, timeout)
        except SidecarRpcError as err:
            self._note(err)
            raise
        if response.decision == pb.DECISION_PENDING_APPROVAL and wait_for_approval is not None:
            response = await self._client.await_approval(
                response.approval_id, wait_for_approval, reasons=response.reasons
            )
        return grant_from_response(response)

    async def _ask(
        self, rpc: req.Rpc[pb.RequestGrantResponse], timeout: float | None
    ) -> pb.RequestGrantResponse:
        """See TaskHandle._ask."""
        stream = self._stream
        if stream is not None:
            try:
                return _stream_answer(await stream.ask(_stream_request(rpc)))
            except SidecarRpcError:
                if not stream.broken:
                    raise
                self._stream = None
        return await self._client._send(rpc, timeout)

    async def await_approval(self, approval_id: str, timeout: float) -> Grant:
        """Wait for a pending approval (see `ApprovalPending.approval_id`)."""
        return grant_from_response(await self._client.await_approval(approval_id, timeout))

    async def revoke(self, grant: Grant | str, reason: str = "") -> bool:
        """Revoke one grant now; False if it had already ended."""
        return bool((await self._client.revoke_grant(_grant_id(grant), reason)).revoked)

    async def grants(self, include_inactive: bool = False) -> list[Grant]:
        """See TaskHandle.grants."""
        listed = await self._client.list_grants(self.task_id, include_inactive)
        return [Grant.from_proto(g) for g in listed]

    async def _stop_heartbeats(self) -> None:
        beats, self._beats = self._beats, None
        if beats is not None and not beats.done():
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = _next_beat(next_at, interval)
            try:
                await self._client.heartbeat(self.task_id, timeout=interval)
            except Exception as err:
                if self._heartbeat_failed(err):
                    return


class _Stream:
    """A task's GrantStream (asyncio); one message in flight at a time."""

    def __init__(self, client: AsyncAccessClient) -> None:
        self._lock = asyncio.Lock()
        self.broken = False
        """The stream itself failed (not one intent): further grants go unary."""
        self._call = client._stub.GrantStream(metadata=client._options(None)["metadata"])

    @classmethod
    async def open(cls, client: AsyncAccessClient, task_id: str) -> _Stream | None:
        """The task's stream, or None when the sidecar offers none (use unary)."""
        stream = cls(client)
        try:
            await stream.ask(_stream_open(task_id))
        except SidecarRpcError as err:
            await stream.close()
            if _stream_refused(err):
                return None
            raise
        return stream

    async def ask(self, request: pb.GrantStreamRequest) -> pb.GrantStreamResponse:
        async with self._lock:
            if self.broken:
                raise _stream_ended()
            try:
                await self._call.write(request)
                answer = await self._call.read()
            except grpc.RpcError as err:
                self.broken = True
                raise translate_error(err) from None
            if answer is grpc.aio.EOF:
                self.broken = True
                raise _stream_ended()
            return answer  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Half-close: the sidecar sees the end of the stream (after CompleteTask)."""
        if self.broken:
            self._call.cancel()
            return
        self.broken = True
        with contextlib.suppress(grpc.RpcError):
            await self._call.done_writing()
