"""ARAP (the Access Request and Approval Profile, draft 1) on the engine's approval desk: a
denial the policy marks requestable gets its binding material, a submission opens an
approval, and re-evaluating with that approval permits until `approved_until`."""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..clock import rfc3339
from ..errors import SidecarError
from ..journal import CommitError
from ..model import Intent, PolicyDecision, Tier
from .binding import BindingKey, Requestable, bound_digest, context_names
from .desk import AuthzenDesk
from .documents import canonical, clip, json_object, parse_evaluation
from .errors import BadRequest, Problem
from .tasks import AccessRequest, task_response, task_status

#: Requestable denials and access requests remembered in memory (oldest dropped first).
MAX_REMEMBERED = 10_000
#: The pseudo task of every AuthZEN approval in `jit-sidecar approvals list`: "/" is not
#: allowed in task ids, so no agent task can share it (and end, or contradict, its approvals).
AUTHZEN_TASK = "authzen/requests"
#: Access requests open (pending or approved) at once; more are refused with 429.
MAX_OPEN_REQUESTS = 1000


@dataclass(slots=True)
class _Memory:
    requestables: OrderedDict[str, Requestable] = field(default_factory=OrderedDict)
    requests: OrderedDict[str, AccessRequest] = field(default_factory=OrderedDict)
    idempotency: OrderedDict[str, str] = field(default_factory=OrderedDict)

    @staticmethod
    def keep(table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        while len(table) > MAX_REMEMBERED:
            table.popitem(last=False)


class AccessRequests:
    """The requestable denials and access requests of one sidecar, remembered in memory;
    the approvals themselves are the desk's."""

    def __init__(self, desk: AuthzenDesk, binding_key: bytes | None = None) -> None:
        self._desk = desk
        self._binding = BindingKey(binding_key)
        self._memory = _Memory()

    # ------------------------------------------------------------------ evaluation
    def reevaluate(
        self, item: dict[str, Any], decision: dict[str, Any], now: float, base: str
    ) -> dict[str, Any]:
        """A denial the policy marks requestable (`context.access_request`) gets the binding
        material (ARAP "Requestable Denial Context"): an `evaluation_id`, an expiry and a
        binding token. With an approval reference (`context.approval`, ARAP "Completion
        Semantics") that applies, it becomes a permit."""
        context = decision.get("context", {})
        requestable = not decision["decision"] and isinstance(context.get("access_request"), dict)
        presented = item.get("context", {}).get("approval")
        if presented is None:
            return self._requestable(item, decision, now, base) if requestable else decision
        if decision["decision"]:
            return decision
        if not requestable:
            # An approval never overrides the rest of policy (ARAP "PDP Processing Rules").
            return _reevaluation_denial(decision, "policy_denied", "none")
        record = None
        if isinstance(presented, dict) and isinstance(presented.get("id"), str):
            record = self._memory.requests.get(presented["id"])
        if record is None:
            return _reevaluation_denial(decision, "approval_unverifiable", "none")
        if record.digest != bound_digest(item, record.context_names):
            fresh = self._requestable(item, decision, now, base)
            return _reevaluation_denial(fresh, "out_of_scope", "request")
        status = task_status(record, now)
        approval = record.approval
        if status == "approved" and approval.expires_at > now:
            return {
                "decision": True,
                "context": {
                    "approval": {
                        "id": approval.approval_id,
                        "approved_until": rfc3339(approval.expires_at),
                    }
                },
            }
        if status == "pending":
            denial = _reevaluation_denial(decision, "approval_pending", "retry")
            denial["context"]["retry_after"] = 5
            return denial
        if status == "denied":
            return _reevaluation_denial(decision, "approval_denied", "none")
        fresh = self._requestable(item, decision, now, base)
        return _reevaluation_denial(fresh, "approval_expired", "request")

    def _requestable(
        self, item: dict[str, Any], decision: dict[str, Any], now: float, base: str
    ) -> dict[str, Any]:
        context = dict(decision["context"])
        hint = dict(context["access_request"])
        evaluation_id = "eval_" + secrets.token_urlsafe(16)
        names = context_names(item)
        expires_at = now + self._desk.settings.approval_ttl
        digest = bound_digest(item, names)
        reason = context.get("reason")
        reason = reason if isinstance(reason, str) and reason else "approval_required"
        template = hint.get("template")
        template = template if isinstance(template, str) else ""
        hint.update(
            endpoint=base + "/access/v1/requests",
            expires_at=rfc3339(expires_at),
            binding_token=self._binding.token(evaluation_id, int(expires_at), names, digest),
        )
        context.update(
            reason=reason,
            evaluation_id=evaluation_id,
            evaluated_at=rfc3339(now),
            access_request=hint,
        )
        self._memory.keep(
            self._memory.requestables,
            evaluation_id,
            Requestable(evaluation_id, digest, names, expires_at, reason, template),
        )
        return {"decision": False, "context": context}

    # ------------------------------------------------------------------ tasks
    async def submit(
        self, document: dict[str, Any], key: str | None, base: str
    ) -> tuple[int, Any, str]:
        """ARAP "Access Request Endpoint": open an approval for a requestable denial.
        `key` is the PEP's `Idempotency-Key`: the same key and body answer the same task."""
        if "items" in document:
            raise BadRequest("unsupported", "bundled access requests (`items`) are not supported")
        submission = parse_evaluation(document)
        denial = json_object(document.get("denial"), "denial")
        body_digest = hashlib.sha256(canonical(document)).hexdigest()
        if key is not None:
            seen = self._memory.idempotency.get(key)
            if seen is not None:
                record = self._memory.requests.get(seen)
                if record is not None and record.body_digest != body_digest:
                    raise Problem(409, "duplicate_request", "Idempotency-Key reused")
                if record is not None:
                    return self.task(record, base, 200)
        bound = self._binding.verify(submission, denial, self._memory.requestables)
        now = self._desk.clock.now()
        if now > bound.expires_at:
            raise Problem(410, "expired_denial", "the requestable denial has expired")
        if sum(r.approval.open for r in self._memory.requests.values()) >= MAX_OPEN_REQUESTS:
            raise Problem(429, "too_many_requests", f"{MAX_OPEN_REQUESTS} requests are open")
        context = submission.get("context", {})
        justification = context.get("business_justification", context.get("justification", ""))
        action = submission["action"]["name"]
        intent = Intent(
            action=action,
            resource=submission["resource"]["id"],
            justification=clip(justification, 1024) if isinstance(justification, str) else "",
            context={
                "via": "authzen",
                "evaluation_id": bound.evaluation_id,
                "subject_type": clip(submission["subject"]["type"]),
                "resource_type": clip(submission["resource"]["type"]),
            },
        )
        config = self._desk.settings
        decision = PolicyDecision(
            allow=True,
            tier=Tier.JIT,
            approval_required=True,
            ttl_seconds=config.approval_ttl,
            audience="authzen",
            scope=(action,),
            reasons=(f"{bound.reason or 'approval_required'}: requested through AuthZEN",),
            cache_seconds=0,
            decision_id=bound.evaluation_id,
        )
        try:
            approval = await self._desk.open_approval(
                submission["subject"]["id"],
                AUTHZEN_TASK,
                intent,
                "authzen:" + bound.digest,
                config.approval_ttl,
                decision,
            )
        except (CommitError, SidecarError) as err:
            raise Problem(503, "unavailable", "the approval could not be recorded") from err
        record = AccessRequest(
            approval, bound.digest, bound.context_names, bound.evaluation_id, body_digest
        )
        self._memory.keep(self._memory.requests, approval.approval_id, record)
        if key is not None:
            self._memory.keep(self._memory.idempotency, key, approval.approval_id)
        return self.task(record, base, 202)

    def find(self, task_id: str) -> AccessRequest:
        """The access request `task_id` names, or a 404 Problem."""
        record = self._memory.requests.get(task_id)
        if record is None:
            raise Problem(404, "unknown_task", "no such access request")
        return record

    def task(self, record: AccessRequest, base: str, status: int) -> tuple[int, Any, str]:
        """The Task Handle as it stands now: (HTTP status, body, Location or '')."""
        return task_response(record, base, self._desk.clock.now(), status)

    async def cancel(self, record: AccessRequest, given: Any) -> None:
        """ARAP "Cancellation": cancel a pending request, recorded as a denial by
        `authzen-pep`; `given` is the PEP's `reason`, if any."""
        reason = "cancelled by the PEP"
        if isinstance(given, str) and given:
            reason = f"cancelled by the PEP: {clip(given, 256)}"
        if task_status(record, self._desk.clock.now()) != "pending":
            raise Problem(409, "invalid_task_state", "the request is no longer pending")
        try:
            await self._desk.decide_approval(
                record.approval.approval_id, approve=False, approver="authzen-pep", reason=reason
            )
        except SidecarError as err:
            raise Problem(409, "invalid_task_state", err.message) from err
        except CommitError as err:
            raise Problem(503, "unavailable", "the cancellation could not be recorded") from err
        record.cancelled = True


def _reevaluation_denial(decision: dict[str, Any], reason: str, next_action: str) -> dict[str, Any]:
    """ARAP "Completion Semantics": a denied re-evaluation says what the PEP should do next."""
    context = dict(decision.get("context", {}))
    if next_action != "request":
        context.pop("access_request", None)
    context.update(reason=reason, next_action=next_action)
    return {"decision": False, "context": context}
