"""The engine with a hand-moved clock, real SQLite, a real audit file and the real journal
(only the policy is scripted): ordering, TTL arithmetic, revocation reasons, clock jumps."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit import AuditFile, log_files, records_after, verify
from sidecar.config import load
from sidecar.engine import Engine, EngineMetrics, GrantEndListeners, engine_settings
from sidecar.engine.credentials import Credentials
from sidecar.engine.delegation import TaskPrincipals
from sidecar.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    SidecarError,
    Unavailable,
)
from sidecar.events import Recorded, TaskBegun, TaskCompleted
from sidecar.journal import CommitError, Journal
from sidecar.metrics import Metrics
from sidecar.model import AccessEnded, Identity, Intent, Outcome
from sidecar.principals import PrincipalVerifier
from sidecar.revocations import FleetGate
from sidecar.store.sqlite import SqliteStore
from sidecar.tokens import KeyRing, SigningKey, generate_private_key
from tests.fakes import VALID_JIT, ManualClock, ScriptedPolicy, hold_applies
from tests.faults import immutable

ME = Identity("spiffe://t/agent/me", "t", "dev")
OTHER = Identity("spiffe://t/agent/other", "t", "dev")


class Rig:
    def __init__(
        self,
        tmp: Path,
        *,
        rotate_bytes: int = 0,
        audit_path: Path | None = None,
        keys: KeyRing | None = None,
        clock: ManualClock | None = None,
        fleet: FleetGate | None = None,
        principals: PrincipalVerifier | None = None,
        on_access_ended: Callable[[Sequence[AccessEnded]], None] | None = None,
        credentials: bool = False,
        **settings: Any,
    ) -> None:
        """`on_access_ended` as the Shared Signals transmitter gets it; `credentials` gives the
        engine a broker revocation queue without brokers (`self.credentials`)."""
        self.clock = clock or ManualClock(1_800_000_000.0)
        self.policy = ScriptedPolicy()
        self.metrics = Metrics()
        self.state_path = tmp / "state.db"
        self.store = SqliteStore(self.state_path)
        self.audit_path = audit_path or tmp / "audit.jsonl"
        # Wired as the composition root wires them: the journal stamps each record with the
        # person its task acts for, whom the engine's live state knows.
        task_principals = TaskPrincipals()
        self.journal = Journal(
            AuditFile(self.audit_path, rotate_bytes=rotate_bytes),
            self.store,
            stamp=task_principals.stamp,
        )
        config = load({"identity": "dev", **{k: str(v) for k, v in settings.items()}}, env={})
        self.keys = keys or KeyRing(SigningKey.from_private_key(generate_private_key("EdDSA")))
        self.grant_end = GrantEndListeners()
        self.credentials = (
            Credentials({}, journal=self.journal, metrics=self.metrics, clock=self.clock)
            if credentials
            else None
        )
        self.engine = Engine(
            engine_settings(config),
            policy=self.policy,
            store=self.store,
            journal=self.journal,
            keys=self.keys,
            metrics=EngineMetrics(self.metrics),
            clock=self.clock,
            fleet=fleet,
            grant_end=self.grant_end,
            credentials=self.credentials,
            on_access_ended=on_access_ended,
            principals=principals,
            task_principals=task_principals,
        )
        self.journal.replay()
        self.engine.restore(self.store.load())
        self.journal.start()

    def hold_store_writes(self) -> tuple[threading.Event, threading.Event]:
        """Make the journal's writer block in its next store write until `release` is set;
        `entered` is set once it blocks. Returns (entered, release)."""
        entered, release, self.unhold_store_writes = hold_applies(self.store)
        return entered, release

    def close(self) -> None:
        self.journal.close()
        self.store.close()

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def run(tmp_path: Path, body: Callable[[Rig], Awaitable[None]], **settings: Any) -> Rig:
    rig = Rig(tmp_path, **settings)
    try:
        asyncio.run(body(rig))
    finally:
        rig.close()
    return rig


def test_ttl_never_wider_than_the_task(tmp_path: Path) -> None:
    """exp never passes the task deadline; when both fall due together, the task's deadline
    revokes the grant with reason task_expired."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=10, labels={})
        out = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        assert out.grant is not None
        assert out.grant.expires_at == task.deadline  # integral clock: 10 s exactly
        r.clock.advance(11)
        await r.engine.sweep()
        assert not (await r.engine.introspect(out.token)).active
        assert r.value("jit_revocations_total", reason="task_expired") == 1

    run(tmp_path, body)


def test_clock_jump_backwards_keeps_grants_and_forwards_ends_them(tmp_path: Path) -> None:
    """A clock stepping back ends nothing early (the grant stays active, though its token is
    not valid before its nbf); stepping forward ends everything due, each exactly once."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        out = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        assert out.grant is not None
        r.clock.advance(-3600)
        assert await r.engine.sweep() == 0
        assert r.engine.grant(out.grant.grant_id) is out.grant
        assert not (await r.engine.introspect(out.token)).active  # nbf is in the future
        r.clock.advance(3600)
        assert (await r.engine.introspect(out.token)).active
        r.clock.advance(31)
        await r.engine.sweep()
        await r.engine.sweep()
        assert not (await r.engine.introspect(out.token)).active

    rig = run(tmp_path, body, heartbeat_interval=1000)
    assert rig.value("jit_revocations_total", reason="expired") == 1


def test_completion_racing_an_issue_never_leaves_an_active_grant(tmp_path: Path) -> None:
    """CompleteTask arriving while a grant is being decided: the grant is refused or revoked,
    never left active in an ended task."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        gate = asyncio.Event()
        original = r.policy.decide

        async def slow(policy_input: dict[str, Any]) -> Any:
            await gate.wait()
            return await original(policy_input)

        r.policy.decide = slow  # type: ignore[method-assign]
        issuing = asyncio.create_task(
            r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        )
        await asyncio.sleep(0)
        await r.engine.complete_task(ME, task.task_id, Outcome.SUCCEEDED)
        gate.set()
        with pytest.raises(FailedPrecondition):
            await issuing
        assert r.engine.active_grant_count == 0

    run(tmp_path, body)


def test_other_identity_cannot_touch_a_task(tmp_path: Path) -> None:
    """Every operation on another identity's task is NOT_FOUND, as for an unknown task
    (task_not_found; grant_not_found for its grant), and changes nothing."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="mine", goal="g", max_duration=60, labels={})
        out = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        assert out.grant is not None
        calls = [
            r.engine.request_grant(OTHER, "mine", Intent("x.write", "x://1"), 30),
            r.engine.heartbeat(OTHER, "mine"),
            r.engine.complete_task(OTHER, "mine", Outcome.SUCCEEDED),
            r.engine.revoke_grant(OTHER, out.grant.grant_id),
            r.engine.list_grants(OTHER, "mine", True),
        ]
        for call in calls:
            with pytest.raises(NotFound):
                await call
        assert (await r.engine.introspect(out.token)).active

    run(tmp_path, body)


def test_kill_switch_revokes_every_grant_of_a_subject(tmp_path: Path) -> None:
    """revoke_subject ends every task of that identity, others untouched (kill_switch)."""

    async def body(r: Rig) -> None:
        tokens = []
        for who in (ME, ME, OTHER):
            task = await r.engine.begin_task(who, task_id="", goal="g", max_duration=60, labels={})
            out = await r.engine.request_grant(who, task.task_id, Intent("x.write", "x://1"), 30)
            tokens.append(out.token)
        assert await r.engine.revoke_subject(ME.subject, "compromised") == 2
        states = [(await r.engine.introspect(t)).active for t in tokens]
        assert states == [False, False, True]
        assert await r.engine.revoke_subject(None) == 1

    rig = run(tmp_path, body)
    assert rig.value("jit_revocations_total", reason="kill_switch") == 3
    assert verify([rig.audit_path]).ok


def test_errored_outcome_revokes_with_reason_errored(tmp_path: Path) -> None:
    """An ERRORED completion revokes with reason errored and records the detail."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        _, count = await r.engine.complete_task(ME, task.task_id, Outcome.ERRORED, "boom")
        assert count == 1

    rig = run(tmp_path, body)
    assert rig.value("jit_revocations_total", reason="errored") == 1


def test_standing_decisions_are_cached_jit_never(tmp_path: Path) -> None:
    """A standing decision with cache_seconds is reused (one OPA call for two grants, each
    audited with a fresh token); a JIT decision always asks OPA."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        r.policy.result = VALID_JIT | {"tier": "standing", "cache_seconds": 30}
        a = await r.engine.request_grant(ME, task.task_id, Intent("x.read", "x://1"), 30)
        b = await r.engine.request_grant(ME, task.task_id, Intent("x.read", "x://1"), 30)
        assert len(r.policy.inputs) == 1
        assert a.token != b.token
        r.policy.result = VALID_JIT
        await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        assert len(r.policy.inputs) == 3
        r.engine.cache.set_revision("new policy")
        r.policy.result = VALID_JIT | {"tier": "standing", "cache_seconds": 30}
        await r.engine.request_grant(ME, task.task_id, Intent("x.read", "x://1"), 30)
        assert len(r.policy.inputs) == 4

    rig = run(tmp_path, body)
    assert rig.value("jit_policy_cache_total", result="hit") == 1


def test_introspection_names_the_end_reason_before_the_store_catches_up(tmp_path: Path) -> None:
    """Between a revocation in memory and its commit reaching the store, introspection is
    inactive with the real end reason (it once said `active`, read from the stale row)."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        outcome = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        # Hold the journal's store write so the revocation's commit stays in flight.
        _, release = r.hold_store_writes()
        completing = asyncio.create_task(r.engine.complete_task(ME, task.task_id, Outcome.ERRORED))
        await asyncio.sleep(0.05)  # ended in memory; the commit waits on the store
        during = await r.engine.introspect(outcome.token)
        release.set()
        await completing
        after = await r.engine.introspect(outcome.token)
        assert (during.active, during.revocation_reason) == (False, "errored")
        assert (after.active, after.revocation_reason) == (False, "errored")

    run(tmp_path, body)


def test_revocation_audited_when_the_log_rotated_stays_revoked_after_restart(
    tmp_path: Path,
) -> None:
    """A completion in the audit log that the store could not apply, written just before
    the log rotated, is replayed at start-up: after a restart its grant is still revoked
    (replay used to stop at the empty fresh log file, and the grant came back active)."""
    first = Rig(tmp_path, rotate_bytes=1)  # every write rotates the log
    try:

        async def issue_then_complete() -> str:
            task = await first.engine.begin_task(
                ME, task_id="", goal="g", max_duration=300, labels={}
            )
            out = await first.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
            wal = Path(str(first.state_path) + "-wal")
            with immutable(first.state_path, wal):  # the store cannot apply the completion
                await first.engine.complete_task(ME, task.task_id, Outcome.SUCCEEDED)
            return out.token

        token = asyncio.run(issue_then_complete())
        audited = [r["event"] for f in log_files(first.audit_path) for r in records_after(f, 0)]
    finally:
        first.close()  # as a crash would: the store never applied the completion
    second = Rig(tmp_path, rotate_bytes=1, keys=first.keys, clock=first.clock)
    try:
        after = asyncio.run(second.engine.introspect(token))
        row = second.store.writer.execute("SELECT state FROM grants").fetchone()
    finally:
        second.close()
    assert "task_completed" in audited
    assert (after.active, after.revocation_reason) == (False, "completed")
    assert row == ("revoked",)


def test_a_failed_audit_rotation_keeps_the_journal_serving(tmp_path: Path) -> None:
    """The log cannot be rotated (its directory is immutable): the batch already written
    counts, grants keep flowing into the same file, and the log rotates once it can, one
    chain throughout (a failed rotation killed the journal's writer: every later call hung)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    r = Rig(tmp_path, rotate_bytes=1, audit_path=logs / "audit.jsonl")

    async def body() -> list[bool]:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})

        async def grant(resource: str) -> str:
            call = r.engine.request_grant(ME, task.task_id, Intent("x.write", resource), 60)
            return (await asyncio.wait_for(call, 5)).token

        with immutable(logs):
            tokens = [await grant("x://1"), await grant("x://2")]
        tokens.append(await grant("x://3"))
        return [(await r.engine.introspect(t)).active for t in tokens]

    try:
        active = asyncio.run(body())
    finally:
        r.close()
    files = log_files(r.audit_path)
    chain = verify(files)
    assert active == [True, True, True]
    assert chain.ok and chain.count == 5
    # task_begun, rotated; the three grants in one file after its log_rotated record,
    # rotated once the directory allowed.
    assert [[r["event"] for r in records_after(f, 0)] for f in files] == [
        ["task_begun"],
        ["log_rotated", "grant_issued", "grant_issued", "grant_issued"],
        [],
    ]


def test_a_cancelled_completion_is_still_audited_when_the_log_comes_back(tmp_path: Path) -> None:
    """CompleteTask cancelled (deadline, client gone) while its commit waits, then the audit
    write fails: the revocation is still retried until the log takes it, so a restart finds
    the grant revoked (the cancelled call skipped the retry; the grant came back active)."""
    first = Rig(tmp_path)
    try:

        async def body() -> str:
            task = await first.engine.begin_task(
                ME, task_id="", goal="g", max_duration=300, labels={}
            )
            out = await first.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
            # Keep the journal's writer busy on a heartbeat so the completion's commit waits.
            entered, release = first.hold_store_writes()
            await first.engine.heartbeat(ME, task.task_id)
            assert await asyncio.to_thread(entered.wait, 5)
            completing = asyncio.create_task(
                first.engine.complete_task(ME, task.task_id, Outcome.SUCCEEDED)
            )
            await asyncio.sleep(0.05)
            completing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await completing
            with immutable(first.audit_path):  # the completion's audit write fails
                release.set()
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # the retry runs (first after 0.5 s)
            return out.token

        token = asyncio.run(body())
    finally:
        first.close()
    audited = [r["event"] for r in records_after(first.audit_path, 0)]
    second = Rig(tmp_path, keys=first.keys, clock=first.clock)
    try:
        after = asyncio.run(second.engine.introspect(token))
    finally:
        second.close()
    assert audited[-2:] == ["grant_revoked", "task_completed"]
    assert (after.active, after.revocation_reason) == (False, "completed")


def test_an_approval_whose_decision_was_not_audited_yields_no_grant(tmp_path: Path) -> None:
    """An approval is collectable only once its decision is in the audit log: collecting
    while the decision is being written answers pending, and a decision the log refused
    leaves the approval pending (it stayed approved in memory, and its grant was issued
    with no approval_decided record behind it)."""
    r = Rig(tmp_path)

    async def body() -> tuple[str, str, str]:
        r.policy.result = VALID_JIT | {"approval_required": True}
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        parked = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        approval_id = parked.approval_id
        entered, release = r.hold_store_writes()
        await r.engine.heartbeat(ME, task.task_id)  # the writer is busy with it
        assert await asyncio.to_thread(entered.wait, 5)
        deciding = asyncio.create_task(
            r.engine.decide_approval(approval_id, approve=True, approver="ops", reason="ok")
        )
        await asyncio.sleep(0.05)
        try:
            during = await asyncio.wait_for(r.engine.await_approval(ME, approval_id, 0), 1)
        except BaseException:
            release.set()  # let the writer go before the loop closes
            raise
        with immutable(r.audit_path):  # the decision's audit write fails
            release.set()
            with pytest.raises(CommitError):
                await deciding
        r.unhold_store_writes()
        after = await r.engine.await_approval(ME, approval_id, 0)
        await r.engine.decide_approval(approval_id, approve=True, approver="ops", reason="ok")
        granted = await r.engine.await_approval(ME, approval_id, 0)
        return during.decision, after.decision, granted.decision

    try:
        decisions = asyncio.run(body())
    finally:
        r.close()
    events = [(x["event"], x.get("approval_id")) for x in records_after(r.audit_path, 0)]
    assert decisions == ("pending_approval", "pending_approval", "granted")
    assert [e for e, a in events if a] == ["grant_pending", "approval_decided", "grant_issued"]


def test_concurrent_requests_never_exceed_max_grants_per_task(tmp_path: Path) -> None:
    """Requests decided concurrently count against max_grants_per_task when they issue,
    not only when they arrive: the task never holds more than the limit (three requests
    that all arrived under a limit of two all used to be granted)."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        gate = asyncio.Event()
        original = r.policy.decide

        async def slow(policy_input: dict[str, Any]) -> Any:
            await gate.wait()
            return await original(policy_input)

        r.policy.decide = slow  # type: ignore[method-assign]
        calls = [
            asyncio.create_task(
                r.engine.request_grant(ME, task.task_id, Intent("x.write", f"x://{i}"), 30)
            )
            for i in range(3)
        ]
        await asyncio.sleep(0.05)  # all three are past the arrival check, waiting on policy
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        refused = [e for e in results if isinstance(e, ResourceExhausted)]
        assert sum(not isinstance(x, BaseException) for x in results) == 2
        assert [e.reason for e in refused] == [Reason.TOO_MANY_GRANTS]
        assert len(task.grant_ids) == r.engine.active_grant_count == 2

    run(tmp_path, body, max_grants_per_task=2)


def test_open_approvals_per_task_are_bounded(tmp_path: Path) -> None:
    """A task holds at most max_open_approvals_per_task open approval requests: one more is
    RESOURCE_EXHAUSTED too_many_approvals (no approval kept, audited or sent), repeating an
    open one still answers pending, and a decided one frees its place (each distinct
    intent used to park another approval, without bound)."""

    async def body(r: Rig) -> None:
        r.policy.result = VALID_JIT | {"approval_required": True}
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})

        def ask(why: str) -> Awaitable[Any]:
            return r.engine.request_grant(
                ME, task.task_id, Intent("x.write", "x://1", justification=why), 60
            )

        first, second = await ask("one"), await ask("two")
        with pytest.raises(ResourceExhausted) as refused:
            await ask("three")
        again = await ask("one")
        await r.engine.decide_approval(
            first.approval_id, approve=False, approver="ops", reason="no"
        )
        third = await ask("three")
        assert refused.value.reason is Reason.TOO_MANY_APPROVALS
        assert again.approval_id == first.approval_id
        assert [a.approval_id for a in r.engine.open_approvals()] == [
            second.approval_id,
            third.approval_id,
        ]

    run(tmp_path, body, max_open_approvals_per_task=2)


def test_a_grant_outcome_never_shows_its_token(tmp_path: Path) -> None:
    """repr() of the engine's answer (what a debug log line, a traceback or a failing test
    prints) names the grant, never the bearer token (GrantOutcome printed the token)."""

    async def body(r: Rig) -> None:
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        out = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        assert out.grant is not None
        shown = repr(out)
        assert out.token.count(".") == 2
        assert out.token not in shown
        assert out.token.split(".")[2] not in shown
        assert out.grant.grant_id in shown

    run(tmp_path, body)


def test_an_expired_approval_cannot_be_collected_before_the_sweep(tmp_path: Path) -> None:
    """An approved request not collected within approval_ttl is expired for AwaitApproval
    at once, whether or not the sweeper has run yet (it was still issued until then)."""

    async def body(r: Rig) -> None:
        r.policy.result = VALID_JIT | {"approval_required": True}
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=3600, labels={})
        parked = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        await r.engine.decide_approval(
            parked.approval_id, approve=True, approver="ops", reason="ok"
        )
        r.clock.advance(61)  # past approval_ttl; the sweeper has not run
        late = await r.engine.await_approval(ME, parked.approval_id, 0)
        assert late.decision == "denied"
        assert late.reasons[0].startswith("approval_expired")
        assert r.engine.active_grant_count == 0

    run(tmp_path, body, approval_ttl=60, heartbeat_interval=1000)


def test_a_cancelled_begin_task_the_log_refused_leaves_no_task(tmp_path: Path) -> None:
    """BeginTask cancelled while its commit waits, then the audit write fails: the task is
    not kept (it stayed in memory unrecorded, and grants were issued for a task that the
    audit log and, after a restart, the store never knew)."""
    r = Rig(tmp_path)

    async def body() -> BaseException:
        other = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        entered, release = r.hold_store_writes()
        await r.engine.heartbeat(ME, other.task_id)  # the writer is busy with it
        assert await asyncio.to_thread(entered.wait, 5)
        beginning = asyncio.create_task(
            r.engine.begin_task(ME, task_id="mine", goal="g", max_duration=300, labels={})
        )
        await asyncio.sleep(0.05)
        beginning.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beginning
        with immutable(r.audit_path):  # the task_begun write fails
            release.set()
            await asyncio.sleep(0.2)
        r.unhold_store_writes()
        try:
            await r.engine.request_grant(ME, "mine", Intent("x.write", "x://1"), 60)
        except SidecarError as err:
            return err
        raise AssertionError("a grant was issued for a task the audit log never recorded")

    try:
        refused = asyncio.run(body())
    finally:
        r.close()
    events = [x["event"] for x in records_after(r.audit_path, 0)]
    assert isinstance(refused, NotFound)
    assert r.engine.task("mine") is None
    assert "grant_issued" not in events


def test_a_cancelled_approval_request_the_log_refused_is_not_kept(tmp_path: Path) -> None:
    """A RequestGrant parked for approval, cancelled while its grant_pending record waits,
    then refused by the audit log: no approval stays open (it stayed approvable in memory
    with no record of the request behind it)."""
    r = Rig(tmp_path)

    async def body() -> list[Any]:
        r.policy.result = VALID_JIT | {"approval_required": True}
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        entered, release = r.hold_store_writes()
        await r.engine.heartbeat(ME, task.task_id)  # the writer is busy with it
        assert await asyncio.to_thread(entered.wait, 5)
        asking = asyncio.create_task(
            r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        )
        await asyncio.sleep(0.05)
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
        with immutable(r.audit_path):  # the grant_pending write fails
            release.set()
            await asyncio.sleep(0.2)
        return r.engine.open_approvals()

    try:
        still_open = asyncio.run(body())
    finally:
        r.close()
    events = [x["event"] for x in records_after(r.audit_path, 0)]
    assert still_open == []
    assert "grant_pending" not in events


def test_a_store_write_failure_is_reported_as_itself(tmp_path: Path) -> None:
    """When SQLite fails a batch (here: its files turned immutable), the error the journal
    logs and the operator reads is SQLite's own (e.g. disk I/O error), not the ROLLBACK
    of a transaction SQLite had already ended ("cannot rollback - no transaction is
    active" hid the cause); the store still takes the next batch."""
    store = SqliteStore(tmp_path / "state.db")
    begun = TaskBegun(
        time="2027-01-15T08:00:00.000000Z",
        task_id="t1",
        subject=ME.subject,
        expires_at="2027-01-15T09:00:00.000000Z",
        heartbeat_interval_seconds=5,
    )
    ended = TaskCompleted(time="2027-01-15T08:00:01.000000Z", task_id="t1", state="succeeded")
    try:
        store.apply([Recorded(1, begun)], (), 1)
        files = (tmp_path / "state.db", tmp_path / "state.db-wal")
        with immutable(*files), pytest.raises(sqlite3.Error) as failed:
            store.apply([Recorded(2, ended)], (), 2)
        store.apply([Recorded(2, ended)], (), 2)
        state = store.writer.execute("SELECT state FROM tasks").fetchone()
    finally:
        store.close()
    assert "rollback" not in str(failed.value)
    assert state == ("succeeded",)


def test_a_state_store_that_cannot_be_read_is_unavailable(tmp_path: Path) -> None:
    """A cold-path read of a broken state database (its main file overwritten: "file is
    not a database") is UNAVAILABLE store_unavailable, as the API promises for a store
    that is down (it escaped as a raw sqlite3 error: INTERNAL `internal`)."""

    async def body(r: Rig) -> None:
        r.store.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with r.state_path.open("r+b") as f:
            f.write(b"\xff" * 16384)
        with pytest.raises(Unavailable) as refused:
            await r.engine.begin_task(ME, task_id="named", goal="g", max_duration=60, labels={})
        assert refused.value.reason is Reason.STORE_UNAVAILABLE
        assert r.engine.task("named") is None

    run(tmp_path, body)


def test_a_failing_grant_end_listener_never_stops_a_revocation(tmp_path: Path) -> None:
    """Grant-end listeners hear of each end in memory, before the commit; one that raises
    is logged and skipped: the grant still ends, later listeners still hear, the end is
    audited."""
    heard: list[tuple[str, str]] = []

    def broken(grant: Any) -> None:
        raise RuntimeError("listener bug")

    async def body(r: Rig) -> None:
        r.grant_end.subscribe(broken)
        r.grant_end.subscribe(lambda g: heard.append((g.grant_id, g.end_reason or "")))
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        out = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        assert out.grant is not None
        heard.append(("issued", out.grant.grant_id))
        _, count = await r.engine.complete_task(ME, task.task_id, Outcome.SUCCEEDED)
        heard.append(("revoked", str(count)))
        heard.append(("active", str((await r.engine.introspect(out.token)).active)))

    rig = run(tmp_path, body)
    grant_id = heard[0][1]
    assert heard[1:] == [(grant_id, "completed"), ("revoked", "1"), ("active", "False")]
    assert "grant_revoked" in rig.audit_path.read_text()


def test_four_eyes_refuses_owners_at_the_engine(tmp_path: Path) -> None:
    """Under the policy's four_eyes the engine refuses an approval by an owner (the
    decision's, or the identity's `owner` claim, any case) or by nobody: nothing decided,
    nothing audited; someone else's approval goes through and names them."""

    async def body(r: Rig) -> None:
        r.policy.result = VALID_JIT | {
            "approval_required": True,
            "four_eyes": True,
            "owners": ["alice@x"],
        }
        owned = Identity(ME.subject, "t", "oidc", claims={"owner": "carol@x"})
        task = await r.engine.begin_task(owned, task_id="", goal="g", max_duration=300, labels={})
        out = await r.engine.request_grant(
            owned, task.task_id, Intent("x.write", "x://1", justification="why"), 60
        )
        refused = []
        for who in ("alice@x", "CAROL@x", ""):
            with pytest.raises(PermissionDenied) as caught:
                await r.engine.decide_approval(
                    out.approval_id, approve=True, approver=who, reason=""
                )
            refused.append(caught.value.reason)
        decided_before = [
            rec for rec in records_after(r.audit_path, 0) if rec["event"] == "approval_decided"
        ]
        approval = await r.engine.decide_approval(
            out.approval_id, approve=True, approver="bob@x", reason="ok"
        )
        assert refused == [Reason.FOUR_EYES] * 3
        assert decided_before == []
        assert approval.decided_by == "bob@x"
        assert approval.decision.owners == ("alice@x", "carol@x")

    run(tmp_path, body)


class GatedPolicy(ScriptedPolicy):
    """Answers by action (`results`), its flow report's task_labels those of the input; a
    decision on `gated` waits for `release`."""

    def __init__(self, results: dict[str, Any], gated: str) -> None:
        super().__init__()
        self.results = results
        self.gated = gated
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def decide(self, policy_input: dict[str, Any]) -> Any:
        action = policy_input["intent"]["action"]
        self.result = dict(self.results[action])
        if "flow" in self.result:  # as flows.rego reports it: the labels the input held
            held = policy_input["task"]["flow_labels"]
            self.result["flow"] = self.result["flow"] | {"task_labels": held}
        decision = await super().decide(policy_input)
        if action == self.gated:
            self.entered.set()
            await self.release.wait()
        return decision


def test_a_batch_decision_is_cached_under_the_flow_it_was_made_on(tmp_path: Path) -> None:
    """A batch item's standing decision, made while a concurrent denial changed the task's
    flow, is cached under the flow the policy saw (no denial), never under the flow as it
    is once the policy answered: the next request, with the denial counted (probing), asks
    the policy again."""
    from sidecar.engine.batch import BatchItem

    async def body(r: Rig) -> None:
        standing = VALID_JIT | {"tier": "standing", "cache_seconds": 30}
        policy = GatedPolicy(
            {
                "x.read": standing,
                "y.read": standing,
                "z.write": {"allow": False, "reasons": ["no: no"]},
            },
            gated="x.read",
        )
        r.engine.policy = policy
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        items = [BatchItem(Intent("x.read", "x://1"), 30), BatchItem(Intent("y.read", "y://1"), 30)]
        batch = asyncio.ensure_future(r.engine.request_grants(ME, task.task_id, items))
        await policy.entered.wait()
        denial = await r.engine.request_grant(ME, task.task_id, Intent("z.write", "z://1"), 30)
        assert denial.decision == "denied"
        policy.release.set()
        assert [x.decision for x in await batch] == ["granted", "granted"]  # type: ignore[union-attr]
        asked = len(policy.inputs)
        await r.engine.request_grant(ME, task.task_id, Intent("x.read", "x://1"), 30)
        assert len(policy.inputs) == asked + 1
        assert policy.inputs[-1]["task"]["denials"] != []

    rig = run(tmp_path, body)
    assert rig.value("jit_policy_cache_total", result="hit") == 0


def test_a_cached_decision_never_answers_another_task_with_recent_denials(
    tmp_path: Path,
) -> None:
    """Two tasks of one agent with the same labels and as many denials, one's long past the
    probing window and the other's just now: the standing decision cached for the first is
    not the second's (its recent denials escalate it), the policy is asked again."""

    async def body(r: Rig) -> None:
        standing = VALID_JIT | {"tier": "standing", "cache_seconds": 30}
        no = {"allow": False, "reasons": ["no: no"]}
        policy = GatedPolicy({"x.read": standing, "z.write": no}, gated="")
        r.engine.policy = policy
        old = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=3600, labels={})
        for _ in range(5):
            await r.engine.request_grant(ME, old.task_id, Intent("z.write", "z://1"), 30)
        r.clock.advance(700)
        await r.engine.request_grant(ME, old.task_id, Intent("x.read", "x://1"), 30)
        new = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=3600, labels={})
        for _ in range(5):
            await r.engine.request_grant(ME, new.task_id, Intent("z.write", "z://1"), 30)
        asked = len(policy.inputs)
        await r.engine.request_grant(ME, new.task_id, Intent("x.read", "x://1"), 30)
        assert len(policy.inputs) == asked + 1
        assert len(policy.inputs[-1]["task"]["denials"]) == 5

    rig = run(tmp_path, body)
    assert rig.value("jit_policy_cache_total", result="hit") == 0


def test_a_grant_being_committed_lends_its_flow_labels_to_concurrent_decisions(
    tmp_path: Path,
) -> None:
    """While a grant carrying private_data is being committed (its token not yet returned),
    a concurrent request of the same task is decided with private_data among the task's
    flow labels: the window between a grant and its history is no way around the trifecta."""
    labelled = VALID_JIT | {
        "tier": "standing",
        "flow": {
            "class": "read",
            "labels": ["private_data"],
            "task_labels": [],
            "rules": [],
            "plan_deviation": False,
        },
    }

    async def body(r: Rig) -> None:
        policy = GatedPolicy({"c.read": labelled, "e.send": VALID_JIT}, gated="e.send")
        policy.release.set()  # e.send is only watched: `entered` says the policy has its input
        r.engine.policy = policy
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        entered, release = r.hold_store_writes()
        reading = asyncio.ensure_future(
            r.engine.request_grant(ME, task.task_id, Intent("c.read", "c://1"), 30)
        )
        await asyncio.to_thread(entered.wait, 10)
        sending = asyncio.ensure_future(
            r.engine.request_grant(ME, task.task_id, Intent("e.send", "e://1"), 30)
        )
        try:
            await asyncio.wait_for(policy.entered.wait(), 10)
        finally:
            release.set()
        await reading
        await sending
        assert policy.inputs[-1]["task"]["flow_labels"] == ["private_data"]
        assert task.flow.labels == {"private_data"}
        assert task.flow.held_labels() == {"private_data"}

    run(tmp_path, body)


def test_a_decision_made_before_a_concurrent_grant_is_asked_again(tmp_path: Path) -> None:
    """Two requests of one task at the policy together: the customer read (private_data)
    is issued while the email's decision, made without that label, is still out. The email
    is not issued on that decision: the policy is asked again, with private_data held."""
    flow = {"class": "read", "labels": [], "task_labels": [], "rules": [], "plan_deviation": False}
    labelled = VALID_JIT | {"tier": "standing", "flow": flow | {"labels": ["private_data"]}}

    async def body(r: Rig) -> None:
        policy = GatedPolicy(
            {"c.read": labelled, "e.send": VALID_JIT | {"flow": flow}}, gated="e.send"
        )
        r.engine.policy = policy
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        sending = asyncio.ensure_future(
            r.engine.request_grant(ME, task.task_id, Intent("e.send", "e://1"), 30)
        )
        await asyncio.wait_for(policy.entered.wait(), 10)
        await r.engine.request_grant(ME, task.task_id, Intent("c.read", "c://1"), 30)
        policy.release.set()
        await sending
        asked = [x for x in policy.inputs if x["intent"]["action"] == "e.send"]
        assert [x["task"]["flow_labels"] for x in asked] == [[], ["private_data"]]

    run(tmp_path, body)


def test_a_batch_item_decided_before_a_concurrent_grant_is_not_issued(tmp_path: Path) -> None:
    """A GrantStream message's email decided while a concurrent RequestGrant of the same
    task is issued a customer read (private_data): the email is not issued on a decision
    that did not see the label (UNAVAILABLE, to retry); the message's other item, whose
    decision did not depend on it either, is refused alike, and no grant is left behind."""
    from sidecar.engine.batch import BatchItem
    from sidecar.engine.issuance import FlowMoved

    flow = {"class": "read", "labels": [], "task_labels": [], "rules": [], "plan_deviation": False}
    labelled = VALID_JIT | {"tier": "standing", "flow": flow | {"labels": ["private_data"]}}

    async def body(r: Rig) -> None:
        policy = GatedPolicy(
            {"c.read": labelled, "e.send": VALID_JIT | {"flow": flow}, "y.read": VALID_JIT},
            gated="e.send",
        )
        r.engine.policy = policy
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=60, labels={})
        items = [BatchItem(Intent("e.send", "e://1"), 30), BatchItem(Intent("y.read", "y://1"), 30)]
        batch = asyncio.ensure_future(r.engine.request_grants(ME, task.task_id, items))
        await asyncio.wait_for(policy.entered.wait(), 10)
        await r.engine.request_grant(ME, task.task_id, Intent("c.read", "c://1"), 30)
        policy.release.set()
        results = await batch
        assert [type(x) for x in results] == [FlowMoved, FlowMoved]
        assert [g.action for g in r.engine.live.grants_of(task)] == ["c.read"]

    run(tmp_path, body)


def test_an_approval_collected_while_the_policy_is_down_can_be_collected_again(
    tmp_path: Path,
) -> None:
    """Collecting an approval asks the policy again: without an answer the collection is
    policy_unavailable and the approval stays approved, collected once the policy is back."""
    from sidecar.errors import PolicyUnavailable

    async def body(r: Rig) -> None:
        r.policy.result = VALID_JIT | {"approval_required": True}
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=3600, labels={})
        parked = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        await r.engine.decide_approval(
            parked.approval_id, approve=True, approver="ops", reason="ok"
        )
        r.policy.error = PolicyUnavailable("OPA is down", "unreachable")
        with pytest.raises(PolicyUnavailable):
            await r.engine.await_approval(ME, parked.approval_id, 0)
        r.policy.error = None
        collected = await r.engine.await_approval(ME, parked.approval_id, 0)
        assert collected.decision == "granted"
        assert r.engine.active_grant_count == 1

    run(tmp_path, body, heartbeat_interval=1000)
