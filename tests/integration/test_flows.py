"""Flows and declared plans (issue 22) against the real OPA binary serving rego/, a real
sidecar process on a real Unix socket and its real SQLite store: the task's history decides
what it may do next, survives kill -9, and a declared plan is evaluated up front."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from sidecar._proto.jit.v1 import admin_pb2 as admin_pb
from sidecar._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from sidecar.client import SidecarRpcError, socket_target
from sidecar.console.auth import User
from sidecar.console.views import live_page
from tests.grant_streams import RawStream
from tests.harness import OpaServer, SidecarProcess, clean_env

SUPPORT = "spiffe://jit.local/agent/support"
TICKET = pb.Intent(action="tickets.read", resource="tickets://t-1001")
CUSTOMER = pb.Intent(action="customers.read", resource="customers://c-42")
EMAIL = pb.Intent(
    action="email.send",
    resource="email://customer/c-42",
    justification="reply to the customer about ticket t-1001",
)
TRIFECTA = (
    "flow_trifecta: the task holds private_data and untrusted_input, "
    "so email.send (external_egress) needs approval"
)


@pytest.fixture
def support(tmp_path: Path, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar whose every local caller is the support agent of rego/jit/data.json."""
    process = SidecarProcess(tmp_path / "sidecar", opa.url, "--dev-subject", SUPPORT).start()
    yield process
    if process.proc is not None:
        process.stop(timeout=15)


def _stub(sidecar: SidecarProcess) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(socket_target(sidecar.socket))
    return channel, pb_grpc.AccessServiceStub(channel)


def _ask(stub: Any, task_id: str, intent: pb.Intent) -> Any:
    return stub.RequestGrant(pb.RequestGrantRequest(task_id=task_id, intent=intent), timeout=10)


PROBE = pb.Intent(action="payments.refund", resource="payments://orders/1")
"""What the support agent is always denied: each ask is one denial of its task."""
ESCALATED_READ = pb.Intent(action="docs.read", resource="docs://handbook/x", justification="x" * 24)
"""A standing read, which 5 denials raise to approval."""


def _probe(stub: Any, task_id: str, times: int = 5) -> None:
    """`times` denials of the task (each asserted)."""
    for _ in range(times):
        assert _ask(stub, task_id, PROBE).decision == pb.DECISION_DENIED


def test_ticket_then_customer_then_email_needs_approval(support: SidecarProcess) -> None:
    """A support agent that read a ticket (untrusted_input) and a customer record
    (private_data) is PENDING_APPROVAL for email.send, with the flow reason; the audit log
    names the labels the task held and the rule that escalated it."""
    channel, stub = _stub(support)
    with channel:
        task = stub.BeginTask(pb.BeginTaskRequest(goal="answer ticket t-1001"), timeout=10).task
        assert _ask(stub, task.task_id, TICKET).decision == pb.DECISION_GRANTED
        assert _ask(stub, task.task_id, CUSTOMER).decision == pb.DECISION_GRANTED
        answer = _ask(stub, task.task_id, EMAIL)
        listed = stub.ListGrants(pb.ListGrantsRequest(task_id=task.task_id), timeout=10)
        heartbeat = stub.Heartbeat(pb.HeartbeatRequest(task_id=task.task_id), timeout=10)
    assert answer.decision == pb.DECISION_PENDING_APPROVAL
    assert answer.approval_id
    assert TRIFECTA in answer.reasons
    assert list(heartbeat.task.flow_labels) == ["private_data", "untrusted_input"]
    assert [list(g.flow_labels) for g in listed.grants] == [["untrusted_input"], ["private_data"]]
    [flagged] = support.events("flow_flagged")
    assert flagged["task_id"] == task.task_id
    assert flagged["task_flow_labels"] == ["private_data", "untrusted_input"]
    assert flagged["intent_flow_labels"] == ["external_egress"]
    assert flagged["rules"] == ["flow_trifecta"]
    assert flagged["plan_deviation"] is False
    [pending] = support.events("grant_pending")
    assert TRIFECTA in pending["reasons"]
    assert [g["flow_labels"] for g in support.events("grant_issued")] == [
        ["untrusted_input"],
        ["private_data"],
    ]


def _stream_intent(intent: pb.Intent) -> Any:
    return pb.GrantStreamIntent(intent=intent)


def test_the_trifecta_within_one_grant_stream_message(support: SidecarProcess) -> None:
    """One GrantStream message reading a ticket and a customer record and sending email
    (decided in one OPA evaluation) answers the email PENDING_APPROVAL with the flow reason,
    exactly as three RequestGrants would; the flow_flagged record is written with the
    message's grants, and the task then holds both labels."""
    channel, stub = _stub(support)
    with channel:
        task = stub.BeginTask(pb.BeginTaskRequest(goal="answer ticket t-1001"), timeout=10).task
    stream = RawStream(support)
    try:
        stream.send(
            task_id=task.task_id,
            intents=[_stream_intent(TICKET), _stream_intent(CUSTOMER), _stream_intent(EMAIL)],
        )
        answer = stream.read()
        stream.send(task_id=task.task_id)  # a heartbeat: the answer carries the task
        heartbeat = stream.read()
    finally:
        stream.close()
    decisions = [r.response.decision for r in answer.results]
    assert decisions == [pb.DECISION_GRANTED, pb.DECISION_GRANTED, pb.DECISION_PENDING_APPROVAL]
    assert TRIFECTA in answer.results[2].response.reasons
    assert list(heartbeat.task.flow_labels) == ["private_data", "untrusted_input"]
    [flagged] = support.events("flow_flagged")
    assert flagged["rules"] == ["flow_trifecta"]
    assert flagged["task_flow_labels"] == ["private_data", "untrusted_input"]


def test_a_cached_read_earlier_in_a_message_still_counts(support: SidecarProcess) -> None:
    """A ticket read the decision cache answers (a standing read cached by an earlier task)
    does not let the email of the same message skip the trifecta: the intents after it go to
    the policy with the read in their history."""
    channel, stub = _stub(support)
    with channel:
        warm = stub.BeginTask(pb.BeginTaskRequest(goal="warm the cache"), timeout=10).task
        assert _ask(stub, warm.task_id, TICKET).decision == pb.DECISION_GRANTED
        task = stub.BeginTask(pb.BeginTaskRequest(goal="answer ticket t-1001"), timeout=10).task
    hits = support.metric("jit_policy_cache_total", result="hit")
    stream = RawStream(support)
    try:
        stream.send(
            task_id=task.task_id,
            intents=[_stream_intent(TICKET), _stream_intent(CUSTOMER), _stream_intent(EMAIL)],
        )
        answer = stream.read()
    finally:
        stream.close()
    decisions = [r.response.decision for r in answer.results]
    assert support.metric("jit_policy_cache_total", result="hit") == hits + 1
    assert decisions == [pb.DECISION_GRANTED, pb.DECISION_GRANTED, pb.DECISION_PENDING_APPROVAL]
    assert TRIFECTA in answer.results[2].response.reasons


def test_without_the_ticket_read_email_is_jit(support: SidecarProcess) -> None:
    """The same agent without the ticket read gets a JIT grant for email.send, and no flow
    rule is audited."""
    channel, stub = _stub(support)
    with channel:
        task = stub.BeginTask(pb.BeginTaskRequest(goal="write to customer"), timeout=10).task
        assert _ask(stub, task.task_id, CUSTOMER).decision == pb.DECISION_GRANTED
        answer = _ask(stub, task.task_id, EMAIL)
    assert answer.decision == pb.DECISION_GRANTED
    assert answer.grant.tier == pb.TIER_JIT
    assert list(answer.grant.flow_labels) == ["external_egress"]
    assert answer.reasons == ["tier_jit: email.send (class write): JIT grant of at most 120 s"]
    assert support.events("flow_flagged") == []


def test_the_console_shows_the_flow_labels_of_a_task(support: SidecarProcess) -> None:
    """The console's live page shows the flow labels a task holds (from the admin socket's
    ListTasks), and none for a task that holds none."""
    channel, stub = _stub(support)
    with channel:
        task = stub.BeginTask(pb.BeginTaskRequest(goal="answer ticket t-1001"), timeout=10).task
        _ask(stub, task.task_id, TICKET)
        _ask(stub, task.task_id, CUSTOMER)
        quiet = stub.BeginTask(pb.BeginTaskRequest(goal="nothing yet"), timeout=10).task
    with grpc.insecure_channel(socket_target(support.admin_socket)) as channel:
        admin = admin_pb_grpc.AdminServiceStub(channel)
        views = admin.ListTasks(admin_pb.ListTasksRequest(subject=SUPPORT), timeout=10).tasks
    by_id = {v.task.task_id: v for v in views}
    viewer = User("viewer@example.com", frozenset({"viewer"}), "dev")
    page = live_page([("local", by_id[task.task_id])], [], [], viewer, many=False)
    empty = live_page([("local", by_id[quiet.task_id])], [], [], viewer, many=False)
    assert list(by_id[task.task_id].task.flow_labels) == ["private_data", "untrusted_input"]
    assert "Flow labels" in page
    assert "<code>private_data</code>, <code>untrusted_input</code>" in page
    assert "Flow labels" not in empty


def test_history_survives_kill_9_and_restart(support: SidecarProcess) -> None:
    """After kill -9 and a restart, the task still holds its labels (from the SQLite store),
    so email.send is still PENDING_APPROVAL with the flow reason; an approval asked for
    before a second kill -9 yields, once approved, a grant with the intent's labels."""
    channel, stub = _stub(support)
    with channel:
        task = stub.BeginTask(pb.BeginTaskRequest(goal="answer ticket t-1001"), timeout=10).task
        ticket = _ask(stub, task.task_id, TICKET)
        stub.RevokeGrant(pb.RevokeGrantRequest(grant_id=ticket.grant.grant_id), timeout=10)
        assert _ask(stub, task.task_id, CUSTOMER).decision == pb.DECISION_GRANTED
    support.kill()
    support.start()
    channel, stub = _stub(support)
    with channel:
        heartbeat = stub.Heartbeat(pb.HeartbeatRequest(task_id=task.task_id), timeout=10)
        answer = _ask(stub, task.task_id, EMAIL)
    support.kill()
    support.start()
    support.admin().decide_approval(answer.approval_id, approve=True, reason="ok", approver="x")
    channel, stub = _stub(support)
    with channel:
        approved = _ask(stub, task.task_id, EMAIL)
        after = stub.Heartbeat(pb.HeartbeatRequest(task_id=task.task_id), timeout=10)
    assert list(heartbeat.task.flow_labels) == ["private_data", "untrusted_input"]
    assert answer.decision == pb.DECISION_PENDING_APPROVAL
    assert TRIFECTA in answer.reasons
    assert approved.decision == pb.DECISION_GRANTED
    assert list(approved.grant.flow_labels) == ["external_egress"]
    assert list(after.task.flow_labels) == ["external_egress", "private_data", "untrusted_input"]
    conn = sqlite3.connect(support.state)
    try:
        rows = conn.execute(
            "SELECT action, flow_class, flow_labels, state FROM grants "
            "JOIN grant_flows USING (grant_id) WHERE task_id = ? ORDER BY issued_at",
            (task.task_id,),
        ).fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    finally:
        conn.close()
    assert rows == [
        ("tickets.read", "read", "untrusted_input", "revoked"),
        ("customers.read", "read", "private_data", "active"),
        ("email.send", "write", "external_egress", "active"),
    ]
    assert version == ("4",)


def test_plan_pre_evaluation_lists_the_steps_needing_approval(support: SidecarProcess) -> None:
    """BeginTask with a plan (ticket, customer, email) answers that the plan is allowed and
    that step 2 needs approval; EvaluatePlan with request_approvals parks that approval up
    front, and once approved the email step is granted without waiting; the plan is in the
    task_begun record."""
    channel, stub = _stub(support)
    with channel:
        begun = stub.BeginTask(
            pb.BeginTaskRequest(goal="answer ticket t-1001", plan=[TICKET, CUSTOMER, EMAIL]),
            timeout=10,
        )
        task_id = begun.task.task_id
        asked = stub.EvaluatePlan(
            pb.EvaluatePlanRequest(task_id=task_id, request_approvals=True), timeout=10
        ).plan
        approval_id = asked.steps[2].approval_id
        support.admin().decide_approval(approval_id, approve=True, reason="ok", approver="lead")
        steps = [_ask(stub, task_id, intent) for intent in (TICKET, CUSTOMER, EMAIL)]
    plan = begun.plan
    assert plan.allowed is True
    assert list(plan.approval_steps) == [2]
    assert [s.decision for s in plan.steps] == [
        pb.DECISION_GRANTED,
        pb.DECISION_GRANTED,
        pb.DECISION_PENDING_APPROVAL,
    ]
    assert [s.tier for s in plan.steps] == [pb.TIER_STANDING, pb.TIER_STANDING, pb.TIER_JIT]
    assert TRIFECTA in plan.steps[2].reasons
    assert approval_id.startswith("a-")
    assert [s.approval_id for s in asked.steps[:2]] == ["", ""]
    assert [s.decision for s in steps] == [pb.DECISION_GRANTED] * 3
    assert steps[2].grant.tier == pb.TIER_JIT
    [begun_record] = support.events("task_begun")
    assert [(s["action"], s["resource"]) for s in begun_record["plan"]] == [
        ("tickets.read", "tickets://t-1001"),
        ("customers.read", "customers://c-42"),
        ("email.send", "email://customer/c-42"),
    ]
    assert support.events("grant_issued")[2]["approval_id"] == approval_id


def test_an_intent_outside_the_plan_is_escalated_and_audited(support: SidecarProcess) -> None:
    """With a declared plan, a standing read outside it is raised to JIT (denied without a
    justification, granted with one), and each deviation is a flow_flagged record."""
    channel, stub = _stub(support)
    with channel:
        task_id = stub.BeginTask(
            pb.BeginTaskRequest(goal="answer ticket t-1001", plan=[TICKET]), timeout=10
        ).task.task_id
        planned = _ask(stub, task_id, TICKET)
        bare = _ask(stub, task_id, pb.Intent(action="docs.read", resource="docs://handbook/x"))
        justified = _ask(
            stub,
            task_id,
            pb.Intent(
                action="docs.read", resource="docs://handbook/x", justification="refund policy"
            ),
        )
    assert planned.grant.tier == pb.TIER_STANDING
    assert bare.decision == pb.DECISION_DENIED
    assert bare.reasons == [
        "justification_required: JIT grants need a justification of at least 10 characters"
    ]
    assert justified.decision == pb.DECISION_GRANTED
    assert justified.grant.tier == pb.TIER_JIT
    assert any(r.startswith("plan_deviation: docs.read") for r in justified.reasons)
    flagged = support.events("flow_flagged")
    assert [(f["rules"], f["plan_deviation"]) for f in flagged] == [
        (["plan_deviation"], True),
        (["plan_deviation"], True),
    ]


def test_a_probing_agent_is_escalated_then_frozen(support: SidecarProcess) -> None:
    """Denials accumulate on the task: after 5 a standing read needs approval, after 10
    every request is denied flow_frozen."""
    channel, stub = _stub(support)
    with channel:
        task_id = stub.BeginTask(pb.BeginTaskRequest(goal="probe"), timeout=10).task.task_id
        _probe(stub, task_id)
        escalated = _ask(stub, task_id, ESCALATED_READ)
        _probe(stub, task_id)
        # another intent: the escalated one is parked, and an open approval answers for itself
        frozen = _ask(stub, task_id, pb.Intent(action="docs.read", resource="docs://handbook/y"))
    assert escalated.decision == pb.DECISION_PENDING_APPROVAL
    assert any(r.startswith("flow_probing: the task was denied 5 times") for r in escalated.reasons)
    assert frozen.decision == pb.DECISION_DENIED
    assert frozen.reasons == [
        "flow_frozen: the task was denied 10 times in the last 600 s and is frozen: "
        "end it and start another"
    ]


def test_a_plan_with_a_bad_step_is_refused(support: SidecarProcess) -> None:
    """A plan step with a non-canonical resource is INVALID_ARGUMENT invalid_resource and no
    task is created; EvaluatePlan on a task without a plan is invalid_argument."""
    channel, stub = _stub(support)
    with channel:
        with pytest.raises(grpc.RpcError) as bad:
            stub.BeginTask(
                pb.BeginTaskRequest(
                    goal="g", plan=[pb.Intent(action="tickets.read", resource="TICKETS://x")]
                ),
                timeout=10,
            )
        task_id = stub.BeginTask(pb.BeginTaskRequest(goal="g"), timeout=10).task.task_id
        with pytest.raises(grpc.RpcError) as no_plan:
            stub.EvaluatePlan(pb.EvaluatePlanRequest(task_id=task_id), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid_resource" in str(bad.value.trailing_metadata())
    assert no_plan.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r["task_id"] for r in support.events("task_begun")] == [task_id]
    assert [r["rpc"] for r in support.events("request_rejected")] == ["BeginTask", "EvaluatePlan"]


def test_policy_explain_shows_the_flow(opa: OpaServer) -> None:
    """`jit-sidecar policy explain` with a history shows the labels the task held and the
    flow rule that escalated the intent, and exits 0 (allowed after approval)."""
    result = subprocess.run(
        [
            sys.executable, "-m", "sidecar.cli", "policy", "explain",
            "email.send", "email://customer/c-42",
            "--subject", SUPPORT, "--justification", "reply to the customer",
            "--history", "tickets.read=tickets://t-1001",
            "--grant", "customers.read=customers://c-42",
            "--opa-url", opa.url,
        ],
        capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"  - {TRIFECTA}" in result.stdout
    assert "  flow: the task held private_data, untrusted_input" in result.stdout
    assert "  flow: rules fired: flow_trifecta" in result.stdout


def test_the_sdk_declares_and_evaluates_a_plan(support: SidecarProcess) -> None:
    """AccessClient.begin_task(plan=...) declares the plan and evaluate_plan lists the step
    needing approval; a step that is not a mapping of strings is refused before sending."""
    steps = [
        {"action": "tickets.read", "resource": "tickets://t-1001"},
        {"action": "customers.read", "resource": "customers://c-42"},
        {"action": "email.send", "resource": "email://customer/c-42", "justification": "x" * 24},
    ]
    with support.client() as client:
        task = client.begin_task("answer ticket t-1001", plan=steps)
        plan = client.evaluate_plan(task.task_id)
        with pytest.raises(SidecarRpcError) as bad:
            client.begin_task("g", plan=[{"action": 7, "resource": "tickets://t-1"}])
    assert plan.allowed is True
    assert list(plan.approval_steps) == [2]
    assert [s.intent.action for s in plan.steps] == ["tickets.read", "customers.read", "email.send"]
    assert bad.value.reason == "invalid_intent"
    assert len(support.events("task_begun")) == 1


def test_denials_earlier_in_a_message_count_for_the_probing_rule(support: SidecarProcess) -> None:
    """A task denied 4 times sends one GrantStream message: a fifth probe, then a standing
    read. The read is escalated to approval (flow_probing) exactly as after five
    RequestGrants: a message of many probes gets no more answers than the freeze allows."""
    refund = pb.Intent(action="payments.refund", resource="payments://orders/1")
    read = pb.Intent(action="docs.read", resource="docs://handbook/x", justification="x" * 24)
    # another intent: the escalated one is parked, and an open approval answers for itself
    other = pb.Intent(action="docs.read", resource="docs://handbook/y")
    channel, stub = _stub(support)
    with channel:
        task_id = stub.BeginTask(pb.BeginTaskRequest(goal="probe"), timeout=10).task.task_id
        for _ in range(4):
            assert _ask(stub, task_id, refund).decision == pb.DECISION_DENIED
    stream = RawStream(support)
    try:
        stream.send(task_id=task_id, intents=[_stream_intent(refund), _stream_intent(read)])
        answer = stream.read()
        stream.send(task_id=task_id, intents=[_stream_intent(refund)] * 6 + [_stream_intent(other)])
        frozen = stream.read()
    finally:
        stream.close()
    decisions = [r.response.decision for r in answer.results]
    assert decisions == [pb.DECISION_DENIED, pb.DECISION_PENDING_APPROVAL]
    reasons = answer.results[1].response.reasons
    assert any(r.startswith("flow_probing: the task was denied 5 times") for r in reasons)
    assert [r.response.decision for r in frozen.results] == [pb.DECISION_DENIED] * 7
    assert frozen.results[6].response.reasons == [
        "flow_frozen: the task was denied 11 times in the last 600 s and is frozen: "
        "end it and start another"
    ]


def test_a_frozen_task_cannot_collect_an_earlier_approval(support: SidecarProcess) -> None:
    """A read escalated after 5 denials is approved; the task then probes on and is frozen.
    Collecting the approval is denied flow_frozen, as every other request: no grant."""
    channel, stub = _stub(support)
    with channel:
        task_id = stub.BeginTask(pb.BeginTaskRequest(goal="probe"), timeout=10).task.task_id
        _probe(stub, task_id)
        escalated = _ask(stub, task_id, ESCALATED_READ)
        approved = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "approvals", "approve", escalated.approval_id,
             "--approver", "alice", "--admin-socket", str(support.admin_socket)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        _probe(stub, task_id)
        collected = _ask(stub, task_id, ESCALATED_READ)
    assert approved.returncode == 0, approved.stderr
    assert collected.decision == pb.DECISION_DENIED
    assert collected.reasons == [
        "flow_frozen: the task was denied 10 times in the last 600 s and is frozen: "
        "end it and start another"
    ]
    assert support.events("grant_issued") == []
