"""The fleet's revocation view: pure rules, with a hand-moved monotonic clock."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.revocations import STALE, Revocation, RevocationView, grant_from_claims
from sidecar.store.redis_connect import redacted
from sidecar.store.redis_layout import Keys, key_value, parse_key

NOW = 1_800_000_000.0


class Mono:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "jti": "g1",
        "txn": "t1",
        "sub": "spiffe://example.org/x/docs",
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 50,
        "aud": "docs",
        "scope": "docs.read",
        "tier": "jit",
        "authorization_details": [
            {"type": "jit_intent", "actions": ["docs.read"], "locations": ["docs://a"]}
        ],
    }
    base.update(overrides)
    base.setdefault("client_id", base["sub"])  # RFC 9068 §2.2: every token of ours has it
    return base


@pytest.fixture
def view() -> tuple[RevocationView, Mono]:
    mono = Mono()
    v = RevocationView(2.0, monotonic=mono)
    v.mark_synced(mono.value)
    return v, mono


def test_member_round_trip_and_malformed_members() -> None:
    """An index member parses back to the same revocation; anything malformed is None."""
    rev = Revocation("subject", "spiffe://x", NOW, "kill_switch", NOW + 900, "b")
    back = Revocation.from_member(rev.member(), NOW + 900)
    assert back == rev
    for bad in ("", "[]", '["grant"]', '["nope","x",0,"r","o"]', '["grant","",0,"r","o"]', "{"):
        assert Revocation.from_member(bad, NOW) is None
    assert Revocation.from_member('["all","",1.5,"kill_switch","a"]', NOW) is not None


def test_grant_revocation_bars_until_it_expires(view: tuple[RevocationView, Mono]) -> None:
    """A revoked jti is barred with its reason until the grant's own expiry."""
    v, _ = view
    v.add(Revocation("grant", "g1", 0.0, "completed", NOW + 50, "a"))
    assert v.barred(claims(), NOW) == "completed"
    assert v.barred(claims(jti="g2"), NOW) == ""
    assert v.barred(claims(), NOW + 50) == ""
    assert v.prune(NOW + 50) == 1
    assert len(v) == 0


def test_cutoffs_bar_tokens_issued_at_or_before_them(view: tuple[RevocationView, Mono]) -> None:
    """Subject, task and global cutoffs bar tokens with iat ≤ cutoff, not later ones; a
    token without a usable iat counts as issued before every cutoff."""
    v, _ = view
    cut = NOW - 5
    v.add(Revocation("subject", "spiffe://example.org/x/docs", cut, "kill_switch", NOW + 900))
    assert v.barred(claims(iat=int(cut)), NOW) == "kill_switch"
    assert v.barred(claims(iat=int(cut) + 1), NOW) == ""
    assert v.barred(claims(sub="spiffe://example.org/y/docs"), NOW) == ""
    assert v.barred(claims(iat="soon"), NOW) == "kill_switch"
    assert v.barred(claims(iat=None, sub="spiffe://example.org/x/docs"), NOW) == "kill_switch"
    v.add(Revocation("task", "t9", cut, "revoked_by_operator", NOW + 600))
    assert v.barred(claims(txn="t9", sub="other"), NOW) == "revoked_by_operator"
    v.add(Revocation("all", "", cut, "kill_switch", NOW + 900))
    assert v.barred(claims(sub="anyone", txn="t0"), NOW) == "kill_switch"
    assert v.barred(claims(sub="anyone", txn="t0", iat=int(NOW)), NOW) == ""


def test_a_later_cutoff_supersedes_and_merging_is_idempotent(
    view: tuple[RevocationView, Mono],
) -> None:
    """Merging is a union: the later cutoff wins, an older or repeated one changes nothing."""
    v, _ = view
    sub = "spiffe://x"
    assert v.add(Revocation("subject", sub, NOW - 100, "kill_switch", NOW + 800))
    assert v.add(Revocation("subject", sub, NOW - 10, "kill_switch", NOW + 890))
    assert not v.add(Revocation("subject", sub, NOW - 100, "kill_switch", NOW + 800))
    assert not v.add(Revocation("subject", sub, NOW - 10, "kill_switch", NOW + 890))
    assert v.barred(claims(sub=sub, iat=int(NOW) - 20), NOW) == "kill_switch"
    assert v.prune(NOW + 850) == 0  # the later entry still holds
    assert v.barred(claims(sub=sub, iat=int(NOW) - 20), NOW + 850) == "kill_switch"


def test_stale_view_bars_everything(view: tuple[RevocationView, Mono]) -> None:
    """Beyond the staleness bound every token is barred (fail closed); a sync clears it;
    a view never synchronised is stale."""
    v, mono = view
    assert v.barred(claims(), NOW) == ""
    mono.value += 2.5
    assert v.is_stale()
    assert v.barred(claims(), NOW) == STALE
    v.mark_synced(mono.value - 0.1)
    assert v.barred(claims(), NOW) == ""
    assert RevocationView(2.0, monotonic=mono).barred(claims(), NOW) == STALE


def test_grant_from_claims() -> None:
    """A well-formed token of another sidecar describes its grant; a malformed one nothing."""
    grant = grant_from_claims(claims(cnf={"jkt": "abc"}))
    assert grant is not None
    assert (grant.grant_id, grant.task_id, grant.action, grant.resource) == (
        "g1",
        "t1",
        "docs.read",
        "docs://a",
    )
    assert grant.cnf_jkt == "abc"
    assert grant.scope == ("docs.read",)
    assert grant_from_claims(claims(authorization_details=[])) is None
    assert grant_from_claims(claims(tier="gold")) is None
    assert grant_from_claims(claims(jti="")) is None


def test_key_registrations_never_carry_private_members() -> None:
    """A key registration keeps public members only; one carrying a private member, a
    symmetric key or an unexpected algorithm is refused on read."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k1", "alg": "EdDSA", "d": "secret"}
    value = key_value(jwk, "a", NOW)
    assert "secret" not in value
    key = parse_key("k1", value)
    assert key is not None
    assert key.owner == "a"
    assert key.expires_at == NOW
    forged = value.replace('"x":"abc"', '"x":"abc","d":"leak"')
    assert parse_key("k1", forged) is None
    symmetric = key_value({"kty": "oct", "k": "c2VjcmV0", "kid": "k1", "alg": "HS256"}, "a", NOW)
    assert parse_key("k1", symmetric) is None
    assert parse_key("k1", value.replace("EdDSA", "none")) is None
    assert parse_key("other", value) is None
    assert parse_key("k1", "not json") is None


def test_key_layout_and_redaction() -> None:
    """A task's keys share its hash tag, fleet keys share the prefix tag; URLs lose their
    password before they are logged."""
    k = Keys("jit")
    assert {k.task("t1"), k.task_grants("t1"), k.grant("t1", "g")} == {
        "jit:{t:t1}:task",
        "jit:{t:t1}:grants",
        "jit:{t:t1}:grant:g",
    }
    assert {k.feed, k.revocations, k.keyset, k.epoch, k.key("kid")} == {
        "{jit}:feed",
        "{jit}:revocations",
        "{jit}:keys",
        "{jit}:epoch",
        "{jit}:key:kid",
    }
    assert redacted("rediss://svc:s3cret@redis:6380/0") == "rediss://svc:***@redis:6380/0"
    assert redacted("redis://:s3cret@redis") == "redis://***@redis"
    assert redacted("redis://redis:6379") == "redis://redis:6379"
    assert redacted("rediss://fleet@redis:6380") == "rediss://fleet@redis:6380"
