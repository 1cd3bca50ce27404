"""The GrantStream RPC: protobuf ⇄ domain for one open stream per task (docs/api.md).

The first message names the task (and is authenticated with the stream's metadata); every
message then carries zero or more intents and gets exactly one answer, in order, holding one
result per intent: RequestGrant's answer, or RequestGrant's error as a `google.rpc.Status`
with the same status code and `ErrorInfo` reason. One message is handled at a time, so a
consumer that stops reading stops the stream (HTTP/2 flow control) and nothing piles up.

The open stream is the task's heartbeat; its close while the task is active is a crash
(sidecar.engine.streams), except while the sidecar itself drains for shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ._proto.jit.v1 import access_pb2 as pb
from .engine import Engine
from .engine.batch import BatchItem, Result
from .errors import (
    Internal,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    SidecarError,
    Unavailable,
)
from .identity import Authenticator
from .metrics import Metrics
from .model import Identity, Intent, Task
from .service import (
    ERROR_DOMAIN,
    CallGuard,
    error_status,
    outcome_pb,
    status_code_for,
    struct_to_dict,
    task_pb,
)

log = logging.getLogger("jit_sidecar.service")
METHOD = "GrantStream"
#: Intents in one message (one policy evaluation, one commit).
MAX_INTENTS = 64
MAX_REQUEST_ID = 128


def status_pb(err: SidecarError) -> status_pb2.Status:
    """The google.rpc.Status a unary call would end with for `err`."""
    code = status_code_for(err)
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=err.reason.value, domain=ERROR_DOMAIN, metadata=err.metadata
        )
    )
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=err.message, details=[detail]
    )


class GrantStreamHandler:
    def __init__(
        self,
        engine: Engine,
        auth: Authenticator,
        guard: CallGuard,
        metrics: Metrics,
        max_message_bytes: int,
    ) -> None:
        self._engine = engine
        self._auth = auth
        self._guard = guard
        self._metrics = metrics
        self._max_bytes = max_message_bytes
        self._recording: set[asyncio.Task[None]] = set()
        self._serving: set[asyncio.Task[Any]] = set()

    def end_all(self) -> None:
        """Shutdown: end every open stream now (no crash: the guard is draining), so that
        the server's grace period is not spent waiting for streams that never end."""
        for serving in list(self._serving):
            serving.cancel()

    async def serve(self, context: grpc.aio.ServicerContext) -> None:
        """Run one stream to its end."""
        current = asyncio.current_task()
        if current is not None:
            self._serving.add(current)
        try:
            await self._serve(context)
        finally:
            if current is not None:
                self._serving.discard(current)

    async def _serve(self, context: grpc.aio.ServicerContext) -> None:
        try:
            identity, task, first = await self._open(context)
        except SidecarError as err:
            self._refused(err, "open")
            await context.abort_with_status(error_status(err))
            return
        keeper = asyncio.ensure_future(self._keep_alive(task))
        try:
            request: Any = first
            while True:
                await context.write(await self._answer(identity, task, request))
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
        except SidecarError as err:
            self._refused(err, "message")
            await context.abort_with_status(error_status(err))
        except Exception:
            if context.code() is not None:  # an abort already in progress
                raise
            log.exception("%s failed", METHOD, extra={"reason": "internal", "rpc": METHOD})
            await context.abort_with_status(error_status(Internal("internal error")))
        finally:
            keeper.cancel()
            self._close(task)

    async def _open(
        self, context: grpc.aio.ServicerContext
    ) -> tuple[Identity, Task, pb.GrantStreamRequest]:
        if self._guard.draining:
            raise Unavailable("the sidecar is shutting down", Reason.SHUTTING_DOWN)
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        identity = await self._auth.authenticate(metadata)
        first = await context.read()
        if first is grpc.aio.EOF:
            raise InvalidArgument(
                "a GrantStream must begin with a message naming its task", Reason.INVALID_TASK
            )
        if not first.task_id:
            raise InvalidArgument(
                "the first GrantStream message must name the task (task_id)", Reason.INVALID_TASK
            )
        task = await self._engine.open_stream(identity, first.task_id)
        return identity, task, first

    async def _keep_alive(self, task: Task) -> None:
        interval = max(1.0, task.heartbeat_interval / 2)
        while task.active:
            await asyncio.sleep(interval)
            self._engine.streams.alive(task, durable=True)

    def _close(self, task: Task) -> None:
        if self._guard.draining:
            # The sidecar is stopping, not the agent: the task lives on (heartbeats).
            self._engine.streams.forget(task)
            return
        recording = self._engine.streams.closed(task)
        if recording is not None:
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)

    def _check(self, task: Task, request: pb.GrantStreamRequest) -> None:
        """Message-level rules; a breach ends the stream with its status."""
        if len(request.request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID} bytes")
        if request.task_id and request.task_id not in (task.task_id, task.task_id.split("@")[0]):
            raise InvalidArgument(
                "a GrantStream serves the one task its first message named", Reason.INVALID_TASK
            )
        if len(request.intents) > MAX_INTENTS:
            raise InvalidArgument(f"more than {MAX_INTENTS} intents in one message")
        size = request.ByteSize()
        if size > self._max_bytes:
            raise ResourceExhausted(
                f"the message is {size} bytes; the limit is {self._max_bytes}",
                Reason.MESSAGE_TOO_LARGE,
            )

    async def _answer(
        self, identity: Identity, task: Task, request: pb.GrantStreamRequest
    ) -> pb.GrantStreamResponse:
        started = time.perf_counter()
        self._engine.streams.alive(task)
        self._check(task, request)
        if not request.intents:  # a heartbeat: the task as it is now
            self._observe("OK", started)
            return pb.GrantStreamResponse(request_id=request.request_id, task=task_pb(task))
        results: list[Result | None] = []
        items: list[BatchItem] = []
        for x in request.intents:
            try:
                context = struct_to_dict(x.intent.context) if x.intent.HasField("context") else {}
            except SidecarError as err:
                results.append(err)
                continue
            intent = Intent(
                action=x.intent.action,
                resource=x.intent.resource,
                justification=x.intent.justification,
                context=context,
            )
            items.append(BatchItem(intent, x.ttl_seconds))
            results.append(None)
        answers = iter(await self._decide(identity, task, items))
        out = pb.GrantStreamResponse(request_id=request.request_id)
        for i, given in enumerate(results):
            result = given if given is not None else next(answers)
            if isinstance(result, status_pb2.Status):
                out.results.add(error=result)
            elif isinstance(result, SidecarError):
                self._refused(result, "intent")
                out.results.add(error=status_pb(result))
            else:
                justification = request.intents[i].intent.justification
                out.results.add(response=outcome_pb(result, justification))
        self._observe("OK", started)
        return out

    async def _decide(
        self, identity: Identity, task: Task, items: list[BatchItem]
    ) -> list[Result | status_pb2.Status]:
        if not items:
            return []
        limit = self._guard.timeout
        try:
            async with asyncio.timeout(limit):
                return list(await self._engine.request_grants(identity, task.task_id, items))
        except TimeoutError:
            late = status_pb2.Status(
                code=code_pb2.DEADLINE_EXCEEDED,
                message=f"{METHOD} message took longer than {limit:g} s",
            )
            return [late] * len(items)

    def _refused(self, err: SidecarError, where: str) -> None:
        log.info(
            "%s refused (%s): %s",
            METHOD,
            where,
            err.message,
            extra={
                "reason": err.reason.value,
                "rpc": METHOD,
                "code": status_code_for(err).name,
                "cause": err.metadata.get("cause"),
            },
        )

    def _observe(self, code: str, started: float) -> None:
        self._metrics.rpc_duration.labels(method=METHOD, code=code).observe(
            time.perf_counter() - started
        )
