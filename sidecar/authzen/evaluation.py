"""Answering Access Evaluation requests (AuthZEN §6, §7): OPA decides, the batch semantic
short-circuits (§7.1.2.1), ARAP adds what a requestable denial or a presented approval
needs, and every answer is audited (`authzen_decision`) and counted
(`jit_authzen_evaluations_total{decision}`). A decision that cannot be audited is
answered as a deny (`audit_unavailable`)."""

from __future__ import annotations

import logging
from typing import Any

from ..clock import rfc3339
from ..errors import SidecarError
from ..events import AuthzenDecided, Event
from ..journal import CommitError
from ..metrics import Metrics
from .access_requests import AccessRequests
from .decider import OpaDecider, check_decision
from .desk import AuthzenDesk
from .documents import clip

log = logging.getLogger("jit_sidecar.authzen")


class Evaluator:
    """Decides, audits and counts AuthZEN evaluations for the endpoints."""

    def __init__(
        self, desk: AuthzenDesk, opa: OpaDecider, requests: AccessRequests, metrics: Metrics
    ) -> None:
        self._desk = desk
        self._opa = opa
        self._requests = requests
        counter = metrics.authzen_evaluations
        self._counted = {d: counter.labels(decision=d) for d in ("permit", "deny", "error")}

    async def evaluate(
        self, items: list[dict[str, Any]], semantic: str, rid: str | None, base: str
    ) -> list[dict[str, Any]]:
        """Decide, apply the semantic (§7.1.2.1), ARAP, then audit and count what is answered.
        OPA evaluates a whole batch in one round trip (it has no side effects); only the
        items up to a short-circuit are answered, audited and counted."""
        if len(items) == 1:
            answers = [await self._opa.decide(items[0])]
        else:
            answers = await self._opa.decide_many(items)
        now = self._desk.clock.now()
        decisions: list[dict[str, Any]] = []
        causes: list[str] = []
        for item, (result, cause) in zip(items, answers, strict=True):
            decision, failed = check_decision(result, cause)
            if not failed:
                decision = self._requests.reevaluate(item, decision, now, base)
            decisions.append(decision)
            causes.append(failed)
            stop = (semantic == "deny_on_first_deny" and not decision["decision"]) or (
                semantic == "permit_on_first_permit" and decision["decision"]
            )
            if stop:
                break
        if semantic == "deny_on_first_deny" and len(decisions) < len(items):
            # Say why the answer is short, as §7.1.2.1's example does (unless policy said why).
            last = decisions[-1].setdefault("context", {})
            if "reason" not in last:
                last.update(code="200", reason="deny_on_first_deny")
        try:
            await self._audit(items, decisions, causes, rid, now)
        except (CommitError, SidecarError):
            # A decision the log cannot record is a deny, not an HTTP error: a gateway set to
            # fail open when its PDP errs (Envoy ext_authz `failure_mode_allow`, for one) must
            # still refuse: an HTTP error leaves the outcome to the PEP's configuration.
            log.error(
                "AuthZEN decisions could not be audited: all denied",
                extra={"reason": "audit_unavailable"},
            )
            decisions = [
                {"decision": False, "context": {"reason": "audit_unavailable"}} for _ in decisions
            ]
            causes = ["audit_unavailable"] * len(decisions)
        for decision, failed in zip(decisions, causes, strict=True):
            label = "error" if failed else ("permit" if decision["decision"] else "deny")
            self._counted[label].inc()
        return decisions

    async def _audit(
        self,
        items: list[dict[str, Any]],
        decisions: list[dict[str, Any]],
        causes: list[str],
        rid: str | None,
        now: float,
    ) -> None:
        events: list[Event] = []
        for item, decision, cause in zip(items, decisions, causes, strict=False):
            context = decision.get("context", {})
            approval = context.get("approval")
            reason = context.get("reason")
            approval_id = approval.get("id") if isinstance(approval, dict) else None
            events.append(
                AuthzenDecided(
                    time=rfc3339(now),
                    subject=clip(item["subject"]["id"]),
                    authzen={
                        "subject_type": clip(item["subject"]["type"]),
                        "action": clip(item["action"]["name"]),
                        "resource_type": clip(item["resource"]["type"]),
                        "resource": clip(item["resource"]["id"]),
                    },
                    decision=decision["decision"],
                    request_id=clip(rid) if rid else None,
                    reason=clip(reason) if isinstance(reason, str) else None,
                    cause=cause or None,
                    evaluation_id=context.get("evaluation_id"),
                    approval_id=approval_id,
                )
            )
        # In the log before the answer, synced within journal.SYNC_WINDOW after it
        # (docs/authzen.md, "Audit"): an answer gives no access, unlike a grant.
        await self._desk.journal.record(events)
