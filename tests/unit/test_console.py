"""The console's rules that need no browser: settings, PKCE, roles, four-eyes."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from sidecar.approvals import Approval, check_four_eyes, owners_of
from sidecar.console.auth import LoginError, Sessions, User, pkce_challenge, roles_for
from sidecar.console.settings import ConsoleSettings, add_flags, from_args
from sidecar.errors import ConfigError, PermissionDenied, Reason
from sidecar.model import Identity, Intent, PolicyDecision, Tier

SOCKETS = {"local": Path("var/admin.sock")}


def settings(**kwargs: object) -> ConsoleSettings:
    base: dict[str, object] = {"sidecars": SOCKETS, "dev_token": "0123456789abcdef"}
    return ConsoleSettings(**(base | kwargs))  # type: ignore[arg-type]


def test_pkce_challenge_matches_rfc7636_appendix_b() -> None:
    """The S256 challenge of RFC 7636 Appendix B's verifier is the RFC's value."""
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_non_loopback_needs_tls(host: str) -> None:
    """The console refuses to listen beyond loopback without TLS."""
    with pytest.raises(ConfigError) as caught:
        settings(host=host).validate()
    assert "loopback" in caught.value.message
    settings(host=host, tls_cert=Path("c.pem"), tls_key=Path("k.pem")).validate()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_is_fine_without_tls(host: str) -> None:
    """Loopback addresses need no TLS; the origin is derived from them."""
    s = settings(host=host, port=8700)
    s.validate()
    assert s.origin.startswith("http://") and s.origin.endswith(":8700")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"dev_token": ""}, "OIDC login"),
        ({"dev_token": "short"}, "16 characters"),
        ({"oidc_issuer": "https://idp"}, "go together"),
        ({"role_map": {"g": ("admin",)}}, "unknown role"),
        ({"sidecars": {}}, "at least one sidecar"),
        ({"tls_cert": Path("c.pem")}, "go together"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], problem: str) -> None:
    """Incomplete or contradictory settings stop the console with a clear message."""
    with pytest.raises(ConfigError) as caught:
        settings(**kwargs).validate()
    assert problem in caught.value.message


def test_flags_build_settings(tmp_path: Path) -> None:
    """Flags become settings: sidecars, role map (GROUP=ROLE+ROLE), secrets from files."""
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(
        [
            "--sidecar", "a=/run/a.sock", "--sidecar", "b=/run/b.sock",
            "--role-map", "sre=operator+approver", "--dev-token-file", str(token),
            "--listen", "127.0.0.1:9000",
        ]
    )  # fmt: skip
    s = from_args(args)
    assert dict(s.sidecars) == {"a": Path("/run/a.sock"), "b": Path("/run/b.sock")}
    assert s.role_map == {"sre": ("operator", "approver")}
    assert s.dev_token == "0123456789abcdef0123"
    assert s.origin == "http://127.0.0.1:9000"
    assert "0123456789abcdef0123" not in repr(s)


def test_roles_come_from_the_mapped_claim() -> None:
    """Only mapped groups give roles; a string claim counts as one group."""
    s = settings(role_map={"approvers": ("approver",), "sre": ("operator", "viewer")})
    assert roles_for({"groups": ["approvers", "sre", "other"]}, s) == {
        "approver",
        "operator",
        "viewer",
    }
    assert roles_for({"groups": "approvers"}, s) == {"approver"}
    assert roles_for({"groups": ["other"]}, s) == frozenset()
    assert roles_for({}, s) == frozenset()


def test_a_login_state_is_used_once_and_by_its_browser() -> None:
    """The callback's state must name a started login, once, from the browser that began it."""
    sessions = Sessions(ttl=3600)
    login = sessions.start_login()
    with pytest.raises(LoginError) as other:
        sessions.finish_login(login.state, "another-browser")
    assert other.value.reason == "login_state"
    login = sessions.start_login()
    assert sessions.finish_login(login.state, login.browser) == login
    with pytest.raises(LoginError) as again:
        sessions.finish_login(login.state, login.browser)
    assert again.value.reason == "login_state"


def test_sessions_expire_and_end() -> None:
    """A session is found by its id until it ends; each gets its own CSRF token."""
    sessions = Sessions(ttl=3600)
    user = User("bob@example.com", frozenset({"approver"}), "oidc")
    sid, session = sessions.create(user)
    other_sid, other = sessions.create(user)
    assert sessions.get(sid) is session
    assert session.csrf != other.csrf
    sessions.end(sid)
    assert sessions.get(sid) is None
    session_expired = sessions.get(other_sid)
    assert session_expired is other
    other.expires_at = 0
    assert sessions.get(other_sid) is None


def _approval(owners: tuple[str, ...]) -> Approval:
    decision = PolicyDecision(
        allow=True,
        tier=Tier.JIT,
        approval_required=True,
        ttl_seconds=60,
        audience="payments",
        scope=("payments.refund",),
        reasons=(),
        cache_seconds=0,
        four_eyes=True,
        owners=owners,
    )

    async def make() -> Approval:  # asyncio.Event wants a running loop on 3.11
        return Approval(
            "a-1", "t-1", "spiffe://x/agent", Intent("payments.refund", "payments://o/1"),
            "h", 60, decision, 0.0, 60.0,
        )  # fmt: skip

    return asyncio.run(make())


@pytest.mark.parametrize("approver", ["alice@example.com", " ALICE@example.com ", "", "operator"])
def test_four_eyes_refuses_owners_and_nameless_approvers(approver: str) -> None:
    """Under four-eyes an owner (any case) or an unnamed approver may not approve."""
    with pytest.raises(PermissionDenied) as caught:
        check_four_eyes(_approval(("alice@example.com",)), approver)
    assert caught.value.reason is Reason.FOUR_EYES


def test_four_eyes_lets_someone_else_approve() -> None:
    """Anyone named who is not an owner may approve."""
    check_four_eyes(_approval(("alice@example.com",)), "bob@example.com")


def test_owners_are_the_policy_s_then_the_owner_claim() -> None:
    """Owners: the decision's, then the identity's `owner` claim (string or list), once."""
    decision = _approval(("alice@example.com",)).decision
    claimed = Identity(
        "spiffe://x/a", "x", "oidc", claims={"owner": ["carol@x", "alice@example.com"]}
    )
    assert owners_of(claimed, decision) == ("alice@example.com", "carol@x")
    single = Identity("spiffe://x/a", "x", "oidc", claims={"owner": "dave@x"})
    assert owners_of(single, decision) == ("alice@example.com", "dave@x")
    odd = Identity("spiffe://x/a", "x", "oidc", claims={"owner": 7})
    assert owners_of(odd, decision) == ("alice@example.com",)


def test_console_command_refuses_bad_settings_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jit-sidecar console` with a public address and no TLS exits 2 with the reason."""
    from sidecar.cli import main

    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123")
    code = main(["console", "--listen", "0.0.0.0:8700", "--dev-token-file", str(token)])
    err = capsys.readouterr().err
    assert code == 2
    assert "not a loopback address" in err
    assert "Traceback" not in err
