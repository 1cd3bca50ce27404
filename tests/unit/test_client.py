"""The SDK's own logic against a scripted gRPC server on a real Unix socket (tests/fakes.py):
the approval wait loop, per-call identity tokens and deadlines, the input the SDK refuses
to send (the server records every call, so "nothing was sent" is checked), ended tasks and
value objects."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import (
    AccessClient,
    AccessDenied,
    AdminClient,
    ApprovalPending,
    AsyncAccessClient,
    Grant,
    InvalidRequest,
    NoActiveTask,
    TaskCompleted,
    TaskEnded,
    requires,
)
from tests import fakes
from tests.harness import wait_for


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[fakes.ScriptedAccessService, Path]]:
    service = fakes.ScriptedAccessService(request_grant=[fakes.granted()])
    with fakes.serve(service, tmp_path / "fake.sock") as socket:
        yield service, socket


def test_wait_for_approval_returns_the_grant_once_approved(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """PENDING_APPROVAL then an approval: grant(wait_for_approval=) returns the grant."""
    service, socket = scripted
    service.request_grant = [fakes.pending()]
    service.await_approval = [("hold", 0.3), ("answer", fakes.granted())]
    with AccessClient(socket) as jit, jit.task("refund", heartbeats=False) as task:
        grant = task.grant(
            "payments.refund", "payments://orders/42", justification="t 991", wait_for_approval=5
        )
    awaits = [c for c in service.calls if c.method == "AwaitApproval"]
    assert grant.grant_id == "g-1"
    assert grant.tier == "jit"
    assert [c.request.approval_id for c in awaits] == ["a-1", "a-1"]


def test_wait_for_approval_raises_denied(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """A human denial ends the wait with AccessDenied carrying the reasons."""
    service, socket = scripted
    service.request_grant = [fakes.pending()]
    service.await_approval = [("answer", fakes.denied("approver said no"))]
    with (
        AccessClient(socket) as jit,
        jit.task("refund", heartbeats=False) as task,
        pytest.raises(AccessDenied) as err,
    ):
        task.grant("payments.refund", "payments://orders/42", wait_for_approval=5)
    assert err.value.reasons == ["approver said no"]


def test_wait_for_approval_times_out_as_approval_pending(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """No decision within the wait: ApprovalPending with the approval id, and no AwaitApproval
    call was given a deadline beyond the wait (server-side timeouts are retried)."""
    service, socket = scripted
    service.request_grant = [fakes.pending()]
    service.await_approval = [("deadline", None), ("hold", None)]
    started = time.monotonic()
    with (
        AccessClient(socket) as jit,
        jit.task("refund", heartbeats=False) as task,
        pytest.raises(ApprovalPending) as err,
    ):
        task.grant("payments.refund", "payments://orders/42", wait_for_approval=1.0)
    waited = time.monotonic() - started
    awaits = [c for c in service.calls if c.method == "AwaitApproval"]
    assert err.value.approval_id == "a-1"
    assert err.value.reasons == ["approval_required: refunds need a human"]
    assert len(awaits) >= 2
    # (+0.1: the server measures the remaining time on its own clock, a little later)
    assert all(c.time_remaining is not None and c.time_remaining <= 1.1 for c in awaits)
    assert waited >= 1.0


def test_pending_without_wait_raises_at_once(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """Without wait_for_approval a PENDING answer raises ApprovalPending and never waits."""
    service, socket = scripted
    service.request_grant = [fakes.pending()]
    with (
        AccessClient(socket) as jit,
        jit.task("refund", heartbeats=False) as task,
        pytest.raises(ApprovalPending) as err,
    ):
        task.grant("payments.refund", "payments://orders/42")
    assert err.value.approval_id == "a-1"
    assert "AwaitApproval" not in service.methods()


def test_async_wait_for_approval(scripted: tuple[fakes.ScriptedAccessService, Path]) -> None:
    """The asyncio flavour waits the same way and returns the approved grant."""
    service, socket = scripted
    service.request_grant = [fakes.pending()]
    service.await_approval = [("deadline", None), ("answer", fakes.granted())]

    async def run() -> Grant:
        async with AsyncAccessClient(socket) as jit, jit.task("x", heartbeats=False) as task:
            return await task.grant("payments.refund", "payments://o/1", wait_for_approval=5)

    grant = asyncio.run(run())
    assert grant.grant_id == "g-1"
    assert service.methods().count("AwaitApproval") == 2


def test_identity_token_provider_is_called_per_rpc(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """A callable identity_token is evaluated before each RPC (rotating tokens are picked up)."""
    service, socket = scripted
    counter = itertools.count(1)
    provider = lambda: f"svid-{next(counter)}"  # noqa: E731
    with (
        AccessClient(socket, identity_token=provider) as jit,
        jit.task("x", heartbeats=False) as task,
    ):
        task.grant("docs.read", "docs://a")
    auth = [c.metadata.get("authorization") for c in service.calls]
    # Between BeginTask and RequestGrant, the GrantStream the fake refuses (UNIMPLEMENTED).
    assert [c.metadata.get("authorization") for c in service.streams] == ["Bearer svid-2"]
    assert auth == ["Bearer svid-1", "Bearer svid-3", "Bearer svid-4"]


def test_every_rpc_carries_a_deadline(scripted: tuple[fakes.ScriptedAccessService, Path]) -> None:
    """Each call has a deadline: the client default, or the per-call timeout when given."""
    service, socket = scripted
    with AccessClient(socket, timeout=3) as jit, jit.task("x", heartbeats=False) as task:
        task.grant("docs.read", "docs://a", timeout=1.5)
        task.grants()
    remaining = {c.method: c.time_remaining for c in service.calls}
    assert set(remaining) == {"BeginTask", "RequestGrant", "ListGrants", "CompleteTask"}
    # (+0.1: the server measures the remaining time on its own clock, a little later)
    assert all(r is not None and 0 < r <= 3.1 for r in remaining.values())
    assert remaining["RequestGrant"] is not None
    assert remaining["RequestGrant"] <= 1.6


def test_heartbeat_saying_task_ended_surfaces_on_next_grant(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """A heartbeat answered task_inactive makes the next grant() raise TaskEnded without a
    RequestGrant call, and leaving the block does not raise."""
    service, socket = scripted
    service.heartbeat_fails = True
    with AccessClient(socket) as jit, jit.task("x") as task:
        wait_for(lambda: task.ended is not None, 5, what="the failed heartbeat")
        with pytest.raises(TaskEnded) as err:
            task.grant("docs.read", "docs://a")
    assert err.value.reason == "task_inactive"
    assert "RequestGrant" not in service.methods()
    assert service.methods().count("Heartbeat") == 1


def test_grant_repr_hides_the_token() -> None:
    """Grant's repr (and so logs and tracebacks) never shows the token."""
    grant = Grant.from_proto(fakes.granted().grant)
    assert "header.payload.signature" not in repr(grant)
    assert grant.grant_id in repr(grant)
    assert grant.authorization == "Bearer header.payload.signature"


def test_requires_outside_a_task_raises_no_active_task() -> None:
    """A tool called outside any task raises NoActiveTask and does not run."""
    ran = []

    @requires("docs.read", lambda doc_id, **_: f"docs://{doc_id}")
    def fetch(doc_id: str, *, grant: Grant) -> None:
        ran.append(doc_id)

    with pytest.raises(NoActiveTask):
        fetch("a")
    assert ran == []
    assert list(inspect.signature(fetch).parameters) == ["doc_id"]


# ---------------------------------------------------------------------- input the SDK refuses
def _refused(err: pytest.ExceptionInfo[InvalidRequest], reason: str) -> None:
    """The SDK's own refusal: the sidecar's status and reason code, marked as the SDK's."""
    assert type(err.value) is InvalidRequest
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == reason
    assert err.value.metadata == {"source": "sdk"}


BAD_TASKS = [
    pytest.param({"labels": {"purpose": 1}}, id="label-value-int"),
    pytest.param({"labels": {1: "refunds"}}, id="label-key-int"),
    pytest.param({"labels": {"purpose": None}}, id="label-value-none"),
    pytest.param({"labels": "purpose=refunds"}, id="labels-str"),
    pytest.param({"labels": [("purpose", "refunds")]}, id="labels-list-of-pairs"),
    pytest.param({"labels": {"pur\ud800pose": "refunds"}}, id="label-key-lone-surrogate"),
    pytest.param({"labels": {"purpose": "\udfff"}}, id="label-value-lone-surrogate"),
    pytest.param({"goal": "\ud800"}, id="goal-lone-surrogate"),
    pytest.param({"goal": None}, id="goal-none"),
    pytest.param({"task_id": 7}, id="task-id-int"),
    pytest.param({"max_duration": -1}, id="negative-duration"),
    pytest.param({"max_duration": 2**32}, id="duration-over-uint32"),
    pytest.param({"max_duration": 1.5}, id="duration-float"),
]


@pytest.mark.parametrize("kwargs", BAD_TASKS)
def test_bad_task_arguments_raise_invalid_task_and_send_nothing(
    scripted: tuple[fakes.ScriptedAccessService, Path], kwargs: dict[str, Any]
) -> None:
    """BeginTask input that cannot be sent: InvalidRequest invalid_task, nothing sent."""
    service, socket = scripted
    goal = kwargs.pop("goal", "triage")
    with AccessClient(socket) as jit, pytest.raises(InvalidRequest) as err:
        jit.task(goal, heartbeats=False, **kwargs).open()
    _refused(err, "invalid_task")
    assert service.calls == []


BAD_GRANTS = [
    pytest.param({"ttl": -1}, "invalid_ttl", id="negative-ttl"),
    pytest.param({"ttl": 2**32}, "invalid_ttl", id="ttl-over-uint32"),
    pytest.param({"ttl": 1.5}, "invalid_ttl", id="ttl-float"),
    pytest.param({"ttl": "60"}, "invalid_ttl", id="ttl-str"),
    pytest.param({"ttl": True}, "invalid_ttl", id="ttl-bool"),
    pytest.param({"context": [1, 2]}, "invalid_intent", id="context-list"),
    pytest.param({"context": "amount=40"}, "invalid_intent", id="context-str"),
    pytest.param({"context": []}, "invalid_intent", id="context-empty-list"),
    pytest.param({"context": {"ids": {1, 2}}}, "invalid_intent", id="context-set"),
    pytest.param({"context": {"when": object()}}, "invalid_intent", id="context-object"),
    pytest.param({"context": {"a": [{"b": b"raw"}]}}, "invalid_intent", id="context-nested-bytes"),
    pytest.param({"context": {"amount": math.nan}}, "invalid_intent", id="context-nan"),
    pytest.param({"context": {"amount": -math.inf}}, "invalid_intent", id="context-infinity"),
    pytest.param({"context": {1: "x"}}, "invalid_intent", id="context-int-key"),
    pytest.param({"context": {"note": "\ud800"}}, "invalid_intent", id="context-lone-surrogate"),
    pytest.param(
        {"context": functools.reduce(lambda inner, _: {"n": inner}, range(100), {})},
        "invalid_intent",
        id="context-nested-100-deep",
    ),
    pytest.param({"action": None}, "invalid_intent", id="action-none"),
    pytest.param({"resource": 42}, "invalid_intent", id="resource-int"),
    pytest.param({"justification": "why\ud800"}, "invalid_intent", id="justification-surrogate"),
]


@pytest.mark.parametrize(("kwargs", "reason"), BAD_GRANTS)
def test_bad_grant_arguments_raise_invalid_request_and_send_nothing(
    scripted: tuple[fakes.ScriptedAccessService, Path], kwargs: dict[str, Any], reason: str
) -> None:
    """RequestGrant input that cannot be sent: InvalidRequest with the sidecar's reason code
    (invalid_ttl, invalid_intent), no RequestGrant sent, and the task is still usable."""
    service, socket = scripted
    action = kwargs.pop("action", "docs.read")
    resource = kwargs.pop("resource", "docs://a")
    with AccessClient(socket) as jit, jit.task("x", heartbeats=False) as task:
        with pytest.raises(InvalidRequest) as err:
            task.grant(action, resource, **kwargs)
        after = task.grant("docs.read", "docs://a")
    _refused(err, reason)
    assert service.methods() == ["BeginTask", "RequestGrant", "CompleteTask"]
    assert after.grant_id == "g-1"


def test_negative_default_ttl_is_refused_at_task_creation(tmp_path: Path) -> None:
    """jit.task(ttl=-1) raises InvalidRequest invalid_ttl before any task is opened."""
    with AccessClient(tmp_path / "unused.sock") as jit, pytest.raises(InvalidRequest) as err:
        jit.task("x", ttl=-1)
    _refused(err, "invalid_ttl")


def test_low_level_calls_refuse_unsendable_arguments(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """Every RPC method checks its arguments: the reason code is the field's, the message
    names the field and never echoes the value (a token stays out of logs)."""
    service, socket = scripted
    with AccessClient(socket) as jit:
        with pytest.raises(InvalidRequest) as token:
            jit.introspect("secret-token-\ud800")
        with pytest.raises(InvalidRequest) as heartbeat:
            jit.heartbeat(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest) as revoke:
            jit.revoke_grant("g-1", reason=3)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest) as listing:
            jit.list_grants(["t-1"])  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest) as waiting:
            jit.await_approval(5, 1)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest) as outcome:
            jit.complete_task("t-1", "done")
    _refused(token, "invalid_argument")
    assert "secret" not in str(token.value)
    _refused(heartbeat, "invalid_task")
    _refused(revoke, "invalid_argument")
    _refused(listing, "invalid_task")
    _refused(waiting, "invalid_argument")
    _refused(outcome, "invalid_argument")
    assert service.calls == []


def test_bad_outcome_leaves_the_task_open(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """complete("done") raises InvalidRequest invalid_argument and changes nothing: the task
    can still be completed properly afterwards."""
    service, socket = scripted
    with AccessClient(socket) as jit:
        task = jit.task("x", heartbeats=False).open()
        with pytest.raises(InvalidRequest) as err:
            task.complete("done")
        completion = task.complete("failed", "gave up")
    _refused(err, "invalid_argument")
    (complete,) = [c for c in service.calls if c.method == "CompleteTask"]
    assert completion is not None
    assert complete.request.detail == "gave up"


def test_admin_revoke_without_a_target_is_invalid_request(tmp_path: Path) -> None:
    """AdminClient.revoke() with nothing to revoke: InvalidRequest invalid_argument, not
    ValueError."""
    with AdminClient(tmp_path / "admin.sock") as admin, pytest.raises(InvalidRequest) as err:
        admin.revoke(reason="why not")
    _refused(err, "invalid_argument")


def test_async_client_refuses_the_same_input(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """The asyncio flavour shares the checks: a non-object context and a bad label raise
    InvalidRequest with the same reason codes, and nothing is sent."""
    service, socket = scripted

    async def run() -> tuple[InvalidRequest, InvalidRequest]:
        async with AsyncAccessClient(socket) as jit:
            with pytest.raises(InvalidRequest) as label:
                await jit.task("x", labels={"k": 1}, heartbeats=False).open()  # type: ignore[dict-item]
            async with jit.task("x", heartbeats=False) as task:
                with pytest.raises(InvalidRequest) as context:
                    await task.grant("docs.read", "docs://a", context=["not", "an", "object"])  # type: ignore[arg-type]
        return label.value, context.value

    label, context = asyncio.run(run())
    assert (type(label), label.reason) == (InvalidRequest, "invalid_task")
    assert (type(context), context.reason) == (InvalidRequest, "invalid_intent")
    assert service.methods() == ["BeginTask", "CompleteTask"]


# ---------------------------------------------------------------------- ended tasks
def test_grant_after_completion_raises_task_ended(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """A grant on a task this handle completed raises TaskEnded (task_inactive, what the
    sidecar would answer) without calling it; the error is also a NoActiveTask, the name
    earlier versions raised."""
    service, socket = scripted
    with AccessClient(socket) as jit:
        with jit.task("x", heartbeats=False) as task:
            pass
        with pytest.raises(TaskEnded) as err:
            task.grant("docs.read", "docs://a")
    assert isinstance(err.value, TaskCompleted)
    assert isinstance(err.value, NoActiveTask)
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "task_inactive"
    assert "RequestGrant" not in service.methods()


def test_async_grant_after_completion_raises_task_ended(
    scripted: tuple[fakes.ScriptedAccessService, Path],
) -> None:
    """The asyncio handle raises the same TaskEnded task_inactive after completion."""
    service, socket = scripted

    async def run() -> TaskEnded:
        async with AsyncAccessClient(socket) as jit:
            async with jit.task("x", heartbeats=False) as task:
                pass
            with pytest.raises(TaskEnded) as err:
                await task.grant("docs.read", "docs://a")
        return err.value

    ended = asyncio.run(run())
    assert (type(ended), ended.reason) == (TaskCompleted, "task_inactive")
    assert "RequestGrant" not in service.methods()


# ---------------------------------------------------------------------- grant state
def test_grant_carries_state_end_reason_and_justification() -> None:
    """Grant.from_proto maps the proto's state, revocation reason, justification and
    decision id; a revoked grant is not active."""
    raw = fakes.granted().grant
    raw.intent.justification = "ticket 991"
    raw.decision_id = "d-1"
    raw.state = pb.GRANT_STATE_REVOKED
    raw.revocation_reason = "revoked_by_agent"
    revoked = Grant.from_proto(raw)
    raw.state, raw.revocation_reason = pb.GRANT_STATE_ACTIVE, ""
    live = Grant.from_proto(raw)
    raw.state = pb.GRANT_STATE_UNSPECIFIED
    unknown = Grant.from_proto(raw)
    assert (revoked.state, revoked.end_reason, revoked.active) == (
        "revoked",
        "revoked_by_agent",
        False,
    )
    assert (live.state, live.end_reason, live.active) == ("active", "", True)
    assert unknown.state == "unspecified"
    assert (live.justification, live.decision_id) == ("ticket 991", "d-1")
