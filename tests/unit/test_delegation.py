"""Delegation's pure parts: the audit stamp, the act claim in tokens and in the verifier,
the may_act answer's type check, and the fleet's barring by person."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.engine.delegation import TaskPrincipals, actor_claim, actor_subject
from sidecar.errors import PolicyResultInvalid
from sidecar.events import GrantDenied, KeyRotated, TaskBegun
from sidecar.model import Grant, Principal, Tier
from sidecar.policy import parse_may_act
from sidecar.revocations import Revocation, RevocationView, grant_from_claims
from sidecar.tokens import access_token_claims
from sidecar.verify import MAX_ACTOR_DEPTH, TokenRejected, actor_chain

NOW = 1_800_000_000.0
ALICE = Principal("alice", "https://idp.example", {"groups": ["support"]})
AGENT = "spiffe://jit.local/agent/billing"


def _grant(**overrides: Any) -> Grant:
    fields: dict[str, Any] = {
        "grant_id": "g1",
        "task_id": "t1",
        "subject": AGENT,
        "action": "tickets.update",
        "resource": "tickets://t-1",
        "tier": Tier.JIT,
        "audience": "tickets",
        "scope": ("tickets.update",),
        "issued_at": NOW,
        "expires_at": NOW + 60,
        "kid": "k",
    }
    fields.update(overrides)
    return Grant(**fields)


def _begun(task_id: str = "t1") -> TaskBegun:
    return TaskBegun(
        time="2027-01-15T08:00:00Z",
        task_id=task_id,
        subject=AGENT,
        expires_at="2027-01-15T09:00:00Z",
        heartbeat_interval_seconds=5,
    )


def test_stamp_names_the_person_in_every_record_of_the_task() -> None:
    """task_begun gets subject, issuer and claims; other records subject and issuer; records
    of other tasks and without a task are unchanged."""
    principals = TaskPrincipals()
    principals.add("t1", ALICE)
    begun = principals.stamp(_begun())
    denied = principals.stamp(
        GrantDenied(time="t", task_id="t1", subject=AGENT, intent={}, reasons=["x"])
    )
    other = principals.stamp(_begun("t2"))
    key = principals.stamp(KeyRotated(time="t", kid="k", jwk={}))
    assert begun.record()["principal"] == {
        "subject": "alice",
        "issuer": "https://idp.example",
        "claims": {"groups": ["support"]},
    }
    assert denied.record()["principal"] == {"subject": "alice", "issuer": "https://idp.example"}
    assert "principal" not in other.record()
    assert "principal" not in key.record()


def test_stamp_keeps_ended_tasks_for_a_while_then_forgets() -> None:
    """Records after a task ends still name its person, within the bound."""
    principals = TaskPrincipals(recently_ended=2)
    for task_id in ("t1", "t2", "t3"):
        principals.add(task_id, ALICE)
        principals.end(task_id)
    assert principals.get("t1") is None
    assert principals.get("t2") == ALICE
    assert principals.get("t3") == ALICE


def test_delegated_token_claims() -> None:
    """sub = the person, act = the agent, client_id = the agent; plain tokens unchanged."""
    delegated = access_token_claims(
        _grant(principal="alice", actor=actor_claim(AGENT)), "https://jit"
    )
    plain = access_token_claims(_grant(), "https://jit")
    assert (delegated["sub"], delegated["client_id"], delegated["act"]) == (
        "alice",
        AGENT,
        {"sub": AGENT},
    )
    assert (plain["sub"], plain["client_id"]) == (AGENT, AGENT)
    assert "act" not in plain


def test_actor_claim_nests_the_chain() -> None:
    """RFC 8693 §4.1: the new actor outermost, the previous chain inside."""
    chain = actor_claim("spiffe://x/c", actor_claim("spiffe://x/b", actor_claim("spiffe://x/a")))
    assert chain == {
        "sub": "spiffe://x/c",
        "act": {"sub": "spiffe://x/b", "act": {"sub": "spiffe://x/a"}},
    }
    assert actor_subject(chain) == "spiffe://x/c"
    assert actor_subject(None) == ""
    assert actor_chain({"act": chain}) == ("spiffe://x/c", "spiffe://x/b", "spiffe://x/a")
    assert actor_chain({}) == ()


@pytest.mark.parametrize(
    "act",
    [
        "spiffe://x/a",
        {"sub": 1},
        {"sub": ""},
        {"sub": "a", "act": ["b"]},
        {"sub": "a", "act": {"client_id": "b"}},
    ],
)
def test_a_malformed_act_is_malformed(act: Any) -> None:
    """Every level must be an object with a non-empty string sub."""
    with pytest.raises(TokenRejected) as err:
        actor_chain({"act": act})
    assert err.value.reason == "malformed"


def test_an_act_chain_deeper_than_the_bound_is_malformed() -> None:
    """The verifier reads at most MAX_ACTOR_DEPTH actors."""
    act: dict[str, Any] = {"sub": "a0"}
    for i in range(1, MAX_ACTOR_DEPTH):
        act = {"sub": f"a{i}", "act": act}
    assert len(actor_chain({"act": act})) == MAX_ACTOR_DEPTH
    with pytest.raises(TokenRejected) as err:
        actor_chain({"act": {"sub": "one-too-many", "act": act}})
    assert err.value.reason == "malformed"


def test_may_act_answer_is_type_checked() -> None:
    """allow must be a boolean and reasons strings; undefined and garbage are errors."""
    assert parse_may_act(b'{"result": {"allow": true}}') == (True, ())
    assert parse_may_act(b'{"result": {"allow": false, "reasons": ["may_act: no"]}}') == (
        False,
        ("may_act: no",),
    )
    causes = []
    for body in (b"{}", b"nope", b'{"result": {"allow": "yes"}}', b'{"result": []}'):
        with pytest.raises(PolicyResultInvalid) as err:
            parse_may_act(body)
        causes.append(err.value.cause)
    assert causes == ["undefined", "bad_json", "shape", "shape"]


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = access_token_claims(
        _grant(principal="alice", actor=actor_claim(AGENT), issued_at=NOW - 10), "https://jit"
    )
    claims.update(overrides)
    return claims


def test_fleet_bars_delegated_tokens_by_person_and_by_agent() -> None:
    """A person's order bars delegated tokens whose sub is them (not an agent's own token
    with the same sub); an agent's order bars its delegated tokens through client_id."""
    by_person = RevocationView(2.0, monotonic=lambda: 0.0)
    by_person.mark_synced(0.0)
    assert by_person.add(Revocation("principal", "alice", NOW, "kill_switch", NOW + 900))
    undelegated = _claims()
    del undelegated["act"]
    assert by_person.barred(_claims(), NOW) == "kill_switch"
    assert by_person.barred(undelegated, NOW) == ""
    assert by_person.barred(_claims(iat=int(NOW) + 5), NOW) == ""  # issued after the order

    by_agent = RevocationView(2.0, monotonic=lambda: 0.0)
    by_agent.mark_synced(0.0)
    assert by_agent.add(Revocation("subject", AGENT, NOW, "kill_switch", NOW + 900))
    assert by_agent.barred(_claims(), NOW) == "kill_switch"


def test_grant_from_claims_reads_the_agent_and_the_person() -> None:
    """A fleet peer's delegated token: the grant's subject is client_id, its person sub."""
    grant = grant_from_claims(_claims())
    assert grant is not None
    assert (grant.subject, grant.principal, grant.actor) == (AGENT, "alice", {"sub": AGENT})
