"""Building each call (`Rpc`: the method, the protobuf request, how to read the answer),
every argument checked first.

The SDK refuses only what it cannot put on the wire faithfully: a wrong type, a number
outside its field's range, text that is not encodable as UTF-8 (a lone surrogate), a context
that is not a JSON object. It raises `InvalidRequest` with the status and reason code the
sidecar uses for the same field, and sends nothing. Everything that can be sent is sent as
is: the sidecar judges content (label key syntax, sizes, the action grammar, a TTL of 0) and
records its refusals in the audit log (docs/api.md, "Errors").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf import json_format, struct_pb2

from .._proto.jit.v1 import access_pb2 as pb
from ..dpop import binding_proof
from ..errors import Reason
from ._errors import InvalidRequest

T = TypeVar("T")
UINT32_MAX = 2**32 - 1
# Far beyond what the sidecar's 8 KiB context limit allows; keeps the walk below off
# Python's recursion limit.
_MAX_CONTEXT_DEPTH = 64
OUTCOMES = {
    "succeeded": pb.OUTCOME_SUCCEEDED,
    "failed": pb.OUTCOME_FAILED,
    "errored": pb.OUTCOME_ERRORED,
}


@dataclass(frozen=True, slots=True)
class Rpc(Generic[T]):
    """One call, ready to send: the method, its request and how to read the answer."""

    method: str
    request: Any
    unwrap: Callable[[Any], T]


def _same(response: T) -> T:
    return response


def text(value: object, name: str, reason: Reason) -> str:
    """`value` if it is a str protobuf can encode (the message names the field, never the
    value: it may be a token)."""
    if not isinstance(value, str):
        raise InvalidRequest.local(f"{name} must be a str, not {type(value).__name__}", reason)
    if not _encodable(value):
        raise InvalidRequest.local(
            f"{name} is not encodable as UTF-8 (it holds a lone surrogate)", reason
        )
    return value


def uint32(value: object, name: str, reason: Reason) -> int:
    """`value` if it fits a proto3 `uint32` field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest.local(f"{name} must be an int, not {type(value).__name__}", reason)
    if not 0 <= value <= UINT32_MAX:
        raise InvalidRequest.local(
            f"{name} must be between 0 and {UINT32_MAX}, not {value}", reason
        )
    return value


def _json_problem(value: object, where: str, depth: int = 0) -> str | None:
    """Why `value` is not JSON that means what the caller wrote, or None."""
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, str):
        return None if _encodable(value) else f"{where} holds a lone surrogate"
    if isinstance(value, float):
        # RFC 8259 section 6: NaN and Infinity are not JSON numbers.
        return None if math.isfinite(value) else f"{where} is {value}, not a JSON number"
    if depth >= _MAX_CONTEXT_DEPTH:
        return f"{where} is nested more than {_MAX_CONTEXT_DEPTH} deep"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                # RFC 8259 section 4: member names are strings (json.dumps would quietly
                # turn 1 into "1", a different key than the caller's).
                return f"{where} has a {type(key).__name__} key; JSON object keys are strings"
            problem = _json_problem(item, f"{where}.{key[:64]}", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, which JSON cannot represent"


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def context_struct(context: object) -> struct_pb2.Struct | None:
    """`intent.context` as a Struct: a JSON object (a Mapping with str keys), or None."""
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise InvalidRequest.local(
            f"intent.context must be a JSON object (a Mapping), not {type(context).__name__}",
            Reason.INVALID_INTENT,
        )
    problem = _json_problem(context, "intent.context")
    if problem:
        raise InvalidRequest.local(problem, Reason.INVALID_INTENT)
    return dict_to_struct(context) if context else None


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    json_format.ParseDict(json.loads(json.dumps(value)), out)
    return out


def labels_map(labels: object) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidRequest.local(
            f"labels must be a Mapping of str to str, not {type(labels).__name__}",
            Reason.INVALID_TASK,
        )
    for key, value in labels.items():
        text(key, "a label key", Reason.INVALID_TASK)
        text(value, f"label {key[:64]}", Reason.INVALID_TASK)
    return dict(labels)


def begin_task(
    goal: str,
    task_id: str,
    labels: Mapping[str, str] | None,
    max_duration: int,
    pop_jwk: Mapping[str, Any] | None,
    subject_token: str = "",
    plan: Sequence[Mapping[str, Any]] = (),
) -> Rpc[pb.Task]:
    """`subject_token`: the person the task acts for (docs/delegation.md)."""
    request = pb.BeginTaskRequest(
        task_id=text(task_id, "task_id", Reason.INVALID_TASK),
        goal=text(goal, "goal", Reason.INVALID_TASK),
        max_duration_seconds=uint32(max_duration, "max_duration", Reason.INVALID_TASK),
        labels=labels_map(labels),
        subject_token=text(subject_token, "subject_token", Reason.INVALID_ARGUMENT),
        plan=[plan_intent(step) for step in plan],
    )
    if pop_jwk and "d" in pop_jwk:
        # RFC 9449 binds a key only with a proof signed by it: the private half signs the
        # BeginTask proof here and never leaves the agent; only the proof is sent.
        request.pop_proof = binding_proof(pop_jwk)
    elif pop_jwk:
        request.pop_jwk.CopyFrom(dict_to_struct(pop_jwk))
    return Rpc("BeginTask", request, lambda response: response.task)


def plan_intent(step: Mapping[str, Any]) -> pb.Intent:
    """A step of a declared plan: `{"action", "resource", "justification"?, "context"?}`."""
    return pb.Intent(
        action=text(step.get("action"), "plan.action", Reason.INVALID_INTENT),
        resource=text(step.get("resource"), "plan.resource", Reason.INVALID_INTENT),
        justification=text(
            step.get("justification", ""), "plan.justification", Reason.INVALID_INTENT
        ),
        context=context_struct(step.get("context")),
    )


def evaluate_plan(task_id: str, request_approvals: bool) -> Rpc[pb.PlanEvaluation]:
    request = pb.EvaluatePlanRequest(
        task_id=text(task_id, "task_id", Reason.INVALID_TASK),
        request_approvals=bool(request_approvals),
    )
    return Rpc("EvaluatePlan", request, lambda response: response.plan)


def request_grant(
    task_id: str,
    action: str,
    resource: str,
    justification: str,
    ttl_seconds: int,
    context: Mapping[str, Any] | None,
) -> Rpc[pb.RequestGrantResponse]:
    # A TTL of 0 fits the field: the sidecar refuses it (invalid_ttl) and audits that.
    intent = pb.Intent(
        action=text(action, "intent.action", Reason.INVALID_INTENT),
        resource=text(resource, "intent.resource", Reason.INVALID_INTENT),
        justification=text(justification, "intent.justification", Reason.INVALID_INTENT),
        context=context_struct(context),
    )
    request = pb.RequestGrantRequest(
        task_id=text(task_id, "task_id", Reason.INVALID_TASK),
        intent=intent,
        ttl_seconds=uint32(ttl_seconds, "ttl", Reason.INVALID_TTL),
    )
    return Rpc("RequestGrant", request, _same)


def heartbeat(task_id: str) -> Rpc[pb.HeartbeatResponse]:
    request = pb.HeartbeatRequest(task_id=text(task_id, "task_id", Reason.INVALID_TASK))
    return Rpc("Heartbeat", request, _same)


def complete_task(task_id: str, outcome: str, detail: str) -> Rpc[pb.CompleteTaskResponse]:
    if outcome not in OUTCOMES:
        raise InvalidRequest.local(
            f"outcome must be one of {', '.join(OUTCOMES)}", Reason.INVALID_ARGUMENT
        )
    request = pb.CompleteTaskRequest(
        task_id=text(task_id, "task_id", Reason.INVALID_TASK),
        outcome=OUTCOMES[outcome],
        detail=text(detail, "detail", Reason.INVALID_ARGUMENT),
    )
    return Rpc("CompleteTask", request, _same)


def revoke_grant(grant_id: str, reason: str) -> Rpc[pb.RevokeGrantResponse]:
    request = pb.RevokeGrantRequest(
        grant_id=text(grant_id, "grant_id", Reason.INVALID_ARGUMENT),
        reason=text(reason, "reason", Reason.INVALID_ARGUMENT),
    )
    return Rpc("RevokeGrant", request, _same)


def introspect(token: str) -> Rpc[pb.IntrospectTokenResponse]:
    request = pb.IntrospectTokenRequest(token=text(token, "token", Reason.INVALID_ARGUMENT))
    return Rpc("IntrospectToken", request, _same)


def _grants(response: pb.ListGrantsResponse) -> list[pb.Grant]:
    return list(response.grants)


def list_grants(task_id: str, include_inactive: bool) -> Rpc[list[pb.Grant]]:
    request = pb.ListGrantsRequest(
        task_id=text(task_id, "task_id", Reason.INVALID_TASK),
        include_inactive=bool(include_inactive),
    )
    return Rpc("ListGrants", request, _grants)


def await_request(approval_id: str) -> pb.AwaitApprovalRequest:
    return pb.AwaitApprovalRequest(
        approval_id=text(approval_id, "approval_id", Reason.INVALID_ARGUMENT)
    )
