"""Task ids and task errors, on the engine with a hand-moved clock, real SQLite, a real audit
file and the real journal (only the policy is scripted): another identity's task id is no
oracle and cannot be squatted; an ended task says why; ttl_seconds 0 asks for the maximum."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path

from sidecar.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    SidecarError,
)
from sidecar.model import Identity, Intent, Outcome
from tests.fakes import VALID_JIT
from tests.unit.test_engine import ME, OTHER, Rig, run

WRITE = Intent("x.write", "x://1")


async def _refusal(call: Awaitable[object]) -> tuple[type[SidecarError], Reason, str]:
    """(error type, reason code, message) of a refused call."""
    try:
        await call
    except SidecarError as err:
        return type(err), err.reason, err.message
    raise AssertionError("the call was not refused")


def _calls(r: Rig, who: Identity, task_id: str) -> list[Awaitable[object]]:
    return [
        r.engine.request_grant(who, task_id, WRITE, 30),
        r.engine.heartbeat(who, task_id),
        r.engine.complete_task(who, task_id, Outcome.SUCCEEDED),
        r.engine.list_grants(who, task_id, True),
    ]


def test_a_foreign_task_id_is_answered_as_an_unknown_one(tmp_path: Path) -> None:
    """Every RPC taking a task id answers another identity's task (by its generated id, its
    chosen name or its full id) exactly as a task id nobody holds: NOT_FOUND task_not_found,
    `no task <id>`; and another identity's grant exactly as an unknown grant."""

    async def body(r: Rig) -> None:
        generated = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        chosen = await r.engine.begin_task(
            ME, task_id="deploy", goal="g", max_duration=60, labels={}
        )
        out = await r.engine.request_grant(ME, generated.task_id, WRITE, 30)
        assert out.grant is not None
        answers: dict[str, list[tuple[type[SidecarError], Reason, str]]] = {}
        for label, task_id in [
            ("generated", generated.task_id),
            ("chosen", "deploy"),
            ("full", chosen.task_id),
            ("unknown-generated", "t-" + "0" * 26),
            ("unknown-chosen", "nobody-has-this"),
        ]:
            answers[label] = [
                (kind, reason, message.replace(task_id, "<id>"))
                for kind, reason, message in [
                    await _refusal(call) for call in _calls(r, OTHER, task_id)
                ]
            ]
        foreign_grant = await _refusal(r.engine.revoke_grant(OTHER, out.grant.grant_id))
        unknown_grant = await _refusal(r.engine.revoke_grant(OTHER, "0" * 26))
        still = await r.engine.list_grants(ME, generated.task_id, False)
        active = (await r.engine.introspect(out.token)).active

        expected = [(NotFound, Reason.TASK_NOT_FOUND, "no task <id>")] * 4
        assert answers == {label: expected for label in answers}
        assert foreign_grant[:2] == unknown_grant[:2] == (NotFound, Reason.GRANT_NOT_FOUND)
        assert foreign_grant[2].replace(out.grant.grant_id, "<id>") == unknown_grant[2].replace(
            "0" * 26, "<id>"
        )
        assert [g.grant_id for g in still] == [out.grant.grant_id]
        assert active

    run(tmp_path, body)


def test_a_chosen_task_id_cannot_be_squatted(tmp_path: Path) -> None:
    """An identity that takes a task id first neither blocks nor detects another identity
    choosing the same id: each gets its own task, usable by the name it chose; reusing
    one's own id is still task_exists."""

    async def body(r: Rig) -> None:
        squatter = await r.engine.begin_task(
            OTHER, task_id="deploy-42", goal="g", max_duration=60, labels={}
        )
        mine = await r.engine.begin_task(
            ME, task_id="deploy-42", goal="g", max_duration=60, labels={}
        )
        fresh = await r.engine.begin_task(
            ME, task_id="deploy-43", goal="g", max_duration=60, labels={}
        )
        out = await r.engine.request_grant(ME, "deploy-42", WRITE, 30)
        again = await _refusal(
            r.engine.begin_task(ME, task_id="deploy-42", goal="g", max_duration=60, labels={})
        )
        theirs = await r.engine.list_grants(OTHER, "deploy-42", True)

        assert mine.task_id != squatter.task_id
        assert mine.task_id.startswith("deploy-42@")
        assert fresh.task_id.startswith("deploy-43@")
        assert mine.subject == ME.subject and squatter.subject == OTHER.subject
        assert out.grant is not None and out.grant.task_id == mine.task_id
        assert again == (AlreadyExists, Reason.TASK_EXISTS, "task deploy-42 already exists")
        assert theirs == []

    run(tmp_path, body)


def test_a_task_ended_by_missed_heartbeats_says_so(tmp_path: Path) -> None:
    """After the heartbeats stop, RequestGrant and Heartbeat are task_inactive with the
    reason: `has ended (crashed: no heartbeat for 15 s)` (5 s interval, 3 misses)."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        r.clock.advance(16)
        await r.engine.sweep()
        grant = await _refusal(r.engine.request_grant(ME, task.task_id, WRITE, 30))
        beat = await _refusal(r.engine.heartbeat(ME, task.task_id))
        want = f"task {task.task_id} has ended (crashed: no heartbeat for 15 s)"
        assert grant == (FailedPrecondition, Reason.TASK_INACTIVE, want)
        assert beat == grant

    run(tmp_path, body, heartbeat_interval=5, heartbeat_misses=3)


def test_a_task_past_its_deadline_says_so(tmp_path: Path) -> None:
    """A request arriving after the task's deadline ends it and says why (expired), as does
    the next one once it is ended; a completed task says it was completed."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=10, labels={})
        done = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        await r.engine.complete_task(ME, done.task_id, Outcome.SUCCEEDED)
        r.clock.advance(10)
        first = await _refusal(r.engine.request_grant(ME, task.task_id, WRITE, 30))
        later = await _refusal(r.engine.heartbeat(ME, task.task_id))
        completed = await _refusal(r.engine.request_grant(ME, done.task_id, WRITE, 30))
        want = (
            f"task {task.task_id} has ended (expired: reached its deadline (10 s after it began))"
        )
        assert first == (FailedPrecondition, Reason.TASK_INACTIVE, want)
        assert later == first
        assert completed[2] == f"task {done.task_id} has ended (succeeded: completed by the agent)"

    run(tmp_path, body, heartbeat_interval=1000)


def test_ttl_zero_asks_for_the_tiers_maximum(tmp_path: Path) -> None:
    """ttl_seconds 0 is no request: the grant lives as long as the other bounds allow (here
    the JIT tier's maximum, 30 s, under the policy's 60 s), recorded as tier_max."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        out = await r.engine.request_grant(ME, task.task_id, WRITE, 0)
        assert out.grant is not None
        assert out.grant.expires_at - int(out.grant.issued_at) == 30
        issued = [
            json.loads(line)
            for line in r.audit_path.read_text().splitlines()
            if json.loads(line)["event"] == "grant_issued"
        ]
        assert [(i["ttl_seconds"], i["ttl_limited_by"]) for i in issued] == [(30, "tier_max")]

    run(tmp_path, body, max_ttl_jit=30)


def test_a_negative_ttl_is_invalid(tmp_path: Path) -> None:
    """A negative ttl_seconds (only reachable in-process: the proto field is unsigned) is
    invalid_ttl and issues nothing."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        refused = await _refusal(r.engine.request_grant(ME, task.task_id, WRITE, -1))
        assert refused[:2] == (
            InvalidArgument,
            Reason.INVALID_TTL,
        )
        assert r.engine.active_grant_count == 0

    run(tmp_path, body)


def test_another_identitys_approval_is_answered_as_an_unknown_one(tmp_path: Path) -> None:
    """AwaitApproval on another identity's open approval is NOT_FOUND approval_not_found with
    the same message shape as an approval nobody holds, and leaves it pending for its owner."""

    async def body(r: Rig) -> None:
        r.policy.result = VALID_JIT | {"approval_required": True}
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        parked = await r.engine.request_grant(ME, task.task_id, WRITE, 30)
        foreign = await _refusal(r.engine.await_approval(OTHER, parked.approval_id, 0))
        unknown = await _refusal(r.engine.await_approval(OTHER, "a-nobody", 0))
        still = await r.engine.await_approval(ME, parked.approval_id, 0)
        assert parked.decision == "pending_approval"
        assert foreign[:2] == unknown[:2] == (NotFound, Reason.APPROVAL_NOT_FOUND)
        assert foreign[2].replace(parked.approval_id, "<id>") == unknown[2].replace(
            "a-nobody", "<id>"
        )
        assert still.decision == "pending_approval"

    run(tmp_path, body, heartbeat_interval=1000)
