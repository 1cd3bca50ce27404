"""gRPC servicers: protobuf ⇄ domain objects, and SidecarError → gRPC status. Nothing else.

Every call is authenticated first, bounded by `rpc_timeout`, counted against
`max_concurrent_rpcs`, timed in `jit_rpc_duration_seconds{method,code}`, and logged with its
reason code. Errors carry a `google.rpc.ErrorInfo` detail (domain `jit-sidecar`) whose
`reason` is the fixed reason code.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ._proto.jit.v1 import access_pb2 as pb
from ._proto.jit.v1 import access_pb2_grpc as pb_grpc
from ._proto.jit.v1 import admin_pb2 as admin_pb
from ._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from .approvals import ANONYMOUS_APPROVER, Approval, ApprovalState
from .audit import log_files
from .audit import verify as verify_audit
from .audit_query import DEFAULT_LIMIT, MAX_LIMIT, AuditQuery, query_log
from .brokers.base import IssuedCredential, Lease
from .dpop import KeyBinding, KeyBindingVerifier
from .engine import Engine, GrantOutcome
from .engine.delegation import actor_subject
from .errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    SidecarError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .identity import Authenticator
from .metrics import Metrics
from .model import (
    Grant,
    GrantState,
    Identity,
    Intent,
    Outcome,
    PlanEvaluation,
    Principal,
    Task,
    TaskState,
    Tier,
)
from .validation import APPROVAL_ID_RE, check_reason_text

log = logging.getLogger("jit_sidecar.service")
ERROR_DOMAIN = "jit-sidecar"

_STATUS: list[tuple[type[SidecarError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (Internal, grpc.StatusCode.INTERNAL),
]
_TIER = {Tier.STANDING: pb.TIER_STANDING, Tier.JIT: pb.TIER_JIT}
_TASK_STATE = {
    TaskState.ACTIVE: pb.TASK_STATE_ACTIVE,
    TaskState.SUCCEEDED: pb.TASK_STATE_SUCCEEDED,
    TaskState.FAILED: pb.TASK_STATE_FAILED,
    TaskState.ERRORED: pb.TASK_STATE_ERRORED,
    TaskState.CRASHED: pb.TASK_STATE_CRASHED,
    TaskState.EXPIRED: pb.TASK_STATE_EXPIRED,
}
_GRANT_STATE = {
    GrantState.ACTIVE: pb.GRANT_STATE_ACTIVE,
    GrantState.REVOKED: pb.GRANT_STATE_REVOKED,
    GrantState.EXPIRED: pb.GRANT_STATE_EXPIRED,
}
_OUTCOME = {
    pb.OUTCOME_SUCCEEDED: Outcome.SUCCEEDED,
    pb.OUTCOME_FAILED: Outcome.FAILED,
    pb.OUTCOME_ERRORED: Outcome.ERRORED,
}
_DECISION = {
    "granted": pb.DECISION_GRANTED,
    "denied": pb.DECISION_DENIED,
    "pending_approval": pb.DECISION_PENDING_APPROVAL,
}


def status_code_for(err: SidecarError) -> grpc.StatusCode:
    for cls, code in _STATUS:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_status(err: SidecarError) -> grpc.Status:
    code = status_code_for(err)
    info = error_details_pb2.ErrorInfo(
        reason=err.reason.value, domain=ERROR_DOMAIN, metadata=err.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=err.message, details=[detail]
    )
    return rpc_status.to_status(status)


def ts(value: float | None) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    if value is not None:
        out.FromNanoseconds(int(value * 1e9))
    return out


def _ts_fields(value: float) -> dict[str, int]:
    """`ts(value)` as constructor arguments: a message field given as a dict is built in
    place, where a message object given is built, then copied."""
    seconds, nanos = divmod(int(value * 1e9), 1_000_000_000)
    return {"seconds": seconds, "nanos": nanos}


def struct_to_dict(
    value: struct_pb2.Struct, field: str = "context", reason: Reason = Reason.INVALID_INTENT
) -> dict[str, Any]:
    """A Struct as JSON data. NaN and Infinity fit a Struct's doubles but are not JSON (RFC
    8259 §6): a request carrying them is refused with `reason`, never an INTERNAL error."""

    def tidy(v: Any) -> Any:
        # Struct numbers are doubles: give integral ones back as ints for policy and audit.
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        if isinstance(v, dict):
            return {k: tidy(x) for k, x in v.items()}
        if isinstance(v, list):
            return [tidy(x) for x in v]
        return v

    try:
        plain = json_format.MessageToDict(value)
    except ValueError as err:
        raise InvalidArgument(
            f"{field} holds a number JSON cannot carry (NaN or Infinity)", reason
        ) from err
    return tidy(plain)  # type: ignore[no-any-return]


def _seconds(value: timestamp_pb2.Timestamp) -> float:
    return float(value.ToNanoseconds()) / 1e9


def task_pb(task: Task) -> pb.Task:
    return pb.Task(
        task_id=task.task_id,
        goal=task.goal,
        subject=task.subject,
        state=_TASK_STATE[task.state],
        started_at=ts(task.started_at),
        deadline=ts(task.deadline),
        heartbeat_interval_seconds=task.heartbeat_interval,
        labels=task.labels,
        pop_jkt=task.pop_jkt,
        ended_at=ts(task.ended_at) if task.ended_at else None,
        principal=principal_pb(task.principal) if task.principal is not None else None,
        flow_labels=sorted(task.flow.labels),
    )


def principal_pb(principal: Principal) -> pb.Principal:
    claims = struct_pb2.Struct()
    claims.update(dict(principal.claims))
    return pb.Principal(subject=principal.subject, issuer=principal.issuer, claims=claims)


def grant_pb(grant: Grant, token: str = "", justification: str = "") -> pb.Grant:
    """`justification` is the intent's, from a caller that has it at hand: a grant held in
    memory does not keep its justification (only the store does), yet RequestGrant's answer
    and ListGrants must show the same intent."""
    return pb.Grant(**_grant_fields(grant, token, justification))


def _grant_fields(grant: Grant, token: str, justification: str) -> dict[str, Any]:
    # Nested messages as dicts: upb builds them in place inside their parent, where a message
    # object given is built, then copied (the answer to every RequestGrant).
    return dict(
        grant_id=grant.grant_id,
        token=token,
        tier=_TIER[grant.tier],
        audience=grant.audience,
        scope=grant.scope,
        issued_at=_ts_fields(grant.issued_at),
        expires_at=_ts_fields(grant.expires_at),
        intent={
            "action": grant.action,
            "resource": grant.resource,
            "justification": justification or grant.justification,
        },
        task_id=grant.task_id,
        state=_GRANT_STATE[grant.state],
        revocation_reason=grant.end_reason,
        decision_id=grant.decision_id,
        lease=lease_pb(grant.lease, grant.state is GrantState.ACTIVE) if grant.lease else None,
        actor=actor_subject(grant.actor),
        flow_labels=list(grant.flow_labels),
    )


def lease_pb(lease: Lease, grant_active: bool = True) -> pb.Lease:
    """The non-secret lease (docs/brokers.md). A lease the store still calls active belongs
    to a grant that has ended in memory: its revocation is under way."""
    state = lease.state if grant_active or lease.state != "active" else "revoking"
    return pb.Lease(
        broker=lease.broker,
        handle=lease.handle,
        expires_at=ts(lease.expires_at),
        state=state,
        details=dict(lease.details),
    )


def credential_pb(issued: IssuedCredential) -> pb.Credential:
    """SECRET: only ever put in the RequestGrant answer to the agent that asked."""
    secret = issued.secret
    return pb.Credential(
        broker=issued.lease.broker,
        handle=issued.lease.handle,
        dsn=secret.get("dsn", ""),
        username=secret.get("username", ""),
        password=secret.get("password", ""),
        expires_at=ts(issued.lease.expires_at),
    )


def outcome_pb(outcome: GrantOutcome, justification: str = "") -> pb.RequestGrantResponse:
    return pb.RequestGrantResponse(
        decision=_DECISION[outcome.decision],
        grant=_grant_fields(outcome.grant, outcome.token, justification or outcome.justification)
        if outcome.grant
        else None,
        reasons=outcome.reasons,
        decision_id=outcome.decision_id,
        approval_id=outcome.approval_id,
        credential=credential_pb(outcome.credential) if outcome.credential else None,
    )


def plan_pb(evaluation: PlanEvaluation) -> pb.PlanEvaluation:
    steps = []
    for step in evaluation.steps:
        d = step.decision
        decision = "granted" if d.allow else "denied"
        if d.allow and d.approval_required:
            decision = "pending_approval"
        steps.append(
            pb.PlanStep(
                index=step.index,
                intent=intent_pb(step.intent),
                decision=_DECISION[decision],
                tier=_TIER[d.tier] if d.tier is not None else pb.TIER_UNSPECIFIED,
                reasons=list(d.reasons),
                approval_id=step.approval_id,
            )
        )
    decision_id = next((s.decision.decision_id for s in evaluation.steps), "")
    return pb.PlanEvaluation(
        allowed=evaluation.allowed,
        steps=steps,
        approval_steps=evaluation.approval_steps,
        decision_id=decision_id,
    )


def intent_pb(intent: Intent) -> pb.Intent:
    out = pb.Intent(
        action=intent.action, resource=intent.resource, justification=intent.justification
    )
    if intent.context:
        out.context.update(dict(intent.context))
    return out


def intent_from_pb(i: pb.Intent) -> Intent:
    return Intent(
        action=i.action,
        resource=i.resource,
        justification=i.justification,
        context=struct_to_dict(i.context) if i.HasField("context") else {},
    )


_APPROVAL_STATE = {
    ApprovalState.PENDING: admin_pb.APPROVAL_STATE_PENDING,
    ApprovalState.APPROVED: admin_pb.APPROVAL_STATE_APPROVED,
    ApprovalState.DENIED: admin_pb.APPROVAL_STATE_DENIED,
    ApprovalState.EXPIRED: admin_pb.APPROVAL_STATE_EXPIRED,
    ApprovalState.USED: admin_pb.APPROVAL_STATE_USED,
}


def approval_pb(
    a: Approval, task: Task | None = None, grants: Sequence[Grant] = ()
) -> admin_pb.Approval:
    """`task` and `grants` (the task's so far) fill the approver's view when given."""
    intent = intent_pb(a.intent)
    return admin_pb.Approval(
        approval_id=a.approval_id,
        state=_APPROVAL_STATE[a.state],
        task_id=a.task_id,
        subject=a.subject,
        intent=intent,
        reasons=list(a.decision.reasons),
        created_at=ts(a.created_at),
        expires_at=ts(a.expires_at),
        decided_by=a.decided_by,
        decision_reason=a.decision_reason,
        ttl_seconds=a.requested_ttl,
        task_goal=task.goal if task is not None else "",
        task_labels=task.labels if task is not None else {},
        tier=_TIER[a.decision.tier] if a.decision.tier is not None else pb.TIER_UNSPECIFIED,
        task_grants=[grant_pb(g) for g in grants],
        four_eyes=a.decision.four_eyes,
        owners=list(a.decision.owners),
        principal=principal_pb(task.principal)
        if task is not None and task.principal is not None
        else None,
    )


Req = TypeVar("Req")
Resp = TypeVar("Resp")


#: The identities whose in-flight slot the current call holds (released when it ends).
_HELD: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("held", default=None)


class CallGuard:
    """Admission, deadlines, metrics and error mapping shared by every RPC."""

    def __init__(
        self,
        metrics: Metrics,
        max_concurrent: int,
        timeout: float,
        long_timeout: float = 300.0,
        max_per_identity: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._max = max_concurrent
        self._max_per_identity = max_per_identity or max_concurrent
        self.timeout = timeout
        self.long_timeout = long_timeout
        """Cap for long-polls (AwaitApproval)."""
        self.inflight = 0
        self.inflight_by_identity: dict[str, int] = {}
        self.draining = False
        self._durations: dict[tuple[str, grpc.StatusCode], Any] = {}
        """Histogram children by (method, code), bound once (a bounded set)."""

    def admit(self, subject: str) -> None:
        """Take one of `subject`'s in-flight slots for the current call, so one noisy
        identity cannot hold every slot of `max_concurrent_rpcs`; released when the call
        ends. Raises RESOURCE_EXHAUSTED too_many_requests when it has none left."""
        held = _HELD.get()
        if held is None or subject in held:
            return
        count = self.inflight_by_identity.get(subject, 0)
        if count >= self._max_per_identity:
            self._metrics.rejected.labels(reason=Reason.TOO_MANY_REQUESTS.value).inc()
            raise ResourceExhausted(
                f"more than {self._max_per_identity} calls of this identity in flight",
                Reason.TOO_MANY_REQUESTS,
                metadata={"limit": "per_identity"},
            )
        self.inflight_by_identity[subject] = count + 1
        held.append(subject)

    def _release(self, held: list[str]) -> None:
        for subject in held:
            left = self.inflight_by_identity.get(subject, 1) - 1
            if left > 0:
                self.inflight_by_identity[subject] = left
            else:
                self.inflight_by_identity.pop(subject, None)

    async def run(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[], Awaitable[Resp]],
        long_poll: bool = False,
    ) -> Resp:
        started = time.perf_counter()
        limit = self.long_timeout if long_poll else self.timeout
        code = grpc.StatusCode.OK
        try:
            if self.draining:
                raise Unavailable("the sidecar is shutting down", Reason.SHUTTING_DOWN)
            if self.inflight >= self._max:
                self._metrics.rejected.labels(reason=Reason.TOO_MANY_REQUESTS.value).inc()
                raise ResourceExhausted(
                    f"more than {self._max} calls in flight",
                    Reason.TOO_MANY_REQUESTS,
                    metadata={"limit": "global"},
                )
            self.inflight += 1
            held: list[str] = []
            token = _HELD.set(held)
            try:
                async with asyncio.timeout(limit):
                    return await body()
            finally:
                _HELD.reset(token)
                self._release(held)
                self.inflight -= 1
        except SidecarError as err:
            code = status_code_for(err)
            log.info(
                "%s refused: %s",
                method,
                err.message,
                extra={
                    "reason": err.reason.value,
                    "rpc": method,
                    "code": code.name,
                    "cause": err.metadata.get("cause"),
                },
            )
            await context.abort_with_status(error_status(err))
            raise  # abort_with_status raises; this is for type checkers
        except TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            await context.abort_with_status(
                rpc_status.to_status(
                    status_pb2.Status(
                        code=code_pb2.DEADLINE_EXCEEDED,
                        message=f"{method} took longer than {limit:g} s",
                    )
                )
            )
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            if context.code() is not None:  # an abort already in progress
                code = context.code()
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method, extra={"reason": "internal", "rpc": method})
            await context.abort_with_status(error_status(Internal("internal error")))
            raise
        finally:
            child = self._durations.get((method, code))
            if child is None:
                child = self._metrics.rpc_duration.labels(method=method, code=code.name)
                self._durations[(method, code)] = child
            child.observe(time.perf_counter() - started)


def _token_principal(engine: Engine, grant: Grant) -> pb.Principal | None:
    """The person a delegated token acts for: its task's principal (subject and issuer)."""
    if not grant.principal:
        return None
    task = engine.task(grant.task_id)
    if task is not None and task.principal is not None:
        return principal_pb(task.principal)
    return pb.Principal(subject=grant.principal)


class StreamServer(Protocol):
    """What serves GrantStream (sidecar/grant_stream.py, which imports this module)."""

    async def serve(self, context: grpc.aio.ServicerContext) -> None: ...


class AccessService(pb_grpc.AccessServiceServicer):
    def __init__(
        self,
        engine: Engine,
        auth: Authenticator,
        guard: CallGuard,
        grant_stream: StreamServer | None = None,
    ) -> None:
        """`grant_stream` serves GrantStream (UNIMPLEMENTED without it)."""
        self._engine = engine
        self._auth = auth
        self._guard = guard
        self._key_bindings = KeyBindingVerifier()
        self.grant_stream = grant_stream

    async def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        identity = await self._auth.authenticate(metadata)
        self._guard.admit(identity.subject)
        return identity

    async def BeginTask(
        self, request: pb.BeginTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.BeginTaskResponse:
        async def body() -> pb.BeginTaskResponse:
            identity = await self._identity(context)
            pop = None
            if request.pop_proof or request.HasField("pop_jwk"):
                jwk = (
                    struct_to_dict(request.pop_jwk, "pop_jwk", Reason.INVALID_POP_PROOF)
                    if request.HasField("pop_jwk")
                    else None
                )
                pop = KeyBinding(request.pop_proof, jwk, self._key_bindings)
            task = await self._engine.begin_task(
                identity,
                task_id=request.task_id,
                goal=request.goal,
                max_duration=request.max_duration_seconds,
                labels=dict(request.labels),
                pop=pop,
                subject_token=request.subject_token,
                subject_token_type=request.subject_token_type,
                plan=[intent_from_pb(i) for i in request.plan],
            )
            evaluation = task.flow.evaluation
            return pb.BeginTaskResponse(
                task=task_pb(task), plan=plan_pb(evaluation) if evaluation else None
            )

        return await self._guard.run("BeginTask", context, body)

    async def RequestGrant(
        self, request: pb.RequestGrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestGrantResponse:
        async def body() -> pb.RequestGrantResponse:
            identity = await self._identity(context)
            intent = intent_from_pb(request.intent)
            outcome = await self._engine.request_grant(
                identity, request.task_id, intent, request.ttl_seconds
            )
            return outcome_pb(outcome, intent.justification)

        return await self._guard.run("RequestGrant", context, body)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        async def body() -> pb.HeartbeatResponse:
            identity = await self._identity(context)
            task = await self._engine.heartbeat(identity, request.task_id)
            return pb.HeartbeatResponse(
                task=task_pb(task),
                next_heartbeat_before=ts(task.last_heartbeat + task.heartbeat_interval),
            )

        return await self._guard.run("Heartbeat", context, body)

    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteTaskResponse:
        async def body() -> pb.CompleteTaskResponse:
            identity = await self._identity(context)
            outcome = _OUTCOME.get(request.outcome)
            if outcome is None:
                raise InvalidArgument("outcome must be SUCCEEDED, FAILED or ERRORED")
            check_reason_text(request.detail, "detail")
            task, revoked = await self._engine.complete_task(
                identity, request.task_id, outcome, request.detail
            )
            return pb.CompleteTaskResponse(revoked_grants=revoked, task=task_pb(task))

        return await self._guard.run("CompleteTask", context, body)

    async def RevokeGrant(
        self, request: pb.RevokeGrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeGrantResponse:
        async def body() -> pb.RevokeGrantResponse:
            identity = await self._identity(context)
            check_reason_text(request.reason)
            revoked, grant = await self._engine.revoke_grant(
                identity, request.grant_id, request.reason
            )
            return pb.RevokeGrantResponse(revoked=revoked, grant=grant_pb(grant))

        return await self._guard.run("RevokeGrant", context, body)

    async def IntrospectToken(
        self, request: pb.IntrospectTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.IntrospectTokenResponse:
        async def body() -> pb.IntrospectTokenResponse:
            await self._identity(context)
            result = await self._engine.introspect(request.token)
            if not result.active or result.grant is None:
                return pb.IntrospectTokenResponse(
                    active=False, revocation_reason=result.revocation_reason
                )
            g = result.grant
            return pb.IntrospectTokenResponse(
                active=True,
                grant_id=g.grant_id,
                subject=g.subject,
                scope=list(g.scope),
                audience=g.audience,
                expires_at=ts(g.expires_at),
                task_id=g.task_id,
                lease=lease_pb(g.lease) if g.lease is not None else None,
                actor=actor_subject(g.actor),
                principal=_token_principal(self._engine, g),
            )

        return await self._guard.run("IntrospectToken", context, body)

    async def ListGrants(
        self, request: pb.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListGrantsResponse:
        async def body() -> pb.ListGrantsResponse:
            identity = await self._identity(context)
            grants = await self._engine.list_grants(
                identity, request.task_id, request.include_inactive
            )
            return pb.ListGrantsResponse(grants=[grant_pb(g) for g in grants])

        return await self._guard.run("ListGrants", context, body)

    async def GrantStream(
        self,
        request_iterator: AsyncIterator[pb.GrantStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """One stream per task (sidecar/grant_stream.py)."""
        if self.grant_stream is None:
            err = Unimplemented("GrantStream is not available in this build")
            await context.abort_with_status(error_status(err))
            return
        await self.grant_stream.serve(context)

    async def AwaitApproval(
        self, request: pb.AwaitApprovalRequest, context: grpc.aio.ServicerContext
    ) -> pb.AwaitApprovalResponse:
        async def body() -> pb.AwaitApprovalResponse:
            identity = await self._identity(context)
            if not APPROVAL_ID_RE.fullmatch(request.approval_id):
                raise InvalidArgument("approval_id is malformed")
            # Answer just before the caller's deadline (or the server's cap) with PENDING.
            remaining = context.time_remaining()
            wait = self._guard.long_timeout - 0.5
            if remaining is not None:
                wait = min(wait, remaining - 0.25)
            outcome = await self._engine.await_approval(identity, request.approval_id, wait)
            return pb.AwaitApprovalResponse(result=outcome_pb(outcome))

        return await self._guard.run("AwaitApproval", context, body, long_poll=True)

    async def EvaluatePlan(
        self, request: pb.EvaluatePlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluatePlanResponse:
        async def body() -> pb.EvaluatePlanResponse:
            identity = await self._identity(context)
            evaluation = await self._engine.evaluate_plan(
                identity, request.task_id, request_approvals=request.request_approvals
            )
            return pb.EvaluatePlanResponse(plan=plan_pb(evaluation))

        return await self._guard.run("EvaluatePlan", context, body)


class AdminService(admin_pb_grpc.AdminServiceServicer):
    """Operator API on the admin socket. The socket's file mode is its access control."""

    def __init__(
        self,
        engine: Engine,
        guard: CallGuard,
        rotate_key: Callable[[bool], Awaitable[tuple[str, str, float]]],
        audit_log: Path | None = None,
    ) -> None:
        self._engine = engine
        self._guard = guard
        self._rotate_key = rotate_key
        self._audit_log = audit_log
        """The audit log QueryAudit reads (None: QueryAudit is UNIMPLEMENTED)."""

    async def RotateSigningKey(
        self, request: admin_pb.RotateSigningKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.RotateSigningKeyResponse:
        async def body() -> admin_pb.RotateSigningKeyResponse:
            kid, previous, retire_at = await self._rotate_key(request.reload_from_file)
            return admin_pb.RotateSigningKeyResponse(
                kid=kid,
                previous_kid=previous if previous != kid else "",
                previous_retires_at=ts(retire_at) if retire_at else None,
            )

        return await self._guard.run("Admin.RotateSigningKey", context, body)

    async def ListApprovals(
        self, request: admin_pb.ListApprovalsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.ListApprovalsResponse:
        async def body() -> admin_pb.ListApprovalsResponse:
            if request.include_decided:
                approvals = await self._engine.store.list_approvals()
                live = {a.approval_id: a for a in self._engine.open_approvals()}
                approvals = [live.get(a.approval_id, a) for a in approvals]
            else:
                approvals = self._engine.open_approvals()
            return admin_pb.ListApprovalsResponse(
                approvals=[await self._approval_view(a) for a in approvals]
            )

        return await self._guard.run("Admin.ListApprovals", context, body)

    async def _approval_view(self, a: Approval) -> admin_pb.Approval:
        """An approval with its task's goal, labels and grants so far (what an approver
        needs to decide); a decided one is shown as recorded."""
        if not a.open:
            return approval_pb(a)
        task = self._engine.task(a.task_id) or await self._engine.store.get_task(a.task_id)
        grants = await self._engine.task_grants(a.task_id, include_inactive=True)
        return approval_pb(a, task, sorted(grants, key=lambda g: g.issued_at))

    async def ListTasks(
        self, request: admin_pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.ListTasksResponse:
        async def body() -> admin_pb.ListTasksResponse:
            views = [
                admin_pb.TaskView(
                    task=task_pb(task), grants=[grant_pb(g) for g in self._engine.grants_of(task)]
                )
                for task in self._engine.active_tasks(request.subject)
            ]
            return admin_pb.ListTasksResponse(tasks=views)

        return await self._guard.run("Admin.ListTasks", context, body)

    async def QueryAudit(
        self, request: admin_pb.QueryAuditRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.QueryAuditResponse:
        async def body() -> admin_pb.QueryAuditResponse:
            if self._audit_log is None:
                raise Unimplemented("this server has no audit log to query")
            if request.limit > MAX_LIMIT:
                raise InvalidArgument(f"limit must be at most {MAX_LIMIT}")
            for value, name in (
                (request.task_id, "task_id"),
                (request.subject, "subject"),
                (request.grant_id, "grant_id"),
                *((e, "events") for e in request.events),
            ):
                check_reason_text(value, name)
            query = AuditQuery(
                task_id=request.task_id,
                subject=request.subject,
                grant_id=request.grant_id,
                events=frozenset(request.events),
                since=_seconds(request.since) if request.HasField("since") else None,
                until=_seconds(request.until) if request.HasField("until") else None,
                limit=request.limit or DEFAULT_LIMIT,
            )
            path = self._audit_log
            records, truncated = await asyncio.to_thread(query_log, path, query)
            response = admin_pb.QueryAuditResponse(truncated=truncated)
            for record in records:
                json_format.ParseDict(record, response.records.add())
            if request.verify:
                result = await asyncio.to_thread(lambda: verify_audit(log_files(path)))
                response.chain.CopyFrom(
                    admin_pb.AuditChainStatus(
                        ok=result.ok,
                        records=result.count,
                        first_seq=result.first_seq,
                        last_seq=result.last_seq,
                        last_hash=result.last_hash,
                        problem=result.problem,
                        bad_file=result.bad_file,
                        bad_line=result.bad_line,
                    )
                )
            return response

        return await self._guard.run("Admin.QueryAudit", context, body)

    async def DecideApproval(
        self, request: admin_pb.DecideApprovalRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.DecideApprovalResponse:
        async def body() -> admin_pb.DecideApprovalResponse:
            if not APPROVAL_ID_RE.fullmatch(request.approval_id):
                raise InvalidArgument("approval_id is malformed")
            check_reason_text(request.reason)
            check_reason_text(request.approver, "approver")
            approval = await self._engine.decide_approval(
                request.approval_id,
                approve=request.approve,
                approver=request.approver or ANONYMOUS_APPROVER,
                reason=request.reason,
            )
            return admin_pb.DecideApprovalResponse(approval=approval_pb(approval))

        return await self._guard.run("Admin.DecideApproval", context, body)

    async def Revoke(
        self, request: admin_pb.RevokeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.RevokeResponse:
        async def body() -> admin_pb.RevokeResponse:
            check_reason_text(request.reason)
            which = request.WhichOneof("selector")
            if which == "grant_id":
                revoked, _ = await self._engine.revoke_grant(None, request.grant_id, request.reason)
                count = int(revoked)
            elif which == "task_id":
                count = await self._engine.revoke_task(request.task_id, request.reason)
            elif which == "subject":
                if not request.subject:
                    raise InvalidArgument("subject is empty")
                count = await self._engine.revoke_subject(request.subject, request.reason)
            elif which == "principal":
                if not request.principal:
                    raise InvalidArgument("principal is empty")
                check_reason_text(request.principal, "principal")
                count = await self._engine.revoke_principal(request.principal, request.reason)
            elif which == "all" and request.all:
                count = await self._engine.revoke_subject(None, request.reason)
            else:
                raise InvalidArgument("choose grant_id, task_id, subject, principal or all")
            return admin_pb.RevokeResponse(revoked_grants=count)

        return await self._guard.run("Admin.Revoke", context, body)
