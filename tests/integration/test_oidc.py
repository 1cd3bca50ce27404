"""OIDC identity mode against a real sidecar process over its Unix socket, with a real HTTP
issuer on loopback (discovery + JWKS) standing in for a Kubernetes API server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar.client import AccessDenied, IdentityRejected
from tests.harness import OpaServer, SidecarProcess, wait_for
from tests.identity_kit import Key, sign_raw
from tests.oidc_issuer import OidcIssuer

pytestmark = pytest.mark.integration
SUBJECT_MAP = "system:serviceaccount:{ns}:{sa}=spiffe://cluster.local/ns/{ns}/sa/{sa}"


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    server = OidcIssuer().start()
    yield server
    server.stop()


def oidc_sidecar(workdir: Path, opa_url: str, issuer: OidcIssuer, *extra: str) -> SidecarProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return SidecarProcess(
        workdir,
        opa_url,
        "--oidc-issuer",
        issuer.url,
        "--oidc-subject-map",
        SUBJECT_MAP,
        *extra,
        identity="oidc",
    )


def _refused(process: SidecarProcess, token: str) -> IdentityRejected:
    with process.client(identity_token=token) as c, pytest.raises(IdentityRejected) as err:
        c.begin_task("x")
    return err.value


def test_service_account_token_maps_to_identity(
    tmp_path: Path, own_opa: OpaServer, issuer: OidcIssuer
) -> None:
    """A projected SA token is accepted; sub maps to the SPIFFE-style ID; policy sees it."""
    own_opa.put_policy(
        "echo",
        'package echo\ndecision := {"allow": false, "reasons": [json.marshal(input.identity)]}\n',
    )
    process = oidc_sidecar(
        tmp_path / "sc", own_opa.url, issuer, "--opa-decision-path", "/v1/data/echo/decision"
    ).start()
    try:
        with process.client(identity_token=issuer.token()) as c:
            task = c.begin_task("k8s")
            with pytest.raises(AccessDenied) as denied:
                c.request_grant(task.task_id, "docs.read", "docs://a")
    finally:
        process.stop()
    identity = json.loads(denied.value.reasons[0])
    assert task.subject == "spiffe://cluster.local/ns/agents/sa/billing"
    assert identity["subject"] == task.subject
    assert identity["trust_domain"] == "cluster.local"
    assert identity["method"] == "oidc"
    assert identity["issuer"] == issuer.url
    assert identity["claims"]["sub"] == "system:serviceaccount:agents:billing"
    assert identity["claims"]["kubernetes.io"]["pod"]["name"] == "billing-7d9f"
    assert set(identity["claims"]) == {"iss", "sub", "aud", "kubernetes.io"}


def test_oidc_bad_tokens(tmp_path: Path, opa: OpaServer, issuer: OidcIssuer) -> None:
    """Issuer prefix/superstring, unmapped subject, wrong aud, at+jwt typ: all refused,
    nothing begun, and the cause logged."""
    process = oidc_sidecar(tmp_path / "sc", opa.url, issuer).start()
    cases = {
        "issuer superstring": (issuer.token(iss=issuer.url + "/evil"), "issuer_not_allowed"),
        "issuer prefix": (issuer.token(iss=issuer.url[:-1]), "issuer_not_allowed"),
        "issuer trailing slash": (issuer.token(iss=issuer.url + "/"), "issuer_not_allowed"),
        "unmapped subject": (issuer.token(sub="user:alice"), "subject_unmapped"),
        "subject smuggling a path": (
            issuer.token(sub="system:serviceaccount:a/b:c"),
            "subject_unmapped",
        ),
        "wrong aud": (issuer.token(aud=["kubernetes"]), "audience_mismatch"),
        "alg none": (sign_raw({"alg": "none"}, issuer.claims(), None), "alg_not_allowed"),
        "expired": (issuer.token(ttl=-60), "expired"),
    }
    try:
        causes = {name: _refused(process, token) for name, (token, _) in cases.items()}
        begun = process.events("task_begun")
        logged = [r.get("cause") for r in process.log_records() if r.get("rpc") == "BeginTask"]
    finally:
        process.stop()
    assert {n: (e.code, e.metadata["cause"]) for n, e in causes.items()} == {
        n: (grpc.StatusCode.UNAUTHENTICATED, cause) for n, (_, cause) in cases.items()
    }
    assert begun == []
    assert sorted(logged) == sorted(cause for _, cause in cases.values())


def test_unknown_kid_refetch_is_rate_limited(
    tmp_path: Path, opa: OpaServer, issuer: OidcIssuer
) -> None:
    """A rotated key is fetched on its first unknown kid; another unknown kid within 30 s
    triggers no second fetch."""
    process = oidc_sidecar(tmp_path / "sc", opa.url, issuer).start()
    try:
        with process.client(identity_token=issuer.token()) as c:
            c.begin_task("before rotation")
        fetches_at_start = issuer.jwks_fetches
        issuer.keys.insert(0, Key.generate("ES256"))
        with process.client(identity_token=issuer.token()) as c:
            rotated = c.begin_task("after rotation").subject
        after_rotation = issuer.jwks_fetches
        stranger = Key.generate("RS256")
        err = _refused(process, issuer.token(key=stranger))
        after_stranger = issuer.jwks_fetches
    finally:
        process.stop()
    assert rotated == "spiffe://cluster.local/ns/agents/sa/billing"
    assert after_rotation == fetches_at_start + 1
    assert err.metadata["cause"] == "kid_unknown"
    assert after_stranger == after_rotation


def test_issuer_down_serves_cache_then_fails_closed(
    tmp_path: Path, opa: OpaServer, issuer: OidcIssuer
) -> None:
    """With the issuer down, cached keys keep working until their max age; then every token
    of that issuer is refused."""
    process = oidc_sidecar(
        tmp_path / "sc", opa.url, issuer, "--oidc-refresh", "0.5", "--oidc-keys-max-age", "2"
    ).start()
    try:
        token = issuer.token()
        issuer.stop()
        down_at = time.monotonic()
        with process.client(identity_token=token) as c:
            c.begin_task("issuer down, keys fresh")
        served_within = time.monotonic() - down_at
        wait_for(lambda: time.monotonic() - down_at > 2.5, 5)
        err = _refused(process, issuer.token())
        fetch_errors = [r for r in process.log_records() if r.get("cause") == "oidc_fetch_failed"]
    finally:
        process.stop()
    assert served_within < 2
    assert err.metadata["cause"] == "issuer_keys_unavailable"
    assert fetch_errors
