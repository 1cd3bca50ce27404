"""The egress proxy's pure parts (canonical paths, routes, header hygiene, masking, settings),
its secret sources, and `EngineGrants` over a real engine (real SQLite, audit file and
journal; scripted policy, hand-moved clock)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.brokers import BrokerUnavailable
from sidecar.brokers.oauth2 import ClientCredentials, OAuth2Broker
from sidecar.brokers.sources import EnvSecret, SecretFile, secret_id
from sidecar.egress.grants import EngineGrants
from sidecar.egress.hygiene import (
    Redactor,
    agent_response_headers,
    smuggling_problem,
    upstream_request_headers,
)
from sidecar.egress.routes import (
    PathRefused,
    Route,
    parse_resource,
    parse_route,
    parse_target,
)
from sidecar.egress.settings import build_broker, parse_egress_settings
from sidecar.errors import ConfigError, PolicyResultInvalid
from sidecar.model import Intent, Outcome
from tests.unit.test_engine import ME, Rig, run


def _forged(token: str) -> str:
    """The token with one signature byte changed: always a different, invalid signature
    (changing the last base64url characters may only touch padding bits)."""
    head, payload, signature = token.split(".")
    i = len(signature) // 2
    flipped = "B" if signature[i] == "A" else "A"
    return f"{head}.{payload}.{signature[:i]}{flipped}{signature[i + 1 :]}"


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# ---------------------------------------------------------------------- paths and routes
def test_target_is_taken_apart_without_decoding() -> None:
    """`/<upstream>/<segments>?query` splits into its parts exactly as sent."""
    target = parse_target("/ticket-api/tickets/42/a%20b?x=1&y=%2F")
    assert target.upstream == "ticket-api"
    assert target.segments == ("tickets", "42", "a%20b")
    assert target.query == "x=1&y=%2F"
    assert parse_target("/ticket-api/").segments == ()


@pytest.mark.parametrize(
    "raw",
    [
        "/ticket-api/tickets/../admin",
        "/ticket-api/./tickets",
        "/ticket-api/tickets//42",
        "/ticket-api/tickets/42/",
        "/ticket-api/%74ickets",
        "/ticket-api/tickets/4%2f2",
        "/ticket-api/tickets/4%2F2",
        "/ticket-api/tickets/4%5C2",
        "/ticket-api/tickets/%zz",
        "/Ticket-API/tickets",
        "/ticket-api/tickets\\42",
        "/ticket-api/tick ets",
        "ticket-api/tickets",
        "/ticket-api/tickets#frag",
    ],
)
def test_non_canonical_targets_are_refused(raw: str) -> None:
    """Every second spelling of a path (RFC 3986 §6.2.2, §5.2.4) is refused, not rewritten."""
    with pytest.raises(PathRefused) as refused:
        parse_target(raw)
    assert str(refused.value)


def test_resources_follow_the_same_rules() -> None:
    """https-api resources parse into upstream and segments; other spellings are refused."""
    parts = parse_resource("https-api://ticket-api/tickets/42")
    assert (parts.authority, parts.segments) == ("ticket-api", ("tickets", "42"))
    for bad in ("tickets://x/1", "https-api://X/1", "https-api://x/a/../b", "https-api://x/a?b"):
        with pytest.raises(PathRefused):
            parse_resource(bad)


def test_route_coverage_is_segment_wise() -> None:
    """A subtree route covers its path and below, never a longer sibling (42 vs 420); an
    exact route covers its path only; methods must match."""
    read = Route("t", frozenset({"GET", "HEAD"}), ("tickets", "42"), subtree=True)
    create = Route("t", frozenset({"POST"}), ("tickets",), subtree=False)
    assert read.covers("GET", ("tickets", "42"))
    assert read.covers("HEAD", ("tickets", "42", "comments"))
    assert not read.covers("GET", ("tickets", "420"))
    assert not read.covers("GET", ("tickets",))
    assert not read.covers("POST", ("tickets", "42"))
    assert create.covers("POST", ("tickets",))
    assert not create.covers("POST", ("tickets", "42"))


def test_the_policy_route_may_not_reach_beyond_the_grant() -> None:
    """A route naming another upstream or other segments, or of the wrong shape, is a
    policy_result_invalid error, never a wider grant."""
    parts = parse_resource("https-api://ticket-api/tickets/42")
    good = {"upstream": "ticket-api", "methods": ["GET"], "segments": ["tickets", "42"]}
    assert parse_route({**good, "subtree": False}, parts).methods == frozenset({"GET"})
    bad_routes: list[Any] = [
        {**good, "subtree": False, "upstream": "other"},
        {**good, "subtree": False, "segments": ["tickets"]},
        {**good, "subtree": "yes"},
        {**good, "subtree": False, "methods": []},
        {**good, "subtree": False, "methods": ["get"]},
        {**good, "subtree": False, "extra": 1},
        ["not", "an", "object"],
    ]
    for bad in bad_routes:
        with pytest.raises(PolicyResultInvalid) as invalid:
            parse_route(bad, parts)
        assert invalid.value.cause == "shape"


# ---------------------------------------------------------------------- hygiene
def test_ambiguous_framing_is_named() -> None:
    """TE with CL, two CLs and a folded line are each refused with the RFC that says so."""
    te_cl = _headers(("Transfer-Encoding", "chunked"), ("Content-Length", "4"))
    two_cl = _headers(("Content-Length", "4"), ("Content-Length", "4"))
    folded = [(b"X-A", b"a\r\n b")]
    assert "RFC 9112 §6.1" in str(smuggling_problem(te_cl, []))
    assert "RFC 9112 §6.3" in str(smuggling_problem(two_cl, []))
    assert "obs-fold" in str(smuggling_problem(_headers(), folded))
    assert smuggling_problem(_headers(("Content-Length", "4")), [(b"Content-Length", b"4")]) is None


def test_request_headers_lose_hop_by_hop_fields_and_the_agent_credential() -> None:
    """Connection-named, hop-by-hop and credential fields are dropped; the injected field
    replaces any the agent sent under the same name."""
    out = upstream_request_headers(
        _headers(
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "5"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Authorization", "Bearer agent-token"),
            ("DPoP", "proof"),
            ("X-Api-Key", "agent-guess"),
            ("Host", "127.0.0.1"),
            ("Accept", "application/json"),
            ("Content-Length", "12"),
        ),
        ("X-Api-Key", "the-secret"),
    )
    assert dict(out) == {
        "Accept": "application/json",
        "Content-Length": "12",
        "X-Api-Key": "the-secret",
    }


def test_response_headers_never_carry_the_secret() -> None:
    """A response field echoing the secret is dropped, as are hop-by-hop fields and the
    length and coding the proxy changes by decoding."""
    out = agent_response_headers(
        _headers(
            ("Connection", "X-Up"),
            ("X-Up", "1"),
            ("X-Echo", "key=the-secret"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", "10"),
            ("Content-Type", "application/json"),
        ),
        "the-secret",
    )
    assert dict(out) == {"Content-Type": "application/json"}


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 64])
def test_redactor_masks_a_secret_split_across_chunks(cut: int) -> None:
    """Whatever the chunking, every occurrence is masked and the length is unchanged."""
    body = b"head the-secret middle the-secretthe-secret tail the-secre"
    redactor = Redactor("the-secret")
    out = b"".join(redactor.feed(body[i : i + cut]) for i in range(0, len(body), cut))
    out += redactor.flush()
    assert out == body.replace(b"the-secret", b"*" * 10)
    assert redactor.hits == 3


# ---------------------------------------------------------------------- settings and secrets
def _settings(**upstream: Any) -> dict[str, Any]:
    base = {"url": "https://api.example/v1", "inject": "header", "secret_env": "K"}
    return {"listen": "127.0.0.1:0", "upstreams": {"ticket-api": {**base, **upstream}}}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({**_settings(), "listen": "0.0.0.0:9480"}, "loopback"),
        (_settings(url="http://api.example/v1"), "plain http"),
        (_settings(url="https://api.example/v1?x=1"), "no query"),
        (_settings(inject="vault"), "inject must be"),
        (_settings(format="Bearer"), "{secret}"),
        (_settings(secret_file="/k"), "exactly one"),
        (_settings(inject="oauth2"), "oauth2 needs"),
        (_settings(colour="blue"), "unknown setting"),
        ({"listen": "127.0.0.1:0", "upstreams": {"Tickets": {}}}, "lower-case"),
        ({"listen": "127.0.0.1:0"}, "at least one"),
    ],
)
def test_bad_egress_settings_are_refused_at_start(document: dict[str, Any], problem: str) -> None:
    """Each unusable egress setting is a ConfigError saying what is wrong."""
    with pytest.raises(ConfigError) as refused:
        parse_egress_settings(document, "egress.toml")
    assert problem in refused.value.message


def test_a_secret_missing_at_start_is_a_configuration_error(tmp_path: Path) -> None:
    """An unset variable or an unreadable file stops the start with a ConfigError naming
    where the secret was looked for (never a traceback at the first request)."""
    from_env = parse_egress_settings(_settings(), "egress.toml").upstreams["ticket-api"]
    from_file = parse_egress_settings(
        _settings(secret_env="", secret_file=str(tmp_path / "absent")), "egress.toml"
    ).upstreams["ticket-api"]
    with pytest.raises(ConfigError) as unset:
        build_broker(from_env, {}, 1.0)
    with pytest.raises(ConfigError) as unreadable:
        build_broker(from_file, {}, 1.0)
    assert "env:K is not set" in unset.value.message
    assert "absent" in unreadable.value.message
    assert build_broker(from_env, {"K": "v"}, 1.0).name == "static"


def test_secret_file_rotation_is_picked_up_without_restart(tmp_path: Path) -> None:
    """A replaced file is re-read once the poll interval has passed; a missing or empty one
    is an error, never an old or empty secret."""
    clock = [0.0]
    path = tmp_path / "key"
    path.write_text("first\n")
    source = SecretFile(path, broker="static", poll_interval=1.0, monotonic=lambda: clock[0])
    assert source.current() == "first"
    staged = tmp_path / "key.new"
    staged.write_text("second")
    os.replace(staged, path)
    assert source.current() == "first"  # within the poll interval
    clock[0] = 1.5
    assert source.current() == "second"
    path.write_text("")
    clock[0] = 3.0
    with pytest.raises(BrokerUnavailable) as empty:
        source.current()
    assert empty.value.cause == "secret_unreadable"
    path.unlink()
    clock[0] = 4.5
    with pytest.raises(BrokerUnavailable):
        source.current()
    assert "second" not in str(empty.value)


def test_env_secret_and_secret_id() -> None:
    """An env secret is read once; a multi-line value is refused; ids are hash prefixes."""
    assert EnvSecret("K", {"K": " v1 "}, broker="static").current() == "v1"
    with pytest.raises(BrokerUnavailable):
        EnvSecret("K", {"K": "a\r\nX-Injected: 1"}, broker="static")
    with pytest.raises(BrokerUnavailable):
        EnvSecret("MISSING", {}, broker="static")
    assert secret_id("v1") != secret_id("v2")
    assert len(secret_id("v1")) == 16


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"token_type": "Bearer"}',
        b'{"access_token": "a b", "token_type": "Bearer"}',
        b'{"access_token": "t", "token_type": "mac"}',
        b'{"access_token": "t", "token_type": "Bearer", "expires_in": 0}',
        b'{"access_token": "t", "token_type": "Bearer", "expires_in": true}',
    ],
)
def test_unusable_token_responses_are_refused(body: bytes) -> None:
    """Only a Bearer access token with a positive lifetime (RFC 6749 §5.1) is cached."""
    broker = OAuth2Broker(
        "crm",
        ClientCredentials("https://idp/token", "c", EnvSecret("S", {"S": "s"}, broker="oauth2")),
    )
    with pytest.raises(BrokerUnavailable) as refused:
        broker._parse(body, 0.0)
    assert refused.value.cause == "bad_response"


# ---------------------------------------------------------------------- the engine's side
def test_engine_grants_are_active_from_memory_and_their_end_is_announced(tmp_path: Path) -> None:
    """EngineGrants gives the grant of a live token, None once its task completed or its
    time ran out, says why for tokens it signed (never for a forged one), and announces
    each end with its reason."""
    ended: list[tuple[str, str]] = []
    seen: dict[str, Any] = {}

    async def body(r: Rig) -> None:
        grants = EngineGrants(r.engine, r.grant_end)
        grants.on_end(lambda grant_id, reason: ended.append((grant_id, reason)))
        task = await r.engine.begin_task(ME, task_id="", goal="g", max_duration=600, labels={})
        first = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://1"), 30)
        second = await r.engine.request_grant(ME, task.task_id, Intent("x.write", "x://2"), 50)
        now = r.clock.now()
        active = grants.active(first.token, now)
        seen["active"] = active
        seen["forged"] = grants.active(_forged(first.token), now)
        r.clock.advance(20)
        await r.engine.heartbeat(ME, task.task_id)
        r.clock.advance(11)
        await r.engine.sweep()
        seen["expired"] = grants.active(first.token, r.clock.now())
        seen["why_expired"] = grants.why_inactive(first.token, r.clock.now())
        await r.engine.complete_task(ME, task.task_id, Outcome.SUCCEEDED, "")
        seen["completed"] = grants.active(second.token, r.clock.now())
        seen["why_completed"] = grants.why_inactive(second.token, r.clock.now())
        seen["why_forged"] = grants.why_inactive(_forged(second.token), r.clock.now())
        seen["ids"] = (first.grant.grant_id, second.grant.grant_id)  # type: ignore[union-attr]

    run(tmp_path, body)
    first_id, second_id = seen["ids"]
    assert seen["active"].grant_id == first_id
    assert seen["active"].resource == "x://1"
    assert seen["forged"] is None
    assert seen["expired"] is None
    assert seen["completed"] is None
    assert (seen["why_expired"], seen["why_completed"], seen["why_forged"]) == (
        "expired",
        "completed",
        "",
    )
    assert (first_id, "expired") in ended
    assert (second_id, "completed") in ended
    assert len(ended) == 2
