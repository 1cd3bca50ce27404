"""The resource-server verifier (sidecar.verify) against a real sidecar process: its real
JWKS and RFC 7662 introspection endpoints over HTTP, and tokens it issued over its Unix
socket. Forged tokens are signed with the sidecar's own key file (or a stranger's key) to
reach each check on its own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidecar.client import Grant, TaskHandle
from sidecar.tokens import SigningKey, generate_private_key, load_private_key
from sidecar.verify import REASONS, TokenRejected, TokenVerifier
from tests.harness import ROOT, OpaServer, SidecarProcess, free_port, wait_for

ISSUER = "https://jit-sidecar.local"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def sign(key: ed25519.Ed25519PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    """One sidecar for the module: it issues the tokens and serves JWKS and /introspect."""
    process = SidecarProcess(tmp_path_factory.mktemp("issuer"), opa.url).start()
    yield process
    process.stop(timeout=15)


@pytest.fixture(scope="module")
def task(issuer: SidecarProcess) -> Iterator[TaskHandle]:
    """An open task (heartbeating) for the whole module."""
    with issuer.client() as jit, jit.task(goal="verifier tests") as handle:
        yield handle


@pytest.fixture(scope="module")
def read(task: TaskHandle) -> Grant:
    """A real standing grant: docs.read on docs://handbook/intro (audience docs)."""
    return task.grant("docs.read", "docs://handbook/intro")


@pytest.fixture(scope="module")
def key(issuer: SidecarProcess) -> ed25519.Ed25519PrivateKey:
    """The sidecar's own signing key (to forge tokens that differ in one claim)."""
    private = load_private_key(issuer.key)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return private


@pytest.fixture
def verifier(issuer: SidecarProcess) -> Callable[..., TokenVerifier]:
    def make(audience: str = "docs", **kwargs: Any) -> TokenVerifier:
        kwargs.setdefault("issuer", ISSUER)
        kwargs.setdefault("introspection_credential", issuer.http_token.read_text().strip())
        return TokenVerifier(issuer.http + "/.well-known/jwks.json", audience=audience, **kwargs)

    return make


def rejected(check: Callable[[], object]) -> TokenRejected:
    with pytest.raises(TokenRejected) as err:
        check()
    return err.value


# ---------------------------------------------------------------------- the happy path
def test_valid_token_passes(verifier: Callable[..., TokenVerifier], read: Grant) -> None:
    """A real token for the exact action and resource verifies and yields its claims."""
    v = verifier()
    claims = v.verify(read.token, action="docs.read", resource="docs://handbook/intro")
    assert claims.jti == read.grant_id
    assert claims.subject == "spiffe://jit.local/agent/dev"
    assert claims.audience == ("docs",)
    assert claims.scope == ("docs.read",)
    assert claims.tier == "standing"
    assert claims.task_id == read.task_id
    assert claims.expires_at == read.expires_at.replace(microsecond=0)
    assert claims.authorizes("docs.read", "docs://handbook/intro")
    assert not claims.authorizes("docs.read", "docs://handbook/intro/../secret")
    assert v.jwks_fetches == 1


# ---------------------------------------------------------------------- one reason each
def test_wrong_action(verifier: Callable[..., TokenVerifier], read: Grant) -> None:
    """A read token presented for a write: wrong_action (403 insufficient_scope)."""
    err = rejected(
        lambda: verifier().verify(read.token, action="docs.write", resource=read.resource)
    )
    assert err.reason == "wrong_action"
    assert err.status == 403
    assert err.error == "insufficient_scope"
    assert 'error="insufficient_scope"' in err.www_authenticate


def test_wrong_resource(verifier: Callable[..., TokenVerifier], read: Grant) -> None:
    """The right action on another resource (even a prefix-extension): wrong_resource."""
    v = verifier()
    other = rejected(lambda: v.verify(read.token, action="docs.read", resource="docs://other"))
    longer = rejected(
        lambda: v.verify(read.token, action="docs.read", resource=read.resource + "/more")
    )
    assert other.reason == "wrong_resource"
    assert longer.reason == "wrong_resource"


def test_non_canonical_resource_never_matches(
    verifier: Callable[..., TokenVerifier], read: Grant, key: ed25519.Ed25519PrivateKey
) -> None:
    """Resources compare by the sidecar's rules: another spelling of the token's resource is
    wrong_resource, and a token naming a non-canonical resource (which no sidecar signs)
    authorizes nothing, not even that exact string."""
    v = verifier()
    spellings = ["DOCS://handbook/intro", "docs://handbook/./intro", "docs://handbook/%69ntro"]
    refused = [
        rejected(lambda r=r: v.verify(read.token, action="docs.read", resource=r))
        for r in spellings
    ]
    header, claims, _ = split(read.token)
    odd = "docs://handbook/x/../intro"
    claims["authorization_details"][0]["locations"] = [odd]
    forged = sign(key, header, claims)
    exact = rejected(lambda: v.verify(forged, action="docs.read", resource=odd))
    assert [err.reason for err in refused] == ["wrong_resource"] * 3
    assert exact.reason == "wrong_resource"


def test_wrong_audience(verifier: Callable[..., TokenVerifier], read: Grant) -> None:
    """A docs token presented to the tickets API: wrong_audience."""
    err = rejected(
        lambda: verifier("tickets").verify(read.token, action="docs.read", resource=read.resource)
    )
    assert err.reason == "wrong_audience"
    assert err.status == 401


def test_expired_and_leeway(
    verifier: Callable[..., TokenVerifier], read: Grant, key: ed25519.Ed25519PrivateKey
) -> None:
    """exp 60 s ago: expired; exp 10 s ago passes within the default 30 s leeway only."""
    header, claims, _ = split(read.token)
    now = int(time.time())
    long_gone = sign(key, header, claims | {"iat": now - 120, "nbf": now - 120, "exp": now - 60})
    just_gone = sign(key, header, claims | {"iat": now - 70, "nbf": now - 70, "exp": now - 10})
    v = verifier()
    err = rejected(lambda: v.verify(long_gone, action="docs.read", resource=read.resource))
    strict = rejected(
        lambda: verifier(leeway=0).verify(just_gone, action="docs.read", resource=read.resource)
    )
    assert err.reason == "expired"
    assert strict.reason == "expired"
    assert v.verify(just_gone, action="docs.read", resource=read.resource).jti == read.grant_id


def test_not_yet_valid(
    verifier: Callable[..., TokenVerifier], read: Grant, key: ed25519.Ed25519PrivateKey
) -> None:
    """nbf two minutes ahead: not_yet_valid."""
    header, claims, _ = split(read.token)
    future = sign(key, header, claims | {"nbf": int(time.time()) + 120})
    err = rejected(lambda: verifier().verify(future, action="docs.read", resource=read.resource))
    assert err.reason == "not_yet_valid"


def test_revoked_with_introspection(
    verifier: Callable[..., TokenVerifier], issuer: SidecarProcess, task: TaskHandle
) -> None:
    """With introspection on, a revoked grant is rejected as revoked: at once with fresh=True,
    and within introspection_cache_seconds from the cache."""
    grant = task.grant("tickets.update", "tickets://t-1", justification="close duplicate")
    v = verifier(
        "tickets",
        introspection_url=issuer.http + "/introspect",
        introspection_cache_seconds=0.5,
    )
    ok = v.verify(grant.token, action="tickets.update", resource="tickets://t-1")
    assert task.revoke(grant, "test revocation")
    fresh = rejected(
        lambda: v.verify(grant.token, action="tickets.update", resource="tickets://t-1", fresh=True)
    )

    def cached_rejects() -> bool:
        try:
            v.verify(grant.token, action="tickets.update", resource="tickets://t-1")
        except TokenRejected as err:
            return err.reason == "revoked"
        return False

    assert ok.jti == grant.grant_id
    assert fresh.reason == "revoked"
    assert wait_for(cached_rejects, 3, what="the cached answer to expire")


def test_tampered_payload(verifier: Callable[..., TokenVerifier], read: Grant) -> None:
    """Payload edited (resource widened) under the original signature: bad_signature."""
    header, payload, signature = read.token.split(".")
    claims = json.loads(unb64(payload))
    claims["authorization_details"][0]["locations"] = ["docs://everything"]
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    err = rejected(
        lambda: verifier().verify(forged, action="docs.read", resource="docs://everything")
    )
    assert err.reason == "bad_signature"


def test_unknown_kid_refreshes_the_jwks_at_most_once_per_interval(
    verifier: Callable[..., TokenVerifier], read: Grant
) -> None:
    """A token signed by a stranger's key: unknown_kid; repeated attempts do not re-fetch the
    JWKS within jwks_refresh_interval."""
    stranger = SigningKey.from_private_key(generate_private_key("EdDSA"))
    _, claims, _ = split(read.token)
    forged = stranger.sign(claims)
    v = verifier()
    errors = [
        rejected(lambda: v.verify(forged, action="docs.read", resource=read.resource))
        for _ in range(5)
    ]
    assert {e.reason for e in errors} == {"unknown_kid"}
    assert v.jwks_fetches == 1


def test_rotated_key_is_fetched_on_unknown_kid(sidecar: SidecarProcess) -> None:
    """After the sidecar restarts with a new key, the verifier re-fetches the JWKS on the new
    kid (once its refresh interval allows) and accepts the new tokens."""
    v = TokenVerifier(
        sidecar.http + "/.well-known/jwks.json", ISSUER, "docs", jwks_refresh_interval=0.2
    )
    with sidecar.client() as jit, jit.task(goal="before") as handle:
        old = handle.grant("docs.read", "docs://a")
    v.verify(old.token, action="docs.read", resource="docs://a")
    sidecar.stop()
    sidecar.key.unlink()
    sidecar.start()
    with sidecar.client() as jit, jit.task(goal="after") as handle:
        new = handle.grant("docs.read", "docs://a")
    time.sleep(0.3)
    claims = v.verify(new.token, action="docs.read", resource="docs://a")
    assert split(old.token)[0]["kid"] != split(new.token)[0]["kid"]
    assert claims.jti == new.grant_id
    assert v.jwks_fetches == 2


def test_duplicate_claims_are_refused_even_when_signed(
    verifier: Callable[..., TokenVerifier], read: Grant, key: ed25519.Ed25519PrivateKey
) -> None:
    """Issue 13: a validly signed token whose payload names `aud` or `sub` twice is malformed
    (one parser would check the first, another use the last), as the JOSE core refuses it."""
    header, claims, _ = split(read.token)
    body = json.dumps(claims)[1:-1]
    forged = {
        "aud": '{"aud": "elsewhere", ' + body + "}",
        "sub": '{"sub": "spiffe://jit.local/agent/admin", ' + body + "}",
    }
    errors = {}
    for member, payload in forged.items():
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}"
        token = f"{signing_input}.{b64(key.sign(signing_input.encode()))}"
        errors[member] = rejected(
            lambda token=token: verifier().verify(token, action="docs.read", resource=read.resource)
        )
    assert {m: e.reason for m, e in errors.items()} == {"aud": "malformed", "sub": "malformed"}
    assert all("duplicate member" in e.message for e in errors.values())


def test_ed25519_alg_name_verifies_with_an_eddsa_key(
    verifier: Callable[..., TokenVerifier], read: Grant, key: ed25519.Ed25519PrivateKey
) -> None:
    """RFC 9864: a token whose header says `Ed25519`, signed by the sidecar's Ed25519 key
    (published as `EdDSA`), verifies: both names are the same operation on that key."""
    header, claims, _ = split(read.token)
    renamed = sign(key, header | {"alg": "Ed25519"}, claims)
    verified = verifier().verify(renamed, action="docs.read", resource=read.resource)
    assert verified.jti == read.grant_id


def test_sidecar_emitting_ed25519(tmp_path: Path, opa: OpaServer) -> None:
    """With --ed25519-alg Ed25519 the sidecar's tokens and JWKS say `Ed25519`: the default
    verifier accepts them; one limited to `EdDSA` refuses (algorithm_not_allowed), which is
    why EdDSA stays the default until every resource server knows RFC 9864."""
    process = SidecarProcess(tmp_path / "sc", opa.url, "--ed25519-alg", "Ed25519").start()
    try:
        jwks = requests.get(process.http + "/.well-known/jwks.json", timeout=5).json()
        with process.client() as jit, jit.task(goal="ed25519") as handle:
            grant = handle.grant("docs.read", "docs://handbook/intro")
        url = process.http + "/.well-known/jwks.json"
        accepted = TokenVerifier(url, ISSUER, "docs").verify(
            grant.token, action="docs.read", resource=grant.resource
        )
        old = rejected(
            lambda: TokenVerifier(url, ISSUER, "docs", algorithms=("EdDSA",)).verify(
                grant.token, action="docs.read", resource=grant.resource
            )
        )
    finally:
        process.stop(timeout=15)
    assert [k["alg"] for k in jwks["keys"]] == ["Ed25519"]
    assert split(grant.token)[0]["alg"] == "Ed25519"
    assert accepted.jti == grant.grant_id
    assert old.reason == "algorithm_not_allowed"


def hs256_with_public_key(read: Grant, issuer_key: ed25519.Ed25519PrivateKey) -> str:
    header, claims, _ = split(read.token)
    secret = issuer_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    signing_input = (
        f"{b64(json.dumps(header | {'alg': 'HS256'}).encode())}.{b64(json.dumps(claims).encode())}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def alg_none(read: Grant, issuer_key: ed25519.Ed25519PrivateKey) -> str:
    header, claims, _ = split(read.token)
    return (
        f"{b64(json.dumps(header | {'alg': 'none'}).encode())}.{b64(json.dumps(claims).encode())}."
    )


def es256_header_on_eddsa_key(read: Grant, issuer_key: ed25519.Ed25519PrivateKey) -> str:
    header, claims, _ = split(read.token)
    return sign(issuer_key, header | {"alg": "ES256"}, claims)


@pytest.mark.parametrize("forge", [hs256_with_public_key, alg_none, es256_header_on_eddsa_key])
def test_alg_switched(
    verifier: Callable[..., TokenVerifier],
    read: Grant,
    key: ed25519.Ed25519PrivateKey,
    forge: Callable[[Grant, ed25519.Ed25519PrivateKey], str],
) -> None:
    """HS256 keyed with the public key, alg none, or an alg other than the key's pinned one:
    algorithm_not_allowed."""
    err = rejected(
        lambda: verifier().verify(forge(read, key), action="docs.read", resource=read.resource)
    )
    assert err.reason == "algorithm_not_allowed"


def test_wrong_type(
    verifier: Callable[..., TokenVerifier], read: Grant, key: ed25519.Ed25519PrivateKey
) -> None:
    """A validly signed JWT that is not an access token (typ JWT): wrong_type."""
    header, claims, _ = split(read.token)
    plain = sign(key, header | {"typ": "JWT"}, claims)
    err = rejected(lambda: verifier().verify(plain, action="docs.read", resource=read.resource))
    assert err.reason == "wrong_type"


def test_wrong_issuer(verifier: Callable[..., TokenVerifier], read: Grant) -> None:
    """A verifier expecting another issuer: wrong_issuer."""
    err = rejected(
        lambda: verifier(issuer="https://other.example").verify(
            read.token, action="docs.read", resource=read.resource
        )
    )
    assert err.reason == "wrong_issuer"


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b", "a.b.c", "e30.e30.", "W10.e30.AA", "x" * 20000],
    ids=["empty", "one-part", "two-parts", "not-base64-json", "no-alg", "header-array", "huge"],
)
def test_malformed(verifier: Callable[..., TokenVerifier], garbage: str) -> None:
    """Strings that are not a compact JWS we could check are rejected, never crash."""
    err = rejected(lambda: verifier().verify(garbage, action="docs.read", resource="docs://a"))
    assert err.reason in {"malformed", "algorithm_not_allowed"}
    assert err.status == 401


def test_dpop_bound_token_needs_a_valid_proof(
    verifier: Callable[..., TokenVerifier], issuer: SidecarProcess
) -> None:
    """A token bound to a key (cnf.jkt): without a proof dpop_required; with a garbage proof,
    a proof by another key, or a replayed proof dpop_invalid; with a fresh proof signed by
    the bound key, for this method and URL, it verifies."""
    from tests.identity_kit import Key, dpop_proof

    holder = Key.generate("ES256")
    thief = Key.generate("ES256")
    url = "http://api.example/docs/bound"
    with issuer.client() as jit, jit.task(goal="bound", pop_jwk=holder.private_jwk()) as bound:
        grant = bound.grant("docs.read", "docs://bound")
        v = verifier()

        def present(proof: str | None) -> Any:
            headers = {"Authorization": f"DPoP {grant.token}"}
            if proof is not None:
                headers["DPoP"] = proof
            return v.verify_request(
                headers, "GET", url, action="docs.read", resource="docs://bound"
            )

        missing = rejected(
            lambda: v.verify(grant.token, action="docs.read", resource="docs://bound")
        )
        garbage = rejected(lambda: present("not.a.proof"))
        stolen = rejected(lambda: present(dpop_proof(thief, "GET", url, grant.token)))
        good = dpop_proof(holder, "GET", url, grant.token)
        accepted = present(good)
        replayed = rejected(lambda: present(good))
    assert split(grant.token)[1]["cnf"] == {"jkt": bound.raw.pop_jkt}
    assert missing.reason == "dpop_required"
    assert garbage.reason == "dpop_invalid"
    assert stolen.reason == "dpop_invalid"
    assert "jkt_mismatch" in stolen.message
    assert accepted.jti == grant.grant_id
    assert replayed.reason == "dpop_invalid"
    assert "jti_replayed" in replayed.message


def test_unreachable_jwks_and_introspection_fail_closed(
    verifier: Callable[..., TokenVerifier], issuer: SidecarProcess, read: Grant
) -> None:
    """No JWKS: jwks_unavailable; introspection unreachable: introspection_unavailable (503)."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    no_keys = TokenVerifier(nowhere + "/jwks.json", ISSUER, "docs", http_timeout=0.5)
    no_introspection = verifier(introspection_url=nowhere + "/introspect", http_timeout=0.5)
    keys_err = rejected(
        lambda: no_keys.verify(read.token, action="docs.read", resource=read.resource)
    )
    intro_err = rejected(
        lambda: no_introspection.verify(read.token, action="docs.read", resource=read.resource)
    )
    assert keys_err.reason == "jwks_unavailable"
    assert intro_err.reason == "introspection_unavailable"
    assert intro_err.status == 503
    assert intro_err.error == "temporarily_unavailable"


def test_introspection_credential(tmp_path: Path, opa: OpaServer) -> None:
    """A sidecar requiring a bearer credential for /introspect: without it the check fails
    closed; with it the token passes."""
    secret = tmp_path / "http-token"
    secret.write_text("s3cret-introspection-credential\n")
    secret.chmod(0o600)
    with_token = SidecarProcess(tmp_path / "guarded", opa.url, "--http-token-file", str(secret))
    with_token.start()
    try:
        with with_token.client() as jit, jit.task(goal="x") as handle:
            grant = handle.grant("docs.read", "docs://a")
            jwks = with_token.http + "/.well-known/jwks.json"
            url = with_token.http + "/introspect"
            anonymous = TokenVerifier(jwks, ISSUER, "docs", introspection_url=url)
            trusted = TokenVerifier(
                jwks,
                ISSUER,
                "docs",
                introspection_url=url,
                introspection_credential=lambda: secret.read_text().strip(),
            )
            refused = rejected(
                lambda: anonymous.verify(grant.token, action="docs.read", resource="docs://a")
            )
            passed = trusted.verify(grant.token, action="docs.read", resource="docs://a")
    finally:
        with_token.stop(timeout=15)
    assert refused.reason == "introspection_unavailable"
    assert passed.jti == grant.grant_id


def test_verify_request_reads_the_authorization_header(
    verifier: Callable[..., TokenVerifier], read: Grant
) -> None:
    """verify_request takes Bearer tokens from any-case headers; no token: missing_token
    with a bare Bearer challenge."""
    v = verifier()
    ok = v.verify_request(
        {"authorization": f"bearer {read.token}"},
        "GET",
        "http://api.example/docs/handbook/intro",
        action="docs.read",
        resource=read.resource,
    )
    missing = rejected(
        lambda: v.verify_request(
            {"Authorization": "Basic dXNlcjpwYXNz"},
            "GET",
            "http://api.example/",
            action="docs.read",
            resource=read.resource,
        )
    )
    assert ok.jti == read.grant_id
    assert missing.reason == "missing_token"
    assert missing.www_authenticate == 'Bearer realm="jit"'
    assert missing.status == 401


def test_reason_codes_are_a_fixed_set() -> None:
    """TokenRejected refuses reasons outside REASONS (so logs and metrics stay bounded)."""
    with pytest.raises(ValueError, match="unknown rejection reason"):
        TokenRejected("something_else")
    assert {
        "bad_signature",
        "unknown_kid",
        "wrong_type",
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "wrong_action",
        "wrong_resource",
        "revoked",
        "malformed",
        "algorithm_not_allowed",
        "dpop_required",
        "dpop_invalid",
    } <= REASONS


def test_wsgi_snippet_in_the_docs_works(
    verifier: Callable[..., TokenVerifier], read: Grant
) -> None:
    """The WSGI wrapper shown in docs/resource-servers.md, served by wsgiref: 200 for the right
    resource, 403 insufficient_scope for another, 401 without a token."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    doc = (ROOT / "docs" / "resource-servers.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def protect" in b]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # noqa: S102 (our own documentation)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["jit.token"].jti.encode()]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    wrapped = namespace["protect"](
        app, verifier(), "docs.read", lambda env: "docs://" + env["PATH_INFO"].lstrip("/")
    )
    port = free_port()
    server = make_server("127.0.0.1", port, wrapped, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": read.authorization}
        ok = requests.get(f"{base}/handbook/intro", headers=auth, timeout=5)
        other = requests.get(f"{base}/handbook/other", headers=auth, timeout=5)
        anonymous = requests.get(f"{base}/handbook/intro", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert (ok.status_code, ok.text) == (200, read.grant_id)
    assert other.status_code == 403
    assert other.json() == {"error": "insufficient_scope", "reason": "wrong_resource"}
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="jit"'
