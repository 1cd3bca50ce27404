"""The agent SDK (sidecar.client) against a real OPA and a real sidecar process over its
Unix socket: task blocks, heartbeats, crash detection of a SIGKILLed agent, approval wait,
typed errors (the SDK's own refusals and the sidecar's), grant state, @requires tools, sync
and asyncio flavours."""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
import requests

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import (
    AccessClient,
    AccessDenied,
    ApprovalPending,
    AsyncAccessClient,
    Grant,
    InvalidRequest,
    NoActiveTask,
    SidecarRpcError,
    SidecarUnavailable,
    TaskEnded,
    TaskHandle,
    requires,
)
from tests.harness import ROOT, OpaServer, SidecarProcess, wait_for

HEARTBEAT = 1  # seconds; crash detection after 3 missed intervals = 3 s


@pytest.fixture
def fast_sidecar(tmp_path: Path, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar that wants a heartbeat every second (so 3 missed = crashed after 3 s)."""
    process = SidecarProcess(
        tmp_path / "fast", opa.url, "--heartbeat-interval", str(HEARTBEAT)
    ).start()
    yield process
    if process.proc is not None:
        process.stop(timeout=15)


def _introspect_http(sidecar: SidecarProcess, token: str) -> dict[str, object]:
    response = requests.post(
        sidecar.http + "/introspect", data={"token": token}, headers=sidecar.http_auth, timeout=5
    )
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


def _when(record: dict[str, object]) -> float:
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------- completion
def test_task_block_completes_succeeded_and_revokes(sidecar: SidecarProcess) -> None:
    """Leaving the block completes the task SUCCEEDED and revokes its grants (reason completed)."""
    with sidecar.client() as jit:
        with jit.task(goal="triage T-1001", labels={"purpose": "support"}) as task:
            read = task.grant("docs.read", "docs://handbook/intro")
            write = task.grant(
                "tickets.update", "tickets://t-1001", justification="customer asked to close it"
            )
            live = task.grants()
        after_read = jit.introspect(read.token)
        after_write = jit.introspect(write.token)
    assert (read.tier, write.tier) == ("standing", "jit")
    assert (write.action, write.resource, write.audience) == (
        "tickets.update",
        "tickets://t-1001",
        "tickets",
    )
    assert write.scope == ("tickets.update",)
    assert write.raw.grant_id == write.grant_id
    assert {g.grant_id for g in live} == {read.grant_id, write.grant_id}
    assert task.completion is not None
    assert task.completion.task.state == pb.TASK_STATE_SUCCEEDED
    assert task.completion.revoked_grants == 2
    assert not after_read.active
    assert after_write.revocation_reason == "completed"
    (done,) = sidecar.events("task_completed")
    assert done["state"] == "succeeded"
    assert [r["reason"] for r in sidecar.events("grant_revoked")] == ["completed", "completed"]


def test_exception_completes_errored_revokes_and_reraises(sidecar: SidecarProcess) -> None:
    """An exception in the block completes the task ERRORED, revokes, and propagates as is."""
    opened: list[tuple[TaskHandle, Grant]] = []

    def doomed(jit: AccessClient) -> None:
        with jit.task(goal="doomed") as task:
            opened.append(
                (task, task.grant("tickets.update", "tickets://t-7", justification="will fail now"))
            )
            _ = 1 / 0

    with sidecar.client() as jit:
        with pytest.raises(ZeroDivisionError):
            doomed(jit)
        ((task, grant),) = opened
        after = jit.introspect(grant.token)
    assert task.completion is not None
    assert task.completion.task.state == pb.TASK_STATE_ERRORED
    assert after.revocation_reason == "errored"
    (done,) = sidecar.events("task_completed")
    assert done["state"] == "errored"
    assert done["detail"] == "raised ZeroDivisionError"  # the type only, never the message


# ---------------------------------------------------------------------- heartbeats
def test_heartbeats_keep_a_long_task_alive(fast_sidecar: SidecarProcess) -> None:
    """A task open for 5 s (> 3 heartbeat intervals of 1 s) stays active and keeps granting."""
    with fast_sidecar.client() as jit, jit.task(goal="long job") as task:
        first = task.grant("docs.read", "docs://a")
        time.sleep(5 * HEARTBEAT)
        second = task.grant("tickets.update", "tickets://1", justification="still working on it")
        still_active = jit.introspect(first.token).active
    assert task.heartbeat_interval == HEARTBEAT
    assert still_active
    assert second.tier == "jit"
    assert task.completion is not None
    assert task.completion.task.state == pb.TASK_STATE_SUCCEEDED
    assert [r["reason"] for r in fast_sidecar.events("task_completed")] == ["completed"]


def test_without_heartbeats_the_task_crashes_and_grant_raises_task_ended(
    fast_sidecar: SidecarProcess,
) -> None:
    """Control: with heartbeats off (and no GrantStream, which would keep the task alive)
    the task is declared crashed after 3 intervals; the next grant raises TaskEnded and
    leaving the block does not raise."""
    with (
        fast_sidecar.client() as jit,
        jit.task(goal="silent", heartbeats=False, stream=False) as task,
    ):
        grant = task.grant("docs.read", "docs://a")
        wait_for(lambda: not jit.introspect(grant.token).active, 10, what="crash detection")
        with pytest.raises(TaskEnded) as err:
            task.grant("docs.read", "docs://b")
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "task_inactive"
    assert task.completion is None
    (done,) = fast_sidecar.events("task_completed")
    assert (done["state"], done["reason"]) == ("crashed", "agent_lost")


def test_operator_ending_the_task_surfaces_through_heartbeats(
    fast_sidecar: SidecarProcess,
) -> None:
    """An operator revokes the task: the next heartbeat learns it and grant() raises TaskEnded
    without another RequestGrant reaching the sidecar."""
    with fast_sidecar.client() as jit, jit.task(goal="x") as task:
        task.grant("docs.read", "docs://a")
        with fast_sidecar.admin() as admin:
            admin.revoke(task_id=task.task_id, reason="incident 12")
        wait_for(lambda: task.ended is not None, 5, what="a heartbeat to notice")
        with pytest.raises(TaskEnded):
            task.grant("docs.read", "docs://b")
    rejected = fast_sidecar.events("request_rejected")
    assert [r["rpc"] for r in rejected] == ["Heartbeat"]
    assert rejected[0]["reason"] == "task_inactive"


AGENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from sidecar.client import AccessClient
    with AccessClient(sys.argv[1]) as jit, jit.task(goal="doomed agent") as task:
        grant = task.grant("tickets.update", "tickets://t-9", justification="about to be killed")
        print(task.task_id, grant.token, flush=True)
        time.sleep(120)
    """
)


def test_sigkilled_agent_is_revoked_within_three_heartbeat_intervals(
    fast_sidecar: SidecarProcess,
) -> None:
    """SIGKILL the agent process: its grants are revoked (reason agent_lost) no later than 3
    heartbeat intervals after its last heartbeat; introspection then says inactive."""
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, str(fast_sidecar.socket)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert agent.stdout is not None
        task_id, token = agent.stdout.readline().split()
        # Alive past the 3-interval limit: only the agent's heartbeats can explain that.
        time.sleep(3.5 * HEARTBEAT)
        with fast_sidecar.client() as jit:
            alive_before_kill = jit.introspect(token).active
        killed_at = time.time()
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        with fast_sidecar.client() as jit:
            wait_for(lambda: not jit.introspect(token).active, 10, what="the revocation")
            after = jit.introspect(token)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()
    (revoked,) = fast_sidecar.events("grant_revoked")
    (crashed,) = fast_sidecar.events("task_completed")
    assert alive_before_kill
    assert after.revocation_reason == "agent_lost"
    assert _introspect_http(fast_sidecar, token) == {"active": False}
    assert (revoked["reason"], revoked["task_id"]) == ("agent_lost", task_id)
    assert (crashed["state"], crashed["reason"]) == ("crashed", "agent_lost")
    # Server-side timestamps: the revocation is due 3 intervals after the last heartbeat,
    # which was before the kill; 1 s covers the sweeper and the journal commit.
    assert _when(revoked) - killed_at <= 3 * HEARTBEAT + 1.0


# ---------------------------------------------------------------------- approval
APPROVAL_POLICY = """
package jit

default decision := {"allow": false, "reasons": ["default_deny"]}

decision := {
	"allow": true,
	"tier": "jit",
	"approval_required": true,
	"ttl_seconds": 60,
	"audience": "payments",
	"scope": [input.intent.action],
	"reasons": ["approval_required: refunds need a human"],
	"cache_seconds": 0,
} if input.intent.action == "payments.refund"
"""


@pytest.fixture
def approval_sidecar(tmp_path: Path) -> Iterator[SidecarProcess]:
    """A sidecar whose (own, real) OPA requires human approval for payments.refund."""
    policy_dir = tmp_path / "approval-policy"
    policy_dir.mkdir()
    (policy_dir / "decision.rego").write_text(APPROVAL_POLICY)
    work = tmp_path / "approval-opa"
    work.mkdir()
    opa = OpaServer(work, policy_dirs=[policy_dir]).start()
    process = SidecarProcess(tmp_path / "approval", opa.url).start()
    try:
        yield process
    finally:
        if process.proc is not None:
            process.stop(timeout=15)
        opa.stop()


def test_wait_for_approval_times_out_as_approval_pending(
    approval_sidecar: SidecarProcess,
) -> None:
    """A refund needing approval: grant(wait_for_approval=1) waits through AwaitApproval and,
    with nobody approving, raises ApprovalPending with the approval id; no token is issued."""
    with (
        approval_sidecar.client() as jit,
        jit.task(goal="refund 42") as task,
        pytest.raises(ApprovalPending) as err,
    ):
        task.grant(
            "payments.refund",
            "payments://orders/42",
            justification="duplicate charge, ticket 991",
            wait_for_approval=1,
        )
    assert err.value.approval_id
    assert approval_sidecar.events("grant_issued") == []
    assert len(approval_sidecar.events("grant_pending")) == 1


def test_await_approval_of_unknown_id_is_typed(sidecar: SidecarProcess) -> None:
    """AwaitApproval on an id that does not exist: NOT_FOUND approval_not_found."""
    with sidecar.client() as jit, pytest.raises(SidecarRpcError) as err:
        jit.await_approval("no-such-approval", 1)
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    assert err.value.reason == "approval_not_found"


def test_wait_for_approval_returns_the_grant_once_approved(
    approval_sidecar: SidecarProcess,
) -> None:
    """grant(wait_for_approval=…) returns the JIT grant as soon as an operator approves."""
    import threading

    def approve_when_pending() -> None:
        wait_for(lambda: approval_sidecar.events("grant_pending"), 10, what="the request")
        (pending,) = approval_sidecar.events("grant_pending")
        with approval_sidecar.admin() as admin:
            admin.decide_approval(
                pending["approval_id"], approve=True, reason="verified", approver="carol"
            )

    approver = threading.Thread(target=approve_when_pending)
    approver.start()
    with approval_sidecar.client() as jit, jit.task(goal="refund 42") as task:
        grant = task.grant(
            "payments.refund",
            "payments://orders/42",
            justification="duplicate charge, ticket 991",
            wait_for_approval=20,
        )
    approver.join(10)
    (issued,) = approval_sidecar.events("grant_issued")
    assert grant.tier == "jit"
    assert issued["approval_id"] == approval_sidecar.events("grant_pending")[0]["approval_id"]


# ---------------------------------------------------------------------- typed errors
def test_denial_is_typed_with_reasons_and_issues_nothing(sidecar: SidecarProcess) -> None:
    """A cross-domain intent raises AccessDenied with the policy's reasons and decision id;
    nothing is issued and the denial is audited."""
    with sidecar.client() as jit, jit.task(goal="x") as task:
        with pytest.raises(AccessDenied) as err:
            task.grant("payments.refund", "payments://orders/42", justification="ticket 991")
        listed = task.grants(include_inactive=True)
    assert err.value.reasons == ["cross_domain: payments is not among this agent's domains"]
    assert listed == []
    assert sidecar.events("grant_issued") == []
    (denial,) = sidecar.events("grant_denied")
    assert denial["intent"]["action"] == "payments.refund"


def test_bad_input_and_missing_sidecar_are_typed(sidecar: SidecarProcess, tmp_path: Path) -> None:
    """Bad intent: InvalidRequest invalid_intent; no sidecar: SidecarUnavailable (UNAVAILABLE)."""
    with sidecar.client() as jit, jit.task(goal="x") as task, pytest.raises(InvalidRequest) as bad:
        task.grant("", "docs://a")
    with (
        AccessClient(tmp_path / "nobody.sock", timeout=2) as nobody,
        pytest.raises(SidecarUnavailable) as down,
    ):
        nobody.task(goal="x").open()
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.reason == "invalid_intent"
    assert sidecar.grant_rows() == []
    assert down.value.code is grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------- tools
def test_requires_tool_asks_for_its_grant(sidecar: SidecarProcess) -> None:
    """A @requires tool gets a grant for the resource computed from its arguments; a denied
    tool does not run; the injected parameter is hidden from its signature."""
    ran: list[str] = []

    @requires(
        "tickets.update",
        # Resource names have one spelling: the authority is lower case (docs/api.md).
        lambda ticket_id, **_: f"tickets://{ticket_id.lower()}",
        justification=lambda reason, **_: reason,
    )
    def close_ticket(ticket_id: str, reason: str = "routine cleanup", *, grant: Grant) -> Grant:
        ran.append(ticket_id)
        return grant

    @requires("payments.refund", "payments://orders/42", justification="duplicate charge")
    def refund(*, grant: Grant) -> None:
        ran.append("refund")

    with sidecar.client() as jit, jit.task(goal="tools") as task:
        grant = close_ticket("T-5", reason="customer confirmed")
        with pytest.raises(AccessDenied):
            refund()
    assert ran == ["T-5"]
    assert (grant.action, grant.resource, grant.tier) == (
        "tickets.update",
        "tickets://t-5",
        "jit",
    )
    assert grant.task_id == task.task_id
    assert list(inspect.signature(close_ticket).parameters) == ["ticket_id", "reason"]
    (issued,) = sidecar.events("grant_issued")
    assert issued["intent"]["justification"] == "customer confirmed"


# ---------------------------------------------------------------------- asyncio
def test_async_task_completes_and_errors(sidecar: SidecarProcess) -> None:
    """AsyncAccessClient: `async with` completes SUCCEEDED; an exception completes ERRORED and
    propagates; both revoke; an async @requires tool gets its grant."""

    @requires("docs.read", lambda doc_id: f"docs://{doc_id}")
    async def fetch(doc_id: str, grant: Grant) -> Grant:
        return grant

    async def scenario() -> tuple[Grant, Grant, str, str]:
        async with AsyncAccessClient(sidecar.socket) as jit:
            async with jit.task(goal="async ok") as task:
                ok = await task.grant(
                    "tickets.update", "tickets://1", justification="async ticket work"
                )
                via_tool = await fetch("guide")
            failing = jit.task(goal="async boom")

            async def boom() -> None:
                async with failing:
                    await failing.grant("docs.read", "docs://x")
                    raise KeyError("boom")

            with pytest.raises(KeyError):
                await boom()
            ok_after = (await jit.introspect(ok.token)).revocation_reason
            states = (task.completion, failing.completion)
            assert states[0] is not None
            assert states[1] is not None
            return ok, via_tool, ok_after, pb.TaskState.Name(states[1].task.state)

    ok, via_tool, ok_after, failing_state = asyncio.run(scenario())
    assert ok.tier == "jit"
    assert via_tool.resource == "docs://guide"
    assert ok_after == "completed"
    assert failing_state == "TASK_STATE_ERRORED"
    states = [r["state"] for r in sidecar.events("task_completed")]
    assert states == ["succeeded", "errored"]


def test_async_heartbeats_keep_a_long_task_alive(fast_sidecar: SidecarProcess) -> None:
    """The asyncio heartbeat task keeps a 5 s task (> 3 intervals) alive."""

    async def scenario() -> tuple[bool, str]:
        async with AsyncAccessClient(fast_sidecar.socket) as jit:
            async with jit.task(goal="long async job") as task:
                first = await task.grant("docs.read", "docs://a")
                await asyncio.sleep(5 * HEARTBEAT)
                second = await task.grant("docs.read", "docs://b")
                active = (await jit.introspect(first.token)).active
            return active, second.tier

    active, tier = asyncio.run(scenario())
    assert active
    assert tier == "standing"
    assert [r["reason"] for r in fast_sidecar.events("task_completed")] == ["completed"]


def test_sync_tool_inside_async_task_is_refused(sidecar: SidecarProcess) -> None:
    """A synchronous tool cannot block an asyncio task: NoActiveTask, and it does not run."""
    ran: list[bool] = []

    @requires("docs.read", "docs://a")
    def read(*, grant: Grant) -> None:
        ran.append(True)

    async def scenario() -> None:
        async with AsyncAccessClient(sidecar.socket) as jit, jit.task(goal="x"):
            read()

    with pytest.raises(NoActiveTask):
        asyncio.run(scenario())
    assert ran == []
    assert sidecar.events("grant_issued") == []


# ---------------------------------------------------------------------- grant state
def test_grants_listing_tells_active_from_revoked(sidecar: SidecarProcess) -> None:
    """grants(include_inactive=True) gives each grant's state and end reason: the one given
    back is revoked (revoked_by_agent), the other active; after completion all are revoked
    (completed). The default listing shows only active grants."""
    with sidecar.client() as jit:
        with jit.task(goal="state") as task:
            kept = task.grant("docs.read", "docs://a")
            given_back = task.grant(
                "tickets.update", "tickets://t-3", justification="closing a duplicate"
            )
            revoked_now = task.revoke(given_back, reason="done early")
            live = task.grants()
            history = {g.grant_id: g for g in task.grants(include_inactive=True)}
        after = [Grant.from_proto(g) for g in jit.list_grants(task.task_id, True)]
    assert revoked_now
    assert [g.grant_id for g in live] == [kept.grant_id]
    assert (live[0].state, live[0].end_reason, live[0].active) == ("active", "", True)
    assert kept.state == "active"
    assert (history[given_back.grant_id].state, history[given_back.grant_id].end_reason) == (
        "revoked",
        "revoked_by_agent",
    )
    assert not history[given_back.grant_id].active
    assert history[kept.grant_id].state == "active"
    assert {(g.grant_id, g.state, g.end_reason) for g in after} == {
        (kept.grant_id, "revoked", "completed"),
        (given_back.grant_id, "revoked", "revoked_by_agent"),
    }


def test_request_grant_and_list_grants_show_the_same_intent(sidecar: SidecarProcess) -> None:
    """RequestGrant's grant carries the justification, as ListGrants does: the two views of
    one grant agree on the whole intent."""
    with sidecar.client() as jit, jit.task(goal="same intent") as task:
        issued = task.grant(
            "tickets.update", "tickets://t-4", justification="customer asked to close it"
        )
        (listed,) = task.grants()
    assert issued.justification == "customer asked to close it"
    assert issued.raw.intent == listed.raw.intent
    assert (listed.justification, listed.decision_id) == (
        issued.justification,
        issued.decision_id,
    )


# ---------------------------------------------------------------------- ended tasks
def test_grant_on_a_completed_task_raises_task_ended(sidecar: SidecarProcess) -> None:
    """After the block, task.grant() raises TaskEnded task_inactive without calling the
    sidecar, exactly what the sidecar answers for the same request; it is also a
    NoActiveTask (the name earlier versions raised)."""
    with sidecar.client() as jit:
        with jit.task(goal="done") as task:
            task.grant("docs.read", "docs://a")
        with pytest.raises(TaskEnded) as local:
            task.grant("docs.read", "docs://b")
        rejected_before = sidecar.events("request_rejected")
        with pytest.raises(TaskEnded) as remote:
            jit.request_grant(task.task_id, "docs.read", "docs://b")
    assert isinstance(local.value, NoActiveTask)
    assert (local.value.code, local.value.reason) == (remote.value.code, remote.value.reason)
    assert local.value.reason == "task_inactive"
    assert rejected_before == []
    assert [r["reason"] for r in sidecar.events("request_rejected")] == ["task_inactive"]


# ---------------------------------------------------------------------- bad input
def test_unsendable_input_is_refused_by_the_sdk(sidecar: SidecarProcess) -> None:
    """Labels that are not str -> str, a label key UTF-8 cannot carry, a negative TTL and a
    context that is not a JSON object raise InvalidRequest with the sidecar's reason codes
    before anything is sent: the sidecar sees no request and creates nothing."""
    cases: list[tuple[Callable[[AccessClient, TaskHandle], object], str]] = [
        (lambda jit, _: jit.begin_task("x", labels={"purpose": 7}), "invalid_task"),  # type: ignore[dict-item]
        (lambda jit, _: jit.begin_task("x", labels={"bad\ud800key": "v"}), "invalid_task"),
        (lambda jit, _: jit.begin_task("x", max_duration=-5), "invalid_task"),
        (lambda _, task: task.grant("docs.read", "docs://a", ttl=-1), "invalid_ttl"),
        (lambda _, task: task.grant("docs.read", "docs://a", context=[1]), "invalid_intent"),  # type: ignore[arg-type]
        (lambda _, task: task.grant("docs.read", "docs://a", context="{}"), "invalid_intent"),  # type: ignore[arg-type]
        (
            lambda _, task: task.grant("docs.read", "docs://a", context={"at": datetime.now()}),
            "invalid_intent",
        ),
    ]
    refused: list[tuple[type[BaseException], str, dict[str, str]]] = []
    with sidecar.client() as jit, jit.task(goal="bad input") as task:
        for call, _ in cases:
            with pytest.raises(InvalidRequest) as err:
                call(jit, task)
            refused.append((type(err.value), err.value.reason, err.value.metadata))
    assert refused == [(InvalidRequest, reason, {"source": "sdk"}) for _, reason in cases]
    assert sidecar.events("request_rejected") == []
    assert len(sidecar.events("task_begun")) == 1
    assert sidecar.grant_rows() == []


def test_sendable_bad_input_is_judged_and_audited_by_the_sidecar(sidecar: SidecarProcess) -> None:
    """What the SDK can send goes to the sidecar, which refuses it with the same exception
    and reason codes and audits the refusal: a label key with bad characters
    (invalid_task), a TTL above a day (invalid_ttl; 0 asks for the maximum)."""
    with sidecar.client() as jit:
        with pytest.raises(InvalidRequest) as label:
            jit.begin_task("x", labels={"bad key!": "v"})
        with jit.task(goal="ttl") as task, pytest.raises(InvalidRequest) as ttl:
            task.grant("docs.read", "docs://a", ttl=86401)
    assert (label.value.code, label.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_task",
    )
    assert (ttl.value.code, ttl.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_ttl")
    assert label.value.metadata.get("source") != "sdk"
    assert [(r["rpc"], r["reason"]) for r in sidecar.events("request_rejected")] == [
        ("BeginTask", "invalid_task"),
        ("RequestGrant", "invalid_ttl"),
    ]
    assert sidecar.grant_rows() == []
