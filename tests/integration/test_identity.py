"""Caller identity (JWT-SVID mode) against a real sidecar process over its real Unix socket,
with trust bundles and SVIDs the tests mint themselves, and the real OPA binary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.client import AccessClient, AccessDenied, IdentityRejected, SidecarRpcError
from sidecar.tokens import generate_private_key, write_private_key
from tests.harness import OpaServer, SidecarProcess, wait_for
from tests.identity_kit import AUDIENCE, Key, TrustDomain, b64, sign_raw

pytestmark = pytest.mark.integration


class Domains:
    def __init__(self, root: Path) -> None:
        self.a = TrustDomain.create("example.org", "ES256", "RS256", "PS256", "EdDSA")
        self.b = TrustDomain.create("other.org", "ES256")
        self.a_path = self.a.write_bundle(root / "example.org.jwks")
        self.b_path = self.b.write_bundle(root / "other.org.jwks")
        # The starter policy (rego/jit/data.json) knows spiffe://jit.local/agent/dev only.
        self.dev = TrustDomain.create("jit.local")
        self.dev_path = self.dev.write_bundle(root / "jit.local.jwks")
        self.signing_key = root / "signing-key.pem"
        write_private_key(self.signing_key, generate_private_key("EdDSA"))


def jwt_svid_sidecar(workdir: Path, opa_url: str, domains: Domains, *extra: str) -> SidecarProcess:
    return SidecarProcess(
        workdir,
        opa_url,
        "--signing-key",
        str(domains.signing_key),
        "--trust-bundle",
        f"example.org={domains.a_path}",
        "--trust-bundle",
        f"other.org={domains.b_path}",
        "--trust-bundle",
        f"jit.local={domains.dev_path}",
        "--trust-domains",
        "example.org,other.org",
        "--trust-domains",
        "jit.local",
        "--trust-bundle-refresh",
        "0.1",
        "--audience",
        AUDIENCE,
        *extra,
        identity="jwt-svid",
    )


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Domains:
    return Domains(tmp_path_factory.mktemp("domains"))


@pytest.fixture(scope="module")
def svid_sidecar(
    tmp_path_factory: pytest.TempPathFactory, opa: OpaServer, domains: Domains
) -> Iterator[SidecarProcess]:
    """One JWT-SVID sidecar for the bad-input cases: nothing is ever issued on it."""
    process = jwt_svid_sidecar(tmp_path_factory.mktemp("svid-sidecar"), opa.url, domains).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def open_task(svid_sidecar: SidecarProcess, domains: Domains) -> str:
    """A task begun by a valid identity, so bad tokens are tried against a real task."""
    with svid_sidecar.client(identity_token=domains.a.svid()) as c:
        return str(c.begin_task("victim task").task_id)


def _now() -> int:
    return int(time.time())


def _claims(domain: TrustDomain, **over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": f"spiffe://{domain.name}/agent/billing",
        "aud": AUDIENCE,
        "exp": _now() + 300,
        "iat": _now(),
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _hs(d: Domains, secret: bytes, alg: str = "HS256") -> str:
    return sign_raw({"alg": alg, "typ": "JWT", "kid": d.a.key.kid}, _claims(d.a), secret)


def _foreign_key_same_kid(d: Domains) -> str:
    impostor = Key.generate("ES256", kid=d.a.key.kid)
    return impostor.sign(_claims(d.a))


def _duplicate_sub(d: Domains) -> str:
    """A JWT-SVID of agent/billing signed by a trusted key whose payload names `sub` twice."""
    body = json.dumps(_claims(d.a))[1:-1]
    payload = '{"sub": "spiffe://example.org/agent/admin", ' + body + "}"
    return sign_raw({"alg": "ES256", "kid": d.a.key.kid, "typ": "JWT"}, payload, d.a.key.private)


def _noncanonical(token: str) -> str:
    """The same token with the signature's last character's unused bits set: it decodes to
    the same bytes under a lenient decoder, so it must not be accepted as another token."""
    head, _, signature = token.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    bits = {2: 0b1111, 3: 0b11}[len(signature) % 4]
    return f"{head}.{signature[:-1]}{alphabet[last | bits]}"


BAD_TOKENS: dict[str, tuple[Callable[[Domains], str | None], str]] = {
    "no metadata": (lambda d: None, "no_token"),
    "malformed: one part": (lambda d: "garbage", "malformed"),
    "malformed: bad base64": (lambda d: "a$b.c$d.e$f", "malformed"),
    "malformed: header not JSON": (lambda d: "bm90anNvbg.e30.AAAA", "malformed"),
    "malformed: duplicate header member": (
        lambda d: "eyJhbGciOiJFUzI1NiIsImFsZyI6Im5vbmUifQ.e30.AAAA",
        "malformed",
    ),
    "alg none": (
        lambda d: sign_raw({"alg": "none", "typ": "JWT", "kid": d.a.key.kid}, _claims(d.a), None),
        "alg_not_allowed",
    ),
    "HS256 with the bundle key as PEM": (lambda d: _hs(d, d.a.key.public_pem()), "alg_not_allowed"),
    "HS256 with the bundle key as JWK": (
        lambda d: _hs(d, json.dumps(d.a.key.public_jwk()).encode()),
        "alg_not_allowed",
    ),
    "HS512": (lambda d: _hs(d, b"secret" * 8, "HS512"), "alg_not_allowed"),
    "EdDSA in jwt-svid mode": (lambda d: d.a.svid(key=d.a.keys[3]), "alg_not_allowed"),
    "Ed25519 (RFC 9864 name) in jwt-svid mode": (
        lambda d: d.a.keys[3].sign(_claims(d.a), alg="Ed25519"),
        "alg_not_allowed",
    ),
    "malformed: duplicate claim member, validly signed": (
        lambda d: _duplicate_sub(d),
        "malformed",
    ),
    "malformed: non-canonical base64url signature": (
        lambda d: _noncanonical(d.a.svid()),
        "malformed",
    ),
    "unknown kid": (lambda d: Key.generate("ES256").sign(_claims(d.a)), "kid_unknown"),
    "kid with ../": (lambda d: d.a.key.sign(_claims(d.a), kid="../../etc/passwd"), "kid_invalid"),
    "kid with a quote": (lambda d: d.a.key.sign(_claims(d.a), kid='k"1'), "kid_invalid"),
    "kid with NUL": (lambda d: d.a.key.sign(_claims(d.a), kid="k\u00001"), "kid_invalid"),
    "no kid": (lambda d: d.a.key.sign(_claims(d.a), kid=None), "kid_missing"),
    "expired": (lambda d: d.a.svid(exp=_now() - 60), "expired"),
    "no exp": (lambda d: d.a.key.sign(_claims(d.a, exp=None)), "exp_missing"),
    "nbf beyond leeway": (lambda d: d.a.svid(nbf=_now() + 120), "not_yet_valid"),
    "iat in the future": (lambda d: d.a.svid(iat=_now() + 120), "issued_in_future"),
    "wrong aud": (lambda d: d.a.svid(aud="payments-api"), "audience_mismatch"),
    "aud list without ours": (lambda d: d.a.svid(aud=["a", "b"]), "audience_mismatch"),
    "no aud": (lambda d: d.a.svid(aud=None), "audience_mismatch"),
    "sub not a SPIFFE ID": (
        lambda d: d.a.key.sign(_claims(d.a, sub="agent-billing")),
        "subject_invalid",
    ),
    "sub with a .. segment": (
        lambda d: d.a.key.sign(_claims(d.a, sub="spiffe://example.org/agent/../admin")),
        "subject_invalid",
    ),
    "foreign trust domain": (
        lambda d: TrustDomain.create("evil.org").svid(),
        "trust_domain_not_allowed",
    ),
    "trust domain B's key for an A subject": (
        lambda d: d.b.key.sign(_claims(d.a)),
        "kid_unknown",
    ),
    "foreign key reusing a trusted kid": (_foreign_key_same_kid, "signature_invalid"),
    "jku header": (
        lambda d: d.a.key.sign(_claims(d.a), jku="http://127.0.0.1:1/jwks"),
        "header_key_reference",
    ),
    "x5u header": (
        lambda d: d.a.key.sign(_claims(d.a), x5u="http://127.0.0.1:1/cert"),
        "header_key_reference",
    ),
    "jwk header": (
        lambda d: d.a.key.sign(_claims(d.a), jwk=d.a.key.public_jwk()),
        "header_key_reference",
    ),
    "unknown crit": (
        lambda d: d.a.key.sign(_claims(d.a), crit=["urn:x"], **{"urn:x": 1}),
        "crit_unsupported",
    ),
    "typ at+jwt from a trusted key": (
        lambda d: d.a.key.sign(_claims(d.a), typ="at+jwt"),
        "own_access_token",
    ),
    "iss of this sidecar": (
        lambda d: d.a.svid(iss="https://jit-sidecar.local"),
        "own_access_token",
    ),
    "truncated signature": (lambda d: d.a.svid()[:-10], "signature_invalid"),
}


def _rejections(process: SidecarProcess, rpc: str) -> list[dict[str, Any]]:
    return [
        r
        for r in process.log_records()
        if r.get("rpc") == rpc and r.get("reason") == "identity_invalid"
    ]


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_identity_token_is_refused(
    case: str, svid_sidecar: SidecarProcess, domains: Domains, open_task: str
) -> None:
    """Each bad token: UNAUTHENTICATED identity_invalid, nothing issued, the cause logged."""
    make, cause = BAD_TOKENS[case]
    token = make(domains)
    before = len(_rejections(svid_sidecar, "RequestGrant"))
    with (
        AccessClient(svid_sidecar.socket, identity_token=token) as c,
        pytest.raises(IdentityRejected) as err,
    ):
        c.request_grant(open_task, "docs.read", "docs://handbook/intro")
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert err.value.reason == "identity_invalid"
    assert err.value.metadata["cause"] == cause
    assert svid_sidecar.events("grant_issued") == []
    assert svid_sidecar.grant_rows() == []
    logged = wait_for(lambda: _rejections(svid_sidecar, "RequestGrant")[before:], 5)
    assert logged[-1]["cause"] == cause
    assert logged[-1]["code"] == "UNAUTHENTICATED"
    if token:
        assert token not in svid_sidecar.log()


def test_valid_svids_of_every_allowed_algorithm(
    svid_sidecar: SidecarProcess, domains: Domains
) -> None:
    """ES256, RS256 and PS256 JWT-SVIDs from the bundle are accepted (BeginTask)."""
    subjects = []
    for key in domains.a.keys[:3]:
        with svid_sidecar.client(identity_token=domains.a.svid("agent/algs", key=key)) as c:
            subjects.append(c.begin_task(f"alg {key.alg}").subject)
    with svid_sidecar.client(identity_token=domains.b.svid("agent/other")) as c:
        subjects.append(c.begin_task("other domain").subject)
    assert subjects == ["spiffe://example.org/agent/algs"] * 3 + ["spiffe://other.org/agent/other"]


def test_own_access_token_is_not_an_identity(
    tmp_path: Path, opa: OpaServer, domains: Domains
) -> None:
    """A grant this sidecar issued, presented as identity, is refused (typ and own kid)."""
    process = jwt_svid_sidecar(tmp_path / "sc", opa.url, domains).start()
    try:
        with process.client(identity_token=domains.dev.svid("agent/dev")) as c:
            task = c.begin_task("t")
            grant = c.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
        with (
            process.client(identity_token=grant.token) as c,
            pytest.raises(IdentityRejected) as err,
        ):
            c.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
        rows = process.grant_rows()
        issued = process.events("grant_issued")
    finally:
        process.stop()
    assert err.value.reason == "identity_invalid"
    assert err.value.metadata["cause"] == "own_access_token"
    assert [r["grant_id"] for r in rows] == [grant.grant_id]
    assert [e["grant_id"] for e in issued] == [grant.grant_id]


def test_token_signed_with_own_key_is_refused_even_if_bundled(
    tmp_path: Path, opa: OpaServer, domains: Domains
) -> None:
    """Misconfiguration guard: our signing key in a trust bundle still mints no identity."""
    from sidecar.tokens import SigningKey, load_private_key

    own = SigningKey.from_private_key(load_private_key(domains.signing_key))
    # Our key is Ed25519 (not a JWT-SVID algorithm): a P-256 key that claims our kid stands
    # for "our public key ended up in a trust bundle".
    impostor = TrustDomain("example.org", [Key.generate("ES256", kid=own.kid)])
    bundle = impostor.write_bundle(tmp_path / "mixed.jwks")
    process = SidecarProcess(
        tmp_path / "sc",
        opa.url,
        "--signing-key",
        str(domains.signing_key),
        "--trust-bundle",
        f"example.org={bundle}",
        identity="jwt-svid",
    ).start()
    try:
        with (
            process.client(identity_token=impostor.svid()) as c,
            pytest.raises(IdentityRejected) as err,
        ):
            c.begin_task("t")
        tasks = process.events("task_begun")
    finally:
        process.stop()
    assert tasks == []
    assert err.value.metadata["cause"] == "own_access_token"


def test_bundle_file_reload(tmp_path: Path, opa: OpaServer, domains: Domains) -> None:
    """A rotated bundle file is picked up: the new key works, the removed key stops working
    (even for a token verified and cached before), and a broken file keeps the last keys."""
    bundle = tmp_path / "a.jwks"
    domain = TrustDomain.create("example.org")
    domain.write_bundle(bundle)
    process = SidecarProcess(
        tmp_path / "sc",
        opa.url,
        "--signing-key",
        str(domains.signing_key),
        "--trust-bundle",
        f"example.org={bundle}",
        "--trust-bundle-refresh",
        "0.1",
        identity="jwt-svid",
    ).start()
    try:
        old_token = domain.svid()
        with process.client(identity_token=old_token) as c:
            first = c.begin_task("before rotation").subject
        rotated = TrustDomain("example.org", [Key.generate("ES256")])
        rotated.write_bundle(bundle)
        wait_for(lambda: "reloaded" in process.log(), 10, what="bundle reload")
        with process.client(identity_token=rotated.svid()) as c:
            second = c.begin_task("after rotation").subject
        with process.client(identity_token=old_token) as c, pytest.raises(IdentityRejected) as old:
            c.begin_task("old key")
        bundle.write_text("{not json")
        wait_for(lambda: "unusable" in process.log(), 10, what="bad bundle noticed")
        with process.client(identity_token=rotated.svid()) as c:
            third = c.begin_task("after a broken write").subject
    finally:
        process.stop()
    assert first == second == third == "spiffe://example.org/agent/billing"
    assert old.value.metadata["cause"] == "kid_unknown"


def test_identity_reaches_policy(tmp_path: Path, own_opa: OpaServer, domains: Domains) -> None:
    """input.identity carries subject, trust_domain, method, issuer and the stable claims."""
    own_opa.put_policy(
        "echo",
        'package echo\ndecision := {"allow": false, "reasons": [json.marshal(input.identity)]}\n',
    )
    process = jwt_svid_sidecar(
        tmp_path / "sc", own_opa.url, domains, "--opa-decision-path", "/v1/data/echo/decision"
    ).start()
    try:
        token = domains.a.svid("agent/echo", iss="https://spire.example.org", team="payments")
        with process.client(identity_token=token) as c:
            task = c.begin_task("echo")
            with pytest.raises(AccessDenied) as denied:
                c.request_grant(task.task_id, "docs.read", "docs://x")
    finally:
        process.stop()
    identity = json.loads(denied.value.reasons[0])
    assert identity == {
        "subject": "spiffe://example.org/agent/echo",
        "trust_domain": "example.org",
        "method": "jwt-svid",
        "issuer": "https://spire.example.org",
        "claims": {
            "sub": "spiffe://example.org/agent/echo",
            "aud": AUDIENCE,
            "iss": "https://spire.example.org",
            "team": "payments",
        },
    }


def test_task_ownership_on_every_rpc(tmp_path: Path, opa: OpaServer, domains: Domains) -> None:
    """Another identity gets NOT_FOUND on every RPC of a task, exactly as for a task or grant
    nobody holds (task_not_found / grant_not_found), so ids are no oracle."""
    process = jwt_svid_sidecar(tmp_path / "sc", opa.url, domains).start()
    owner_token = domains.dev.svid("agent/dev")
    thief_token = domains.dev.svid("agent/thief")
    try:
        with process.client(identity_token=owner_token) as owner:
            task = owner.begin_task("owned")
            grant = owner.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
        errors: dict[str, SidecarRpcError] = {}
        calls: dict[str, Callable[[AccessClient], Any]] = {
            "RequestGrant": lambda c: c.request_grant(task.task_id, "docs.read", "docs://a"),
            "Heartbeat": lambda c: c.heartbeat(task.task_id),
            "CompleteTask": lambda c: c.complete_task(task.task_id),
            "RevokeGrant": lambda c: c.revoke_grant(grant.grant_id, "not mine"),
            "ListGrants": lambda c: c.list_grants(task.task_id, include_inactive=True),
        }
        with process.client(identity_token=thief_token) as thief:
            for name, call in calls.items():
                with pytest.raises(SidecarRpcError) as err:
                    call(thief)
                errors[name] = err.value
        with process.client(identity_token=owner_token) as owner:
            still = owner.list_grants(task.task_id)
            beat = owner.heartbeat(task.task_id)
        issued = process.events("grant_issued")
    finally:
        process.stop()
    not_found = {n: (grpc.StatusCode.NOT_FOUND, "task_not_found") for n in calls}
    not_found["RevokeGrant"] = (grpc.StatusCode.NOT_FOUND, "grant_not_found")
    assert {n: (e.code, e.reason) for n, e in errors.items()} == not_found
    assert [g.grant_id for g in still] == [grant.grant_id]
    assert beat.task.subject == "spiffe://jit.local/agent/dev"
    assert len(issued) == 1


def test_oidc_accepts_ed25519_under_either_name(tmp_path: Path, opa: OpaServer) -> None:
    """An OIDC issuer signing with Ed25519 (JWKS alg EdDSA): tokens whose header says EdDSA
    or its RFC 9864 name Ed25519 are both accepted; an Ed25519 header on an RSA key is not."""
    from tests.oidc_issuer import OidcIssuer

    issuer = OidcIssuer()
    issuer.keys = [Key.generate("EdDSA"), Key.generate("RS256")]
    issuer.start()
    process = SidecarProcess(
        tmp_path / "sc",
        opa.url,
        "--oidc-issuer",
        issuer.url,
        "--oidc-subject-map",
        "system:serviceaccount:{ns}:{sa}=spiffe://cluster.local/ns/{ns}/sa/{sa}",
        identity="oidc",
    ).start()
    eddsa, rsa_key = issuer.keys
    try:
        subjects = []
        for alg in ("EdDSA", "Ed25519"):
            token = eddsa.sign(issuer.claims(), alg=alg, typ=None)
            with process.client(identity_token=token) as c:
                subjects.append(c.begin_task(f"oidc {alg}").subject)
        _, payload, signature = rsa_key.sign(issuer.claims(), typ=None).split(".")
        header = b64(json.dumps({"alg": "Ed25519", "kid": rsa_key.kid}).encode())
        mismatched = f"{header}.{payload}.{signature}"
        with (
            process.client(identity_token=mismatched) as c,
            pytest.raises(IdentityRejected) as err,
        ):
            c.begin_task("rsa key claiming Ed25519")
    finally:
        process.stop()
        issuer.stop()
    assert subjects == ["spiffe://cluster.local/ns/agents/sa/billing"] * 2
    assert err.value.metadata["cause"] == "alg_key_mismatch"


def test_task_ids_are_no_oracle_and_cannot_be_squatted(
    tmp_path: Path, opa: OpaServer, domains: Domains
) -> None:
    """Over gRPC, with two SPIFFE identities: every RPC answers another identity's task id
    exactly as an unknown one (status, reason and message), and a task id another identity
    took first is still free for the caller, who then uses it by that name."""
    process = jwt_svid_sidecar(tmp_path / "sc", opa.url, domains).start()
    owner_token = domains.dev.svid("agent/dev")
    thief_token = domains.dev.svid("agent/thief")

    def answers(client: AccessClient, task_id: str) -> list[tuple[grpc.StatusCode, str, str]]:
        calls: list[Callable[[], Any]] = [
            lambda: client.request_grant(task_id, "docs.read", "docs://a"),
            lambda: client.heartbeat(task_id),
            lambda: client.complete_task(task_id),
            lambda: client.list_grants(task_id, include_inactive=True),
        ]
        out = []
        for call in calls:
            with pytest.raises(SidecarRpcError) as err:
                call()
            out.append((err.value.code, err.value.reason, err.value.message.replace(task_id, "ID")))
        return out

    try:
        with process.client(identity_token=owner_token) as owner:
            generated = owner.begin_task("owned")
            named = owner.begin_task("named", task_id="nightly-report")
        with process.client(identity_token=thief_token) as thief:
            foreign = {
                "generated": answers(thief, generated.task_id),
                "named": answers(thief, "nightly-report"),
                "full": answers(thief, named.task_id),
            }
            unknown = answers(thief, "t-00000000000000000000000000")
            squatted = thief.begin_task("squat", task_id="deploy-7")
        with process.client(identity_token=owner_token) as owner:
            mine = owner.begin_task("real", task_id="deploy-7")
            grant = owner.request_grant("deploy-7", "docs.read", "docs://handbook/intro")
    finally:
        process.stop()
    assert unknown == [(grpc.StatusCode.NOT_FOUND, "task_not_found", "no task ID")] * 4
    assert foreign == {k: unknown for k in foreign}
    assert mine.task_id != squatted.task_id
    assert mine.subject == "spiffe://jit.local/agent/dev"
    assert grant.task_id == mine.task_id
