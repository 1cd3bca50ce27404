"""Core grant path against a real OPA and a real sidecar process over its Unix socket."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import grpc
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import AccessDenied, SidecarRpcError
from tests.harness import OpaServer, SidecarProcess


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_standing_read_jit_write_and_denial(sidecar: SidecarProcess) -> None:
    """Reads on the agent's own domain are standing, writes are JIT, cross-domain is denied."""
    with sidecar.client() as c:
        task = c.begin_task("triage T-1001", labels={"purpose": "support"})
        read = c.request_grant(task.task_id, "docs.read", "docs://handbook/intro")
        write = c.request_grant(
            task.task_id,
            "tickets.update",
            "tickets://t-1001",
            justification="customer asked to close it",
            ttl_seconds=600,
        )
        with pytest.raises(AccessDenied) as denied:
            c.request_grant(
                task.task_id,
                "payments.refund",
                "payments://orders/42",
                justification="ticket 991 duplicate",
            )
    assert read.tier == pb.TIER_STANDING
    assert write.tier == pb.TIER_JIT
    assert write.expires_at.seconds - write.issued_at.seconds <= 120  # policy cap beats 600
    assert denied.value.reasons == ["cross_domain: payments is not among this agent's domains"]
    events = [r["event"] for r in sidecar.audit_records() if r["event"] != "key_rotated"]
    assert events == ["task_begun", "grant_issued", "grant_issued", "grant_denied"]
    assert sidecar.metric("jit_grant_requests_total", decision="granted", tier="jit") == 1
    assert sidecar.metric("jit_grant_requests_total", decision="denied", tier="") == 1


def test_token_verifies_with_jwks_using_raw_ed25519(sidecar: SidecarProcess) -> None:
    """The token verifies with the JWKS key via `cryptography` directly (not PyJWT) and
    carries exactly the docs/api.md claims."""
    with sidecar.client() as c:
        task = c.begin_task("read")
        grant = c.request_grant(task.task_id, "docs.read", "docs://a/b", ttl_seconds=30)
    jwks = requests.get(sidecar.http + "/.well-known/jwks.json", timeout=5).json()
    header_b64, payload_b64, sig_b64 = grant.token.split(".")
    header = json.loads(_b64d(header_b64))
    claims = json.loads(_b64d(payload_b64))
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    Ed25519PublicKey.from_public_bytes(_b64d(jwk["x"])).verify(
        _b64d(sig_b64), f"{header_b64}.{payload_b64}".encode()
    )
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": jwk["kid"]}
    assert set(claims) == {
        "iss",
        "sub",
        "client_id",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
        "scope",
        "authorization_details",
        "txn",
        "tier",
    }
    assert claims["sub"] == claims["client_id"] == "spiffe://jit.local/agent/dev"
    assert claims["jti"] == grant.grant_id
    assert len(_b64d(claims["jti"])) >= 16
    assert claims["aud"] == "docs"
    assert claims["scope"] == "docs.read"
    assert claims["authorization_details"] == [
        {"type": "jit_intent", "actions": ["docs.read"], "locations": ["docs://a/b"]}
    ]
    assert claims["txn"] == task.task_id
    assert claims["tier"] == "standing"
    assert claims["exp"] - claims["iat"] == 30
    assert claims["nbf"] == claims["iat"]


def test_complete_task_revokes_and_refuses_new_grants(sidecar: SidecarProcess) -> None:
    """CompleteTask revokes every grant; the task then accepts no grant (FAILED_PRECONDITION)."""
    with sidecar.client() as c:
        task = c.begin_task("x")
        c.request_grant(task.task_id, "docs.read", "docs://a")
        c.request_grant(
            task.task_id, "tickets.update", "tickets://1", justification="closing stale ticket"
        )
        done = c.complete_task(task.task_id, "failed", "gave up")
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(task.task_id, "docs.read", "docs://a")
        grants = c.list_grants(task.task_id, include_inactive=True)
    assert done.revoked_grants == 2
    assert done.task.state == pb.TASK_STATE_FAILED
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "task_inactive"
    assert {g.state for g in grants} == {pb.GRANT_STATE_REVOKED}
    assert {g.revocation_reason for g in grants} == {"failed"}
    assert sidecar.metric("jit_revocations_total", reason="failed") == 2
    assert sidecar.metric("jit_active_grants", tier="jit") == 0


def test_socket_modes(sidecar: SidecarProcess) -> None:
    """Agent socket 0660, admin socket 0600, socket directory 0750."""
    assert stat.S_IMODE(sidecar.socket.stat().st_mode) == 0o660
    assert stat.S_IMODE(sidecar.admin_socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(sidecar.socket.parent.stat().st_mode) == 0o750


def test_ttl_zero_asks_for_the_maximum(sidecar: SidecarProcess) -> None:
    """ttl 0 (or omitted): the longest lifetime the bounds allow, never invalid_ttl; the
    audit record names the bound that applied, not `requested`."""
    with sidecar.client() as c:
        task = c.begin_task("x", max_duration=3600)
        grant = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=0)
    (issued,) = sidecar.events("grant_issued")
    assert grant.grant_id == issued["grant_id"]
    # docs.read is standing: the policy's 900 s, also the standing tier's and the global
    # maximum (--max-ttl); any of the three may be named when they tie
    assert issued["ttl_seconds"] == 900
    assert issued["ttl_limited_by"] in {"policy", "tier_max", "global_max"}
    assert sidecar.events("request_rejected") == []


def test_standard_asyncio_loop_serves_the_same(tmp_path: Path, opa: OpaServer) -> None:
    """`--event-loop asyncio` (the fallback to the uvloop default) issues grants too."""
    process = SidecarProcess(tmp_path / "sc", opa.url, "--event-loop", "asyncio").start()
    try:
        with process.client() as c:
            task = c.begin_task("asyncio loop")
            grant = c.request_grant(task.task_id, "docs.read", "docs://handbook")
        code = process.stop()
    finally:
        if process.proc is not None:
            process.kill()
    assert grant.tier == pb.TIER_STANDING
    assert code == 0
    assert [r["event"] for r in process.events("grant_issued")] == ["grant_issued"]
