"""Human approval for the riskiest intents.

A decision with `approval_required` parks the request as an `Approval`, bound to the exact
intent by a hash of (subject, task, action, resource, justification, context), and valid
for `approval_ttl` seconds. An approver decides through the admin socket; the agent then
collects one JIT grant, either by waiting (`AwaitApproval`) or by repeating the identical
RequestGrant. A webhook tells approvers about new requests, signed with HMAC-SHA256.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import stamina

from .clock import Clock, SystemClock
from .model import FlowReport, Identity, Intent, PolicyDecision

log = logging.getLogger("jit_sidecar.approvals")
#: The approver recorded when the admin caller names nobody (DecideApproval `approver` empty).
ANONYMOUS_APPROVER = "operator"


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    USED = "used"


def intent_hash(subject: str, task_id: str, intent: Intent) -> str:
    """What an approval is bound to: any change to these makes it not apply."""
    material = {
        "subject": subject,
        "task_id": task_id,
        "action": intent.action,
        "resource": intent.resource,
        "justification": intent.justification,
        "context": dict(intent.context),
    }
    return hashlib.sha256(_CANONICAL.encode(material).encode()).hexdigest()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
"""Built once (`json.dumps` with arguments builds an encoder per call, and every
RequestGrant hashes its intent while approvals are open)."""


@dataclass(slots=True)
class Approval:
    approval_id: str
    task_id: str
    subject: str
    intent: Intent
    intent_hash: str
    requested_ttl: int
    decision: PolicyDecision
    created_at: float
    expires_at: float
    state: ApprovalState = ApprovalState.PENDING
    decided_by: str = ""
    decision_reason: str = ""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the approval leaves PENDING (waiters wake up)."""

    @property
    def open(self) -> bool:
        return self.state in (ApprovalState.PENDING, ApprovalState.APPROVED)


def decision_from_record(record: Mapping[str, Any]) -> PolicyDecision:
    """The allowing decision a pending approval carries (from its audit record)."""
    from .model import Tier

    d = record["decision"]
    return PolicyDecision(
        allow=True,
        tier=Tier(d["tier"]),
        approval_required=True,
        ttl_seconds=int(d["ttl_seconds"]),
        audience=str(d["audience"]),
        scope=tuple(d["scope"]),
        reasons=tuple(record.get("reasons", ())),
        cache_seconds=0,
        decision_id=str(record.get("decision_id", "")),
        credential=d.get("credential"),
        four_eyes=d.get("four_eyes") is True,
        owners=tuple(str(o) for o in d.get("owners", ())),
        flow=flow_from_record(d),
    )


def flow_fields(flow: FlowReport | None) -> dict[str, Any]:
    """What a pending approval's record keeps of the flow report (model.FlowReport)."""
    if flow is None:
        return {}
    return {"flow_class": flow.cls, "flow_labels": list(flow.labels)}


def flow_from_record(d: Mapping[str, Any]) -> FlowReport | None:
    if "flow_labels" not in d:
        return None
    return FlowReport(str(d.get("flow_class", "")), tuple(d["flow_labels"]), (), (), False)


def webhook_body(approval: Approval, identity: Identity | None = None) -> bytes:
    return json.dumps(
        {
            "type": "jit.approval.requested",
            "approval_id": approval.approval_id,
            "task_id": approval.task_id,
            "subject": approval.subject,
            "intent": approval.intent.as_input(),
            "reasons": list(approval.decision.reasons),
            "expires_at": int(approval.expires_at),
            "approve": f"jit-sidecar approvals approve {approval.approval_id} --reason '...'",
            "deny": f"jit-sidecar approvals deny {approval.approval_id} --reason '...'",
        },
        separators=(",", ":"),
    ).encode()


def sign_webhook(secret: bytes, timestamp: int, body: bytes) -> str:
    """`X-JIT-Signature` value: `sha256=` HMAC over `<timestamp>.<body>` (replay-bounded by
    the `X-JIT-Timestamp` header the receiver checks)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _Refused(Exception):
    """The receiver answered with a status outside 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _worth_retrying(err: Exception) -> bool:
    """Connection failures, timeouts, 5xx and 429 may pass; another 4xx will not (RFC 9110
    §15.5: the request itself is at fault, e.g. a signature the receiver refuses)."""
    if isinstance(err, _Refused):
        return err.status >= 500 or err.status == 429
    return isinstance(err, aiohttp.ClientError | TimeoutError)


class WebhookNotifier:
    """POSTs new approval requests to one URL, off the request path, retrying with stamina
    (exponential backoff with jitter; `stamina.set_testing` makes the waits zero in tests).
    The signed timestamp comes from the injected clock."""

    def __init__(
        self,
        url: str,
        secret: bytes | None,
        timeout: float = 5.0,
        *,
        clock: Clock | None = None,
        attempts: int = 3,
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock or SystemClock()
        self._attempts = attempts
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def notify(self, approval: Approval) -> None:
        task = asyncio.get_running_loop().create_task(
            self._deliver(webhook_body(approval), approval.approval_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, body: bytes, approval_id: str) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=_worth_retrying,
                attempts=self._attempts,
                timeout=None,  # each attempt is bounded by the client timeout
                wait_initial=0.5,
                wait_max=5.0,
            ):
                with attempt:
                    await self._post(body, approval_id, attempt.num)
        except (_Refused, aiohttp.ClientError, TimeoutError):
            self.failed += 1
            log.error(
                "approval webhook gave up; approvers learn of it from `approvals list`",
                extra={"approval_id": approval_id},
            )
            return
        self.delivered += 1

    async def _post(self, body: bytes, approval_id: str, attempt: int) -> None:
        # Signed afresh on each attempt: the receiver bounds replays by this timestamp.
        timestamp = int(self._clock.now())
        headers = {"Content-Type": "application/json", "X-JIT-Timestamp": str(timestamp)}
        if self._secret is not None:
            headers["X-JIT-Signature"] = sign_webhook(self._secret, timestamp, body)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                if response.status >= 300:
                    raise _Refused(response.status)
        except (_Refused, aiohttp.ClientError, TimeoutError) as err:
            log.warning(
                "approval webhook failed (%s), attempt %d",
                str(err) if isinstance(err, _Refused) else type(err).__name__,
                attempt,
                extra={"approval_id": approval_id},
            )
            raise

    async def drain(self) -> None:
        """Wait for every delivery started so far to succeed or give up."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


#: The identity claim naming who answers for an agent (docs/api.md, "Four-eyes approval").
OWNER_CLAIM = "owner"


def owners_of(identity: Identity, decision: PolicyDecision) -> tuple[str, ...]:
    """Who answers for the agent: the policy's `owners`, then the verified identity's
    `owner` claim (a string or a list of strings), without repeats."""
    claim = identity.claims.get(OWNER_CLAIM)
    named = [claim] if isinstance(claim, str) else claim if isinstance(claim, list) else []
    out = list(decision.owners)
    for owner in named:
        if isinstance(owner, str) and owner and owner not in out:
            out.append(owner)
    return tuple(out)


def check_four_eyes(approval: Approval, approver: str) -> None:
    """Refuse an approval that four-eyes forbids: by one of the agent's owners (compared
    without case), or by an approver who does not say who they are."""
    from .errors import PermissionDenied, Reason

    who = approver.strip().casefold()
    if not who or who == ANONYMOUS_APPROVER:
        raise PermissionDenied(
            f"four-eyes: approval {approval.approval_id} needs a named approver",
            Reason.FOUR_EYES,
        )
    if any(who == owner.strip().casefold() for owner in approval.decision.owners):
        raise PermissionDenied(
            f"four-eyes: {approver} answers for this agent and may not approve its request",
            Reason.FOUR_EYES,
        )
