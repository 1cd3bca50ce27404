"""Human approval and the standing-decision cache, against the real OPA binary (with a small
test policy), a real sidecar process, the real CLI and a local webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar._proto.jit.v1 import access_pb2_grpc as pb_grpc
from sidecar._proto.jit.v1 import admin_pb2 as admin_pb
from sidecar._proto.jit.v1 import admin_pb2_grpc as admin_pb_grpc
from sidecar.client import SidecarRpcError, socket_target, translate_error
from sidecar.policy import OpaClient
from tests.harness import OpaServer, SidecarProcess, running, wait_for

POLICY = """
package jit

default decision := {"allow": false, "reasons": ["default_deny: not in the test catalog"]}

decision := {
	"allow": true,
	"tier": "jit",
	"approval_required": input.intent.context.amount > 1000,
	"ttl_seconds": 60,
	"audience": "payments",
	"scope": [input.intent.action],
	"reasons": ["payment: refunds above 1000 need a human"],
	"cache_seconds": 0,
} if input.intent.action == "payments.refund"

decision := {
	"allow": true,
	"tier": "standing",
	"approval_required": false,
	"ttl_seconds": 60,
	"audience": "docs",
	"scope": [input.intent.action],
	"reasons": ["standing_read: version 1"],
	"cache_seconds": 300,
} if input.intent.action == "docs.read"
"""

SECRET = b"webhook-secret-0123456789abcdef"


class Webhook:
    """Receives approval notifications like an approver's chat bot would."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def policy_opa(tmp_path: Path) -> Iterator[OpaServer]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "test.rego").write_text(POLICY)
    server = OpaServer(tmp_path, policy_dirs=[policies]).start()
    yield server
    server.stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def cli(sidecar: SidecarProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args, "--admin-socket", str(sidecar.admin_socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def await_approval(
    sidecar: SidecarProcess, approval_id: str, timeout: float
) -> pb.RequestGrantResponse:
    with grpc.insecure_channel(socket_target(sidecar.socket)) as channel:
        stub = pb_grpc.AccessServiceStub(channel)
        try:
            return stub.AwaitApproval(
                pb.AwaitApprovalRequest(approval_id=approval_id), timeout=timeout
            ).result
        except grpc.RpcError as err:
            raise translate_error(err) from None


def refund(
    c: Any, task_id: str, amount: int, justification: str = "ticket 991 duplicate"
) -> pb.RequestGrantResponse:
    return c.request_grant_raw(
        task_id,
        "payments.refund",
        "payments://orders/42",
        justification=justification,
        context={"amount": amount},
    )


def test_full_approval_flow_with_webhook(
    tmp_path: Path, policy_opa: OpaServer, webhook: Webhook
) -> None:
    """A refund above the limit is parked (nothing issued), the webhook is signed, the
    approver approves with the CLI, the waiting agent receives one JIT grant, and every
    step is in the audit log. Approving twice or collecting twice is refused."""
    secret_file = tmp_path / "hook.key"
    secret_file.write_bytes(SECRET)
    process = SidecarProcess(
        tmp_path / "s",
        policy_opa.url,
        "--approval-webhook-url",
        webhook.url,
        "--approval-webhook-secret-file",
        str(secret_file),
    )
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("refunds", labels={"purpose": "refunds"})
        small = refund(c, task.task_id, 50)
        pending = refund(c, task.task_id, 5000)
        assert pending.decision == pb.DECISION_PENDING_APPROVAL
        issued_before = len(sidecar.events("grant_issued"))
        waiter: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: waiter.update(result=await_approval(sidecar, pending.approval_id, 20))
        )
        thread.start()
        wait_for(lambda: webhook.received, 10, what="the webhook")
        listed = cli(sidecar, "approvals", "list")
        approved = cli(
            sidecar,
            "approvals",
            "approve",
            pending.approval_id,
            "--reason",
            "customer verified",
            "--approver",
            "alice",
        )
        thread.join(20)
        twice = cli(sidecar, "approvals", "approve", pending.approval_id)
        with pytest.raises(SidecarRpcError) as collected_twice:
            await_approval(sidecar, pending.approval_id, 5)
        with pytest.raises(SidecarRpcError) as unknown:
            await_approval(sidecar, "a-doesnotexist", 5)
        approve_unknown = cli(sidecar, "approvals", "approve", "a-doesnotexist")
        events = [r for r in sidecar.audit_records() if r["event"] != "key_rotated"]
    headers, body = webhook.received[0]
    expected = (
        "sha256="
        + hmac.new(
            SECRET, headers["X-JIT-Timestamp"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
    )
    notice = json.loads(body)
    result = waiter["result"]
    assert small.decision == pb.DECISION_GRANTED
    assert issued_before == 1  # the small refund only
    assert headers["X-JIT-Signature"] == expected
    assert notice["approval_id"] == pending.approval_id
    assert notice["intent"]["context"] == {"amount": 5000}
    assert pending.approval_id in listed.stdout
    assert "refunds above 1000" in listed.stdout
    assert approved.returncode == 0, approved.stderr
    assert result.decision == pb.DECISION_GRANTED
    # the approved grant names its intent as RequestGrant's and ListGrants' answers do
    assert result.grant.intent.justification == "ticket 991 duplicate"
    assert result.grant.tier == pb.TIER_JIT
    assert result.grant.token
    assert twice.returncode == 1
    assert "approval_inactive" in twice.stderr
    assert collected_twice.value.reason == "approval_inactive"
    assert unknown.value.reason == "approval_not_found"
    assert approve_unknown.returncode == 1
    assert "NOT_FOUND approval_not_found" in approve_unknown.stderr
    assert [e["event"] for e in events] == [
        "task_begun",
        "grant_issued",
        "grant_pending",
        "approval_decided",
        "grant_issued",
    ]
    assert events[3]["approver"] == "alice"
    assert events[4]["approval_id"] == pending.approval_id


def test_modified_intent_after_approval_is_denied(tmp_path: Path, policy_opa: OpaServer) -> None:
    """An approval binds the exact intent: changing the justification or the amount after
    approval is denied (approval_intent_mismatch); the identical intent collects the grant."""
    with running(SidecarProcess(tmp_path / "s", policy_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("refunds")
        pending = refund(c, task.task_id, 5000)
        with sidecar.admin() as admin:
            admin.decide_approval(pending.approval_id, approve=True, reason="ok")
        changed_text = refund(c, task.task_id, 5000, justification="something else entirely")
        changed_amount = refund(c, task.task_id, 9000)
        same = refund(c, task.task_id, 5000)
    assert changed_text.decision == pb.DECISION_DENIED
    assert changed_text.reasons[0].startswith("approval_intent_mismatch")
    assert changed_amount.decision == pb.DECISION_DENIED
    assert same.decision == pb.DECISION_GRANTED
    assert len(sidecar.events("grant_issued")) == 1


def test_denied_and_expired_approvals(tmp_path: Path, policy_opa: OpaServer) -> None:
    """A denial reaches the waiting agent with the approver's reason; an approval nobody
    decides in time expires, cannot be approved afterwards, and issues nothing; a wait that
    reaches its deadline answers PENDING_APPROVAL."""
    process = SidecarProcess(
        tmp_path / "s", policy_opa.url, "--approval-ttl", "2", "--sweep-interval", "0.2"
    )
    with running(process) as sidecar, sidecar.client() as c, sidecar.admin() as admin:
        task = c.begin_task("refunds")
        denied = refund(c, task.task_id, 5000)
        admin.decide_approval(
            denied.approval_id, approve=False, reason="not our customer", approver="bob"
        )
        denied_result = await_approval(sidecar, denied.approval_id, 5)
        lapsing = refund(c, task.task_id, 7000)
        still_pending = await_approval(sidecar, lapsing.approval_id, 1.0)
        wait_for(lambda: sidecar.events("approval_expired"), 6, what="approval expiry")
        with pytest.raises(SidecarRpcError) as late:
            admin.decide_approval(lapsing.approval_id, approve=True)
        expired_result = await_approval(sidecar, lapsing.approval_id, 5)
    assert denied_result.decision == pb.DECISION_DENIED
    assert denied_result.reasons == ["approval_denied: bob: not our customer"]
    assert still_pending.decision == pb.DECISION_PENDING_APPROVAL
    assert late.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert late.value.reason == "approval_inactive"
    assert expired_result.decision == pb.DECISION_DENIED
    assert expired_result.reasons[0].startswith("approval_expired")
    assert sidecar.events("grant_issued") == []


def test_agent_socket_does_not_serve_the_admin_api(sidecar: SidecarProcess) -> None:
    """Approving through the agent socket is impossible: AdminService is not served there."""
    with grpc.insecure_channel(socket_target(sidecar.socket)) as channel:
        stub = admin_pb_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.DecideApproval(
                admin_pb.DecideApprovalRequest(approval_id="a-x", approve=True), timeout=5
            )
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_standing_cache_hit_then_dropped_on_policy_change(
    tmp_path: Path, policy_opa: OpaServer
) -> None:
    """A standing decision is served from cache (no OPA call) until OPA's policy changes;
    the sidecar notices the new revision and asks OPA again."""
    with running(SidecarProcess(tmp_path / "s", policy_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("reads")
        first = c.request_grant_raw(task.task_id, "docs.read", "docs://a")
        second = c.request_grant_raw(task.task_id, "docs.read", "docs://a")
        hits = sidecar.metric("jit_policy_cache_total", result="hit")
        (policy_id,) = [
            p["id"]
            for p in requests.get(policy_opa.url + "/v1/policies", timeout=5).json()["result"]
        ]
        policy_opa.put_policy(policy_id, POLICY.replace("version 1", "version 2"))
        started = time.monotonic()
        wait_for(
            lambda: (
                c.request_grant_raw(task.task_id, "docs.read", "docs://a").reasons
                == ["standing_read: version 2"]
            ),
            15,
            interval=0.25,
            what="the new policy",
        )
        noticed_after = time.monotonic() - started
        issued = sidecar.events("grant_issued")
    assert first.reasons == second.reasons == ["standing_read: version 1"]
    assert hits == 1
    assert issued[1].get("cached") is True
    assert first.grant.token != second.grant.token
    print(f"policy change noticed after {noticed_after:.1f} s")


def test_data_change_also_drops_the_cache(tmp_path: Path, policy_opa: OpaServer) -> None:
    """Changing a data document of the decision's package (e.g. the catalog) counts as a new
    policy revision too."""
    with running(SidecarProcess(tmp_path / "s", policy_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("reads")
        c.request_grant_raw(task.task_id, "docs.read", "docs://a")
        policy_opa.put_data("jit/catalog_version", 2)
        wait_for(
            lambda: any(
                "revision changed" in r.get("msg", "") for r in sidecar.log_records()[-20:]
            ),
            15,
            interval=0.25,
            what="the cache to be dropped",
        )
        c.request_grant_raw(task.task_id, "docs.read", "docs://a")
        misses = sidecar.metric("jit_policy_cache_total", result="miss")
    assert misses == 2, [r["msg"] for r in sidecar.log_records()]


def test_revision_ignores_the_order_opa_lists_modules_in(opa: OpaServer) -> None:
    """OPA lists the policy modules of rego/ in a random order; the revision fingerprint is the
    same every time, so an unchanged multi-module policy never drops the decision cache."""

    async def revisions() -> set[str]:
        client = OpaClient(opa.url, "/v1/data/jit/decision", 2.0)
        try:
            return {await client.revision() for _ in range(20)}
        finally:
            await client.aclose()

    modules = requests.get(opa.url + "/v1/policies", timeout=5).json()["result"]
    seen = asyncio.run(revisions())
    assert len(modules) > 2
    assert len(seen) == 1
    assert "" not in seen


def test_policy_explain_cli(policy_opa: OpaServer) -> None:
    """`jit-sidecar policy explain` shows the running OPA's decision and its reasons."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar.cli",
            "policy",
            "explain",
            "payments.refund",
            "payments://orders/42",
            "--context",
            '{"amount": 5000}',
            "--opa-url",
            policy_opa.url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ALLOW after human approval")
    assert "- payment: refunds above 1000 need a human" in result.stdout


def test_approvals_end_with_their_task(tmp_path: Path, policy_opa: OpaServer) -> None:
    """Completing a task closes its pending approvals: they cannot be approved afterwards,
    a waiting agent hears `approval_expired`, and nothing is issued."""
    with (
        running(SidecarProcess(tmp_path / "s", policy_opa.url)) as sidecar,
        sidecar.client() as c,
        sidecar.admin() as admin,
    ):
        task = c.begin_task("refunds")
        pending = refund(c, task.task_id, 5000)
        c.complete_task(task.task_id)
        listed = admin.list_approvals()
        with pytest.raises(SidecarRpcError) as late:
            admin.decide_approval(pending.approval_id, approve=True)
        result = await_approval(sidecar, pending.approval_id, 2)
        (closed,) = sidecar.events("approval_expired")
    assert listed == []
    assert late.value.reason == "approval_inactive"
    assert result.decision == pb.DECISION_DENIED
    assert result.reasons[0].startswith("approval_expired")
    assert closed["reason"] == "task_ended"
    assert sidecar.events("grant_issued") == []
