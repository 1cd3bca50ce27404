"""The engine's side of a fleet, with a hand-moved clock, real SQLite, the real journal and
a real RevocationView behind a test gate (tests/fakes.py `ViewGate`): cutoffs applied to
this sidecar's own grants, grants refused while the fleet cannot see them, other sidecars'
tokens introspected from the view."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.approvals import ApprovalState
from sidecar.brokers.base import Lease
from sidecar.egress.grants import EngineGrants
from sidecar.engine.exchange import ExchangeRequest
from sidecar.errors import Unavailable
from sidecar.jws import verify_key_from_jwk
from sidecar.model import AccessEnded, Intent, Outcome
from sidecar.oidc import OidcKeys
from sidecar.principals import PrincipalVerifier, person_rules
from sidecar.revocations import STALE, Revocation
from sidecar.tokens import SigningKey, generate_private_key
from tests.fakes import VALID_JIT, ManualClock, ViewGate
from tests.identity_kit import Key
from tests.unit.test_engine import ME, OTHER, Rig


class FleetRig(Rig):
    def __init__(self, tmp: Path, *, clock: ManualClock | None = None, **settings: Any) -> None:
        clock = clock or ManualClock(1_800_000_000.0)
        self.gate = ViewGate(clock)
        super().__init__(tmp, clock=clock, fleet=self.gate, **settings)


def fleet_rig(tmp_path: Path, body: Any, **settings: Any) -> FleetRig:
    rig = FleetRig(tmp_path, **settings)
    try:
        asyncio.run(body(rig))
    finally:
        rig.close()
    return rig


def records(rig: Rig, event: str) -> list[dict[str, Any]]:
    lines = rig.audit_path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_kill_switch_from_elsewhere_ends_only_what_its_cutoff_covers(tmp_path: Path) -> None:
    """A subject cutoff made on another sidecar ends this sidecar's tasks of that subject
    begun at or before the cutoff (kill_switch, with origin and detail), leaves a task begun
    after it and other subjects alone, and agrees with the view on every token."""

    async def body(r: FleetRig) -> None:
        e = r.engine
        old = await e.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        g_old = await e.request_grant(ME, old.task_id, Intent("x.write", "x://1"), 60)
        other = await e.begin_task(OTHER, task_id="", goal="g", max_duration=300, labels={})
        g_other = await e.request_grant(OTHER, other.task_id, Intent("x.write", "x://1"), 60)
        cutoff = r.clock.now() + 0.5
        r.clock.advance(2)
        new = await e.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        g_new = await e.request_grant(ME, new.task_id, Intent("x.write", "x://2"), 60)
        rev = Revocation("subject", ME.subject, cutoff, "kill_switch", cutoff + 900, "b", "stop")
        r.gate.view.add(rev)
        assert await e.apply_fleet_revocation(rev) == 1
        assert await e.apply_fleet_revocation(rev) == 0  # applied once
        states = [(await e.introspect(g.token)).active for g in (g_old, g_new, g_other)]
        assert states == [False, True, True]
        assert e.task(old.task_id) is None
        assert e.task(new.task_id) is not None

    rig = fleet_rig(tmp_path, body)
    (revoked,) = records(rig, "grant_revoked")
    (ended,) = records(rig, "task_completed")
    assert (revoked["reason"], revoked["origin"]) == ("kill_switch", "b")
    assert (ended["state"], ended["origin"], ended["detail"]) == ("failed", "b", "from b: stop")


def test_grants_wait_while_the_fleet_cannot_see_them(tmp_path: Path) -> None:
    """With the shared state unavailable no grant is issued (Unavailable store_unavailable,
    audited as a rejection, no grant_issued), and an approved request is not used up: it
    yields its grant once the fleet is back."""

    async def body(r: FleetRig) -> None:
        e = r.engine
        task = await e.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        r.gate.issuable = False
        with pytest.raises(Unavailable) as refused:
            await e.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        assert refused.value.reason.value == "store_unavailable"
        r.policy.result = VALID_JIT | {"approval_required": True}
        parked = await e.request_grant(ME, task.task_id, Intent("x.write", "x://2"), 60)
        await e.decide_approval(parked.approval_id, approve=True, approver="ops", reason="ok")
        with pytest.raises(Unavailable):
            await e.await_approval(ME, parked.approval_id, 0)
        (approval,) = e.open_approvals()
        assert approval.state is ApprovalState.APPROVED
        r.gate.issuable = True
        out = await e.await_approval(ME, parked.approval_id, 0)
        assert out.decision == "granted"

    rig = fleet_rig(tmp_path, body)
    assert len(records(rig, "grant_issued")) == 1  # only the approved one, once back
    (rejected,) = records(rig, "request_rejected")
    assert rejected["reason"] == "store_unavailable"


def test_tokens_of_other_sidecars_introspect_from_the_view(tmp_path: Path) -> None:
    """A token another sidecar signed is active while the view does not bar it and its time
    claims hold; revoked, expired, or anything while the view is stale is inactive."""
    other_key = SigningKey.from_private_key(generate_private_key("EdDSA"))

    async def body(r: FleetRig) -> None:
        r.gate.keys[other_key.kid] = other_key.jwk
        now = int(r.clock.now())
        claims = {
            "iss": r.engine.settings.issuer,
            "sub": OTHER.subject,
            "client_id": OTHER.subject,
            "aud": "x",
            "iat": now,
            "nbf": now,
            "exp": now + 60,
            "jti": "remote-grant",
            "txn": "t-remote",
            "scope": "x.write",
            "tier": "jit",
            "authorization_details": [
                {"type": "jit_intent", "actions": ["x.write"], "locations": ["x://1"]}
            ],
        }
        token = other_key.sign(claims)
        active = await r.engine.introspect(token)
        assert active.active
        assert active.grant is not None
        assert (active.grant.grant_id, active.grant.task_id) == ("remote-grant", "t-remote")
        assert not (await r.engine.introspect(other_key.sign(claims | {"iss": "evil"}))).active
        r.gate.mono = 3.0
        stale = await r.engine.introspect(token)
        assert (stale.active, stale.revocation_reason) == (False, STALE)
        r.gate.view.mark_synced(3.0)
        r.gate.view.add(Revocation("task", "t-remote", now, "completed", now + 300, "b"))
        revoked = await r.engine.introspect(token)
        assert (revoked.active, revoked.revocation_reason) == (False, "completed")
        fresh = other_key.sign(claims | {"txn": "t-2", "exp": now + 10})
        r.clock.advance(10)
        expired = await r.engine.introspect(fresh)
        assert (expired.active, expired.revocation_reason) == (False, "expired")

    fleet_rig(tmp_path, body)


PEOPLE = "https://idp.example"


def _people_rig(tmp_path: Path, body: Any, **rig: Any) -> FleetRig:
    """A fleet rig whose engine verifies people's tokens signed by `rig.person_key` (keys
    served to a real PrincipalVerifier by an in-memory fetch); `rig` goes to FleetRig."""
    person_key = Key.generate("ES256")
    keys = OidcKeys(
        [PEOPLE],
        lambda _issuer: {person_key.kid: verify_key_from_jwk(person_key.public_jwk())},
        refresh=300,
        max_age=3600,
    )
    clock = ManualClock(1_800_000_000.0)
    verifier = PrincipalVerifier(
        keys, person_rules("people", 10, "https://jit"), claims=("groups",), clock=clock
    )
    fleet = FleetRig(tmp_path, clock=clock, principals=verifier, **rig)

    def person(sub: str) -> str:
        now = int(clock.now())
        claims = {"iss": PEOPLE, "sub": sub, "aud": "people", "iat": now, "exp": now + 300}
        return person_key.sign(claims | {"groups": ["support"]})

    async def run() -> None:
        await keys.fetch(PEOPLE)
        await body(fleet, person)

    try:
        asyncio.run(run())
    finally:
        fleet.close()
    return fleet


def test_kill_switch_by_person_from_elsewhere_ends_their_tasks_by_any_agent(
    tmp_path: Path,
) -> None:
    """A principal cutoff made on another sidecar ends this sidecar's tasks acting for that
    person, whichever agent runs them, and leaves another person's task and a task without
    a principal alone."""

    async def body(r: FleetRig, person: Any) -> None:
        e = r.engine
        mine = await e.begin_task(
            ME, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("alice")
        )
        theirs = await e.begin_task(
            OTHER, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("alice")
        )
        bob = await e.begin_task(
            ME, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("bob")
        )
        alone = await e.begin_task(ME, task_id="", goal="g", max_duration=300, labels={})
        grants = [
            await e.request_grant(ME, mine.task_id, Intent("x.write", "x://1"), 60),
            await e.request_grant(OTHER, theirs.task_id, Intent("x.write", "x://1"), 60),
            await e.request_grant(ME, bob.task_id, Intent("x.write", "x://1"), 60),
            await e.request_grant(ME, alone.task_id, Intent("x.write", "x://1"), 60),
        ]
        cutoff = r.clock.now() + 0.5
        rev = Revocation("principal", "alice", cutoff, "kill_switch", cutoff + 900, "b", "")
        r.gate.view.add(rev)
        assert await e.apply_fleet_revocation(rev) == 2
        states = [(await e.introspect(g.token)).active for g in grants]
        assert states == [False, False, True, True]

    rig = _people_rig(tmp_path, body)
    ended = records(rig, "task_completed")
    assert {(r["subject"], r["principal"]["subject"]) for r in ended} == {
        (ME.subject, "alice"),
        (OTHER.subject, "alice"),
    }


def test_kill_switch_by_person_ends_brokered_credentials_and_tells_shared_signals(
    tmp_path: Path,
) -> None:
    """The local kill switch by person takes the common revocation path: the Shared Signals
    subscriber (`on_access_ended`) hears of each task it ends, and the broker lease of each
    of their grants is queued for revocation (reason kill_switch); another person's task
    and its lease are left alone."""
    told: list[AccessEnded] = []

    async def body(r: FleetRig, person: Any) -> None:
        e = r.engine
        alice = await e.begin_task(
            ME, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("alice")
        )
        bob = await e.begin_task(
            OTHER, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("bob")
        )
        hers = await e.request_grant(ME, alice.task_id, Intent("x.write", "x://1"), 60)
        his = await e.request_grant(OTHER, bob.task_id, Intent("x.write", "x://1"), 60)
        for n, outcome in enumerate((hers, his)):
            # What step 6 records for a brokered grant (no broker is needed to queue its end).
            assert outcome.grant is not None
            grant = e.live.grants[outcome.grant.grant_id]
            grant.lease = Lease("postgres", f"jit_{n}", grant.grant_id, grant.expires_at)
        assert await e.revoke_principal("alice", "account compromised") == 1
        assert r.credentials is not None
        due = {grant_id: d.reason for grant_id, d in r.credentials.due.items()}
        assert hers.grant is not None
        assert due == {hers.grant.grant_id: "kill_switch"}
        assert [(a.task_id, a.reason, a.grant_id) for a in told] == [
            (alice.task_id, "kill_switch", "")
        ]

    _people_rig(tmp_path, body, credentials=True, on_access_ended=told.extend)


def test_an_exchanged_grant_gets_no_downstream_credential(tmp_path: Path) -> None:
    """RFC 8693 exchange of a brokered grant's token copies no lease: the new grant holds no
    credential of its own, and ending it alone queues no broker revocation (the lease stays
    its parent's, revoked with the parent)."""

    async def body(r: FleetRig, person: Any) -> None:
        e = r.engine
        task = await e.begin_task(
            ME, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("alice")
        )
        outcome = await e.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        assert outcome.grant is not None
        parent = e.live.grants[outcome.grant.grant_id]
        parent.lease = Lease("postgres", "jit_0", parent.grant_id, parent.expires_at)
        exchanged = await e.exchange_token(ExchangeRequest(outcome.token))
        child = exchanged.grant.grant_id
        assert exchanged.grant.lease is None
        assert (await e.introspect(exchanged.token)).grant is not None
        revoked, _ = await e.revoke_grant(ME, child)
        assert revoked
        assert r.credentials is not None
        assert r.credentials.due == {}
        await e.complete_task(ME, task.task_id, Outcome.SUCCEEDED, "")
        assert set(r.credentials.due) == {parent.grant_id}

    rig = _people_rig(tmp_path, body, credentials=True)
    issued = [r for r in records(rig, "grant_issued") if r.get("exchanged_from")]
    assert len(issued) == 1
    assert records(rig, "credential_issued") == []


def test_the_egress_proxy_honours_a_delegated_token_by_its_agent(tmp_path: Path) -> None:
    """A delegated token (`sub` the person, `client_id` the agent) is active for the egress
    proxy, matched on the agent that owns the grant, and stops being so with its task."""
    seen: dict[str, Any] = {}

    async def body(r: FleetRig, person: Any) -> None:
        e = r.engine
        grants = EngineGrants(e, r.grant_end)
        task = await e.begin_task(
            ME, task_id="", goal="g", max_duration=300, labels={}, subject_token=person("alice")
        )
        outcome = await e.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 60)
        seen["active"] = grants.active(outcome.token, r.clock.now())
        await e.revoke_principal("alice", "account compromised")
        seen["after"] = grants.active(outcome.token, r.clock.now())
        seen["why"] = grants.why_inactive(outcome.token, r.clock.now())

    _people_rig(tmp_path, body)
    assert seen["active"] is not None
    assert seen["active"].subject == ME.subject
    assert seen["active"].claims["sub"] == "alice"
    assert seen["after"] is None
    assert seen["why"] == "kill_switch"
