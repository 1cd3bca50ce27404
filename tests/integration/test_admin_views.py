"""The admin API the console reads and the four-eyes rule, against the real OPA binary (with
a small test policy) and a real sidecar process over its real admin socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import admin_pb2 as admin_pb
from sidecar._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from sidecar.client import SidecarRpcError, socket_target, translate_error
from tests.harness import OpaServer, SidecarProcess, running

pytestmark = pytest.mark.integration

POLICY = """
package jit

default decision := {"allow": false, "reasons": ["default_deny: not in the test catalog"]}

decision := {
	"allow": true,
	"tier": "jit",
	"approval_required": true,
	"four_eyes": true,
	"owners": ["alice@example.com"],
	"ttl_seconds": 60,
	"audience": "payments",
	"scope": [input.intent.action],
	"reasons": ["tier_approval: refunds need a human"],
	"cache_seconds": 0,
} if input.intent.action == "payments.refund"

decision := {
	"allow": true,
	"tier": "standing",
	"ttl_seconds": 60,
	"audience": "docs",
	"reasons": ["standing_read: ok"],
} if input.intent.action == "docs.read"

decision := {
	"allow": true,
	"tier": "jit",
	"approval_required": true,
	"four_eyes": "yes",
	"ttl_seconds": 60,
	"audience": "payments",
	"reasons": ["broken: four_eyes is not a boolean"],
} if input.intent.action == "payments.broken"
"""


@pytest.fixture
def policy_opa(tmp_path: Path) -> Iterator[OpaServer]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "test.rego").write_text(POLICY)
    server = OpaServer(tmp_path, policy_dirs=[policies]).start()
    yield server
    server.stop()


def admin_call(sidecar: SidecarProcess, method: str, request: Any) -> Any:
    with grpc.insecure_channel(socket_target(sidecar.admin_socket)) as channel:
        stub = admin_pb_grpc.AdminServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=10)
        except grpc.RpcError as err:
            raise translate_error(err) from None


def decide(sidecar: SidecarProcess, approval_id: str, approver: str) -> Any:
    request = admin_pb.DecideApprovalRequest(
        approval_id=approval_id, approve=True, approver=approver, reason="looked at it"
    )
    return admin_call(sidecar, "DecideApproval", request)


def test_four_eyes_is_enforced_by_the_sidecar_and_survives_a_restart(
    tmp_path: Path, policy_opa: OpaServer
) -> None:
    """Under the policy's four-eyes, the owner and an unnamed approver are refused
    (PERMISSION_DENIED four_eyes, nothing decided), also after a restart; another
    approver's approval is recorded with their name."""
    process = SidecarProcess(tmp_path / "s", policy_opa.url)
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("refunds", labels={"ticket": "77"})
        pending = c.request_grant_raw(
            task.task_id, "payments.refund", "payments://orders/77", justification="ticket 77"
        )
        with pytest.raises(SidecarRpcError) as by_owner:
            decide(sidecar, pending.approval_id, "Alice@Example.com")
        with pytest.raises(SidecarRpcError) as by_nobody:
            decide(sidecar, pending.approval_id, "")
    with running(process) as sidecar:
        listed = admin_call(sidecar, "ListApprovals", admin_pb.ListApprovalsRequest())
        with pytest.raises(SidecarRpcError) as after_restart:
            decide(sidecar, pending.approval_id, "alice@example.com")
        approved = decide(sidecar, pending.approval_id, "bob@example.com").approval
        decided = sidecar.events("approval_decided")
    for refused in (by_owner, by_nobody, after_restart):
        assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.reason == "four_eyes"
    [view] = listed.approvals
    assert (view.four_eyes, list(view.owners)) == (True, ["alice@example.com"])
    assert (view.task_goal, dict(view.task_labels)) == ("refunds", {"ticket": "77"})
    assert view.tier == pb.TIER_JIT
    assert approved.state == admin_pb.APPROVAL_STATE_APPROVED
    assert [(e["approver"], e["approved"]) for e in decided] == [("bob@example.com", True)]


def test_a_mistyped_four_eyes_is_no_token(tmp_path: Path, policy_opa: OpaServer) -> None:
    """`four_eyes` that is not a boolean makes the decision invalid: nothing parked or issued."""
    with running(SidecarProcess(tmp_path / "s", policy_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("refunds")
        with pytest.raises(SidecarRpcError) as caught:
            c.request_grant_raw(task.task_id, "payments.broken", "payments://orders/1")
        parked = sidecar.events("grant_pending")
        issued = sidecar.events("grant_issued")
    assert caught.value.reason == "policy_result_invalid"
    assert (parked, issued) == ([], [])


def test_list_tasks_and_query_audit(tmp_path: Path, policy_opa: OpaServer) -> None:
    """ListTasks shows active tasks with their active grants; QueryAudit selects a task's
    records, by grant and by event, bounds `limit`, and reports the chain's status."""
    with running(SidecarProcess(tmp_path / "s", policy_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("read docs", labels={"purpose": "support"})
        other = c.begin_task("other work")
        grant = c.request_grant_raw(task.task_id, "docs.read", "docs://handbook/a").grant
        tasks = admin_call(sidecar, "ListTasks", admin_pb.ListTasksRequest()).tasks
        story = admin_call(
            sidecar, "QueryAudit", admin_pb.QueryAuditRequest(task_id=task.task_id, verify=True)
        )
        by_grant = admin_call(
            sidecar, "QueryAudit", admin_pb.QueryAuditRequest(grant_id=grant.grant_id)
        )
        begun = admin_call(
            sidecar,
            "QueryAudit",
            admin_pb.QueryAuditRequest(events=["task_begun"], limit=1),
        )
        with pytest.raises(SidecarRpcError) as too_many:
            admin_call(sidecar, "QueryAudit", admin_pb.QueryAuditRequest(limit=1001))
        c.complete_task(task.task_id)
        after = admin_call(sidecar, "ListTasks", admin_pb.ListTasksRequest()).tasks
    views = {v.task.task_id: v for v in tasks}
    assert set(views) == {task.task_id, other.task_id}
    assert [g.grant_id for g in views[task.task_id].grants] == [grant.grant_id]
    assert views[task.task_id].grants[0].token == ""  # never a token
    assert list(views[other.task_id].grants) == []
    events = [r["event"] for r in (dict(s) for s in story.records)]
    assert events == ["task_begun", "grant_issued"]
    assert story.chain.ok
    assert story.chain.last_seq >= 3
    assert [r["event"] for r in (dict(s) for s in by_grant.records)] == ["grant_issued"]
    assert (len(begun.records), begun.truncated) == (1, True)
    assert dict(begun.records[0])["task_id"] == other.task_id  # the newest one
    assert too_many.value.reason == "invalid_argument"
    assert [v.task.task_id for v in after] == [other.task_id]


def test_query_audit_reports_a_tampered_chain(tmp_path: Path, policy_opa: OpaServer) -> None:
    """An edited audit record shows as a broken chain, with the line where it broke."""
    process = SidecarProcess(tmp_path / "s", policy_opa.url)
    with running(process) as sidecar, sidecar.client() as c:
        c.begin_task("first")
        c.begin_task("second")
    lines = process.audit.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"first"', '"forged"')
    process.audit.write_text("".join(lines))
    with running(process) as sidecar:
        response = admin_call(sidecar, "QueryAudit", admin_pb.QueryAuditRequest(verify=True))
    assert not response.chain.ok
    assert response.chain.bad_line == 2
    assert "hash mismatch" in response.chain.problem
