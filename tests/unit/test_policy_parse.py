"""Decision parsing trusts nothing OPA answers unchecked."""

from __future__ import annotations

import json

import pytest

from sidecar.errors import PolicyResultInvalid
from sidecar.model import Tier
from sidecar.policy import parse_decision

ALLOW = {
    "allow": True,
    "tier": "jit",
    "ttl_seconds": 60,
    "audience": "api",
    "scope": ["a.write"],
    "reasons": ["ok"],
    "cache_seconds": 30,
}


def parse(result: object, **extra: object) -> object:
    return parse_decision(json.dumps({"result": result, **extra}).encode(), action="a.write")


def test_valid_decision_and_decision_id() -> None:
    """A well-formed decision parses; OPA's decision_id is kept; JIT is never cacheable."""
    d = parse(ALLOW, decision_id="abc")
    assert d.allow
    assert d.tier is Tier.JIT
    assert d.decision_id == "abc"
    assert d.cache_seconds == 0


def test_deny_needs_only_allow() -> None:
    """A deny parses with its reasons; other fields are ignored."""
    d = parse({"allow": False, "reasons": ["no"]})
    assert not d.allow
    assert d.reasons == ("no",)


def test_scope_defaults_to_the_action() -> None:
    """No scope in an allow: the token's scope is the requested action."""
    d = parse({k: v for k, v in ALLOW.items() if k != "scope"})
    assert d.scope == ("a.write",)


@pytest.mark.parametrize(
    "result",
    [
        {"allow": 1},
        {"allow": True, "tier": "jit", "ttl_seconds": True, "audience": "a"},
        {"allow": True, "tier": "jit", "ttl_seconds": 0, "audience": "a"},
        {"allow": True, "tier": "jit", "ttl_seconds": 60, "audience": ""},
        ALLOW | {"scope": "a.write"},
        ALLOW | {"scope": ["a b"]},
        ALLOW | {"scope": []},
        ALLOW | {"reasons": [1]},
        ALLOW | {"approval_required": "no"},
        ALLOW | {"cache_seconds": -1},
        None,
    ],
)
def test_malformed_decisions_raise(result: object) -> None:
    """Every wrong type or missing required field is policy_result_invalid."""
    with pytest.raises(PolicyResultInvalid):
        parse(result)


def test_undefined_and_garbage() -> None:
    """No `result` is undefined; non-JSON is bad_json."""
    with pytest.raises(PolicyResultInvalid) as undefined:
        parse_decision(b"{}", action="a")
    with pytest.raises(PolicyResultInvalid) as garbage:
        parse_decision(b"\xff\xfe", action="a")
    assert undefined.value.cause == "undefined"
    assert garbage.value.cause == "bad_json"


CREDENTIAL = {
    "broker": "postgres",
    "database": "crm",
    "privileges": ["SELECT"],
    "tables": ["public.tickets"],
}


def test_credential_object_is_kept_for_its_broker() -> None:
    """An allow with a well-formed `credential` object carries it to the engine, whose
    broker validates the contents; a deny's credential is ignored."""
    allowed = parse(ALLOW | {"credential": CREDENTIAL})
    denied = parse({"allow": False, "credential": 7})
    assert allowed.credential == CREDENTIAL
    assert denied.credential is None
    assert parse(ALLOW).credential is None


@pytest.mark.parametrize(
    "credential",
    [
        None,
        "postgres",
        [],
        {},
        {"database": "crm"},
        CREDENTIAL | {"broker": "Postgres"},
        CREDENTIAL | {"broker": 1},
        CREDENTIAL | {"privileges": [1]},
        CREDENTIAL | {"privileges": [""]},
        CREDENTIAL | {"nested": {"a": 1}},
        CREDENTIAL | {"flag": True},
        CREDENTIAL | {"ratio": 0.5},
        CREDENTIAL | {"x" * 65: "long name"},
        CREDENTIAL | {f"k{i}": "v" for i in range(16)},
    ],
)
def test_malformed_credential_objects_raise(credential: object) -> None:
    """A `credential` that is not a small object naming a broker, with string, integer or
    string-list members, is policy_result_invalid (shape): no grant, never a guess."""
    with pytest.raises(PolicyResultInvalid) as caught:
        parse(ALLOW | {"credential": credential})
    assert caught.value.cause == "shape"
    assert "credential" in caught.value.message


def test_four_eyes_and_owners_parse() -> None:
    """`four_eyes` and `owners` are optional; given, they are kept as the policy said."""
    plain = parse(ALLOW)
    assert (plain.four_eyes, plain.owners) == (False, ())
    d = parse({**ALLOW, "approval_required": True, "four_eyes": True, "owners": ["a@x", "b@x"]})
    assert (d.four_eyes, d.owners) == (True, ("a@x", "b@x"))


@pytest.mark.parametrize(
    "extra",
    [
        {"four_eyes": "true"},
        {"four_eyes": 1},
        {"four_eyes": None},
        {"owners": "alice@example.com"},
        {"owners": [""]},
        {"owners": [42]},
        {"owners": ["x"] * 33},
    ],
)
def test_malformed_four_eyes_fields_raise(extra: dict[str, object]) -> None:
    """A mistyped four-eyes field is an invalid decision (no token), never a silent off."""
    with pytest.raises(PolicyResultInvalid) as caught:
        parse({**ALLOW, "approval_required": True, **extra})
    assert caught.value.reason.value == "policy_result_invalid"
