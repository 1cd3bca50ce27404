"""The SDK's own logic against a scripted gRPC server on a real Unix socket (tests/fakes.py):
the approval wait loop, per-call identity tokens and deadlines, and value objects."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import (
    AccessClient,
    AccessDenied,
    ApprovalPending,
    AsyncAccessClient,
    Grant,
    NoActiveTask,
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
    assert auth == ["Bearer svid-1", "Bearer svid-2", "Bearer svid-3"]


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
