"""sidecar.authzen: request parsing, decision checking, ARAP binding and state mapping."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.approvals import Approval, ApprovalState
from sidecar.authzen import (
    AccessRequest,
    BadRequest,
    bound_digest,
    check_decision,
    context_names,
    parse_evaluation,
    parse_evaluations,
    task_status,
)
from sidecar.model import Intent, PolicyDecision, Tier

ALICE = {"type": "user", "id": "alice@example.com"}
DOC = {"type": "document", "id": "1"}
READ = {"name": "read"}


def test_parse_keeps_the_four_members_and_drops_unknown_ones() -> None:
    """§10.1.1: unknown members are ignored; subject, action, resource, context are kept."""
    parsed = parse_evaluation(
        {"subject": ALICE, "action": READ, "resource": DOC, "context": {"a": 1}, "x": 2}
    )
    assert parsed == {"subject": ALICE, "action": READ, "resource": DOC, "context": {"a": 1}}


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"action": READ, "resource": DOC}, "`subject` is required"),
        ({"subject": {"id": "a"}, "action": READ, "resource": DOC}, "`subject.type` is required"),
        ({"subject": ALICE, "action": {"name": 3}, "resource": DOC}, "`action.name` must be"),
        ({"subject": ALICE, "action": READ, "resource": {"type": "d", "id": ""}}, "`resource.id`"),
        ({"subject": ALICE, "action": READ, "resource": DOC, "context": "x"}, "`context` must"),
    ],
)
def test_parse_names_what_is_wrong(document: dict[str, Any], where: str) -> None:
    """A malformed request is a BadRequest whose description names the member."""
    with pytest.raises(BadRequest) as err:
        parse_evaluation(document)
    assert where in err.value.description
    assert err.value.reason == "invalid_request"


def test_defaults_and_overrides() -> None:
    """§7.1.1: top-level members are defaults; an item's own member replaces one whole."""
    items, semantic = parse_evaluations(
        {
            "subject": ALICE,
            "action": READ,
            "context": {"time": "t"},
            "evaluations": [{"resource": DOC}, {"resource": DOC, "action": {"name": "edit"}}],
            "options": {"evaluations_semantic": "permit_on_first_permit"},
        }
    )
    assert semantic == "permit_on_first_permit"
    assert items is not None
    assert [i["action"]["name"] for i in items] == ["read", "edit"]
    assert all(i["subject"] == ALICE and i["context"] == {"time": "t"} for i in items)


def test_no_items_means_a_single_evaluation() -> None:
    """§7.1: an absent or empty `evaluations` array is a single evaluation."""
    assert parse_evaluations({"evaluations": []}) == (None, "execute_all")


def test_an_unknown_semantic_is_refused() -> None:
    """Only the three semantics of §7.1.2.1 are accepted."""
    with pytest.raises(BadRequest):
        parse_evaluations({"evaluations": [{}], "options": {"evaluations_semantic": "or"}})


@pytest.mark.parametrize(
    ("result", "cause", "expected"),
    [
        ({"decision": True}, "", ({"decision": True}, "")),
        (
            {"decision": False, "context": {"r": 1}},
            "",
            ({"decision": False, "context": {"r": 1}}, ""),
        ),
        (
            None,
            "undefined",
            (
                {"decision": False, "context": {"reason": "policy_error", "cause": "undefined"}},
                "undefined",
            ),
        ),
        (
            {"decision": "true"},
            "",
            ({"decision": False, "context": {"reason": "policy_error", "cause": "shape"}}, "shape"),
        ),
        (
            {"decision": True, "context": []},
            "",
            ({"decision": False, "context": {"reason": "policy_error", "cause": "shape"}}, "shape"),
        ),
        (
            [True],
            "",
            ({"decision": False, "context": {"reason": "policy_error", "cause": "shape"}}, "shape"),
        ),
    ],
)
def test_check_decision_fails_closed(result: Any, cause: str, expected: Any) -> None:
    """Only `{"decision": bool[, "context": object]}` passes; anything else is a denial."""
    assert check_decision(result, cause) == expected


def test_binding_ignores_the_approval_and_added_members() -> None:
    """The bound request is subject, resource, action and the denied context's members: a
    later `approval` or a submission-time justification does not change it, a changed member
    does."""
    denied = {"subject": ALICE, "action": READ, "resource": DOC, "context": {"t": 1}}
    names = context_names({**denied, "context": {"t": 1, "approval": {"id": "a"}}})
    digest = bound_digest(denied, names)
    assert names == ["t"]
    assert bound_digest({**denied, "context": {"t": 1, "why": "x"}}, names) == digest
    assert bound_digest({**denied, "context": {"t": 2}}, names) != digest
    assert bound_digest({**denied, "resource": {"type": "document", "id": "2"}}, names) != digest


def _record(
    state: ApprovalState, *, decided_by: str = "", expires_at: float = 100.0
) -> AccessRequest:
    approval = Approval(
        approval_id="a-1",
        task_id="authzen",
        subject="alice",
        intent=Intent(action="read", resource="1", justification="", context={}),
        intent_hash="authzen:x",
        requested_ttl=60,
        decision=PolicyDecision(
            allow=True,
            tier=Tier.JIT,
            approval_required=True,
            ttl_seconds=60,
            audience="authzen",
            scope=("read",),
            reasons=(),
            cache_seconds=0,
            decision_id="",
        ),
        created_at=0.0,
        expires_at=expires_at,
        state=state,
        decided_by=decided_by,
    )
    return AccessRequest(approval, "d", [], "eval_1", "b")


@pytest.mark.parametrize(
    ("record", "now", "status"),
    [
        (_record(ApprovalState.PENDING), 50.0, "pending"),
        (_record(ApprovalState.PENDING), 150.0, "expired"),
        (_record(ApprovalState.APPROVED, decided_by="op"), 50.0, "approved"),
        (_record(ApprovalState.DENIED, decided_by="op"), 50.0, "denied"),
        (_record(ApprovalState.EXPIRED), 150.0, "expired"),
        (_record(ApprovalState.EXPIRED, decided_by="op"), 150.0, "approved"),
        (_record(ApprovalState.EXPIRED), 50.0, "cancelled"),
    ],
    ids=[
        "pending",
        "pending-lapsed",
        "approved",
        "denied",
        "expired",
        "approved-lapsed",
        "task-ended",
    ],
)
def test_every_arap_state_maps_from_the_desk(
    record: AccessRequest, now: float, status: str
) -> None:
    """ARAP's pending, approved, denied, expired and cancelled each come from a desk state;
    an approved task stays approved after approved_until (terminal states do not change)."""
    assert task_status(record, now) == status


def test_a_cancelled_request_is_cancelled() -> None:
    """A PEP's cancellation (recorded by the desk as a denial) reads as `cancelled`."""
    record = _record(ApprovalState.DENIED, decided_by="authzen-pep")
    record.cancelled = True
    assert task_status(record, 50.0) == "cancelled"
