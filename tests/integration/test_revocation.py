"""Revocation by default, against real sidecar processes, the real OPA and real SQLite:
heartbeats and crash detection, deadlines, expiry, revocation by agent and operator,
introspection (gRPC and RFC 7662 HTTP), RFC 7009 revocation, kill -9 recovery, SIGTERM drain."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import SidecarRpcError
from sidecar.tokens import SigningKey, generate_private_key
from tests.fakes import VALID_JIT, FakeOpa
from tests.harness import OpaServer, SidecarProcess, running, wait_for

FAST = ("--heartbeat-interval", "1", "--sweep-interval", "0.2")


def introspect_http(sidecar: SidecarProcess, token: str) -> dict[str, Any]:
    r = requests.post(
        sidecar.http + "/introspect", data={"token": token}, headers=sidecar.http_auth, timeout=5
    )
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def end_records(sidecar: SidecarProcess) -> collections.Counter[str]:
    """How many revoked/expired records each grant has (must never exceed one)."""
    return collections.Counter(
        r["grant_id"]
        for r in sidecar.audit_records()
        if r["event"] in ("grant_revoked", "grant_expired")
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=30
    )


def test_heartbeats_keep_a_task_alive_and_silence_crashes_it(
    tmp_path: Path, opa: OpaServer
) -> None:
    """Heartbeats keep a task alive past 3 intervals; when they stop, the task is marked
    crashed and its grant revoked (agent_lost) once, with the revocation lag measured."""
    with running(SidecarProcess(tmp_path / "s", opa.url, *FAST)) as sidecar, sidecar.client() as c:
        task = c.begin_task("long job")
        grant = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=120)
        for _ in range(8):  # 4 s: longer than the 3 s crash window
            silent_since = time.monotonic()
            c.heartbeat(task.task_id)
            time.sleep(0.5)
        assert introspect_http(sidecar, grant.token)["active"] is True
        wait_for(
            lambda: not introspect_http(sidecar, grant.token)["active"], 10, what="crash detection"
        )
        detected_after = time.monotonic() - silent_since
        with pytest.raises(SidecarRpcError) as err:
            c.heartbeat(task.task_id)
        (revoked,) = sidecar.events("grant_revoked")
        (ended,) = sidecar.events("task_completed")
        lag_count = sidecar.metric("jit_revocation_lag_seconds_count", reason="agent_lost")
        revocations = sidecar.metric("jit_revocations_total", reason="agent_lost")
    assert 2.95 <= detected_after <= 6.0  # not before 3 intervals; soon after (sweeps 0.2 s)
    assert err.value.reason == "task_inactive"
    assert revoked["reason"] == "agent_lost"
    assert revoked["grant_id"] == grant.grant_id
    assert ended["state"] == "crashed"
    assert revocations == 1
    assert lag_count == 1


def test_task_deadline_ends_the_task_and_its_grants(tmp_path: Path, opa: OpaServer) -> None:
    """A task past its deadline is marked expired; its grants, whose TTL never reaches past
    the deadline, have ended by then, each with exactly one record."""
    with running(SidecarProcess(tmp_path / "s", opa.url, *FAST)) as sidecar, sidecar.client() as c:
        task = c.begin_task("short", max_duration=2)
        grant = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=60)
        wait_for(lambda: sidecar.events("task_completed"), 6, what="task expiry")
        (ended,) = sidecar.events("task_completed")
        inactive = introspect_http(sidecar, grant.token)
        with pytest.raises(SidecarRpcError) as err:
            c.request_grant(task.task_id, "docs.read", "docs://a")
    assert grant.expires_at.seconds <= task.deadline.seconds
    assert ended["state"] == "expired"
    assert ended["reason"] == "task_expired"
    assert inactive == {"active": False}
    assert end_records(sidecar) == {grant.grant_id: 1}
    assert err.value.reason == "task_inactive"


def test_grant_expiry_is_recorded_and_counted_once(tmp_path: Path, opa: OpaServer) -> None:
    """A grant past its exp is marked expired with one record and counted once."""
    with running(SidecarProcess(tmp_path / "s", opa.url, *FAST)) as sidecar, sidecar.client() as c:
        task = c.begin_task("x")
        grant = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=1)
        wait_for(lambda: sidecar.events("grant_expired"), 5, what="grant expiry")
        time.sleep(0.5)  # further sweeps must not count it again
        expired = sidecar.events("grant_expired")
        count = sidecar.metric("jit_revocations_total", reason="expired")
        active = sidecar.metric("jit_active_grants", tier="standing")
        grants = c.list_grants(task.task_id, include_inactive=True)
    assert [e["grant_id"] for e in expired] == [grant.grant_id]
    assert count == 1
    assert active == 0
    assert grants[0].state == pb.GRANT_STATE_EXPIRED


def test_revoke_by_agent_then_operator_cli(sidecar: SidecarProcess) -> None:
    """RevokeGrant revokes once (idempotent after); operators revoke by grant and by task
    through the admin socket with `jit-sidecar revoke`."""
    with sidecar.client() as c:
        task = c.begin_task("x")
        g1 = c.request_grant(task.task_id, "docs.read", "docs://1")
        g2 = c.request_grant(task.task_id, "docs.read", "docs://2")
        g3 = c.request_grant(task.task_id, "docs.read", "docs://3")
        first = c.revoke_grant(g1.grant_id, "done with it")
        again = c.revoke_grant(g1.grant_id)
        by_grant = cli(
            "revoke",
            g2.grant_id,
            "--admin-socket",
            str(sidecar.admin_socket),
            "--reason",
            "suspicious",
        )
        by_task = cli("revoke", "--task", task.task_id, "--admin-socket", str(sidecar.admin_socket))
        states = {g.grant_id: g for g in c.list_grants(task.task_id, include_inactive=True)}
    assert first.revoked is True
    assert again.revoked is False
    assert by_grant.returncode == 0, by_grant.stderr
    assert "1 grant(s) revoked" in by_grant.stdout
    assert by_task.returncode == 0, by_task.stderr
    assert "1 grant(s) revoked" in by_task.stdout
    assert states[g1.grant_id].revocation_reason == "revoked_by_agent"
    assert states[g2.grant_id].revocation_reason == "revoked_by_operator"
    assert states[g3.grant_id].revocation_reason == "revoked_by_operator"
    assert max(end_records(sidecar).values()) == 1


def test_introspection_rfc7662(sidecar: SidecarProcess, tmp_path: Path) -> None:
    """Active tokens introspect with the RFC 7662 fields; revoked, foreign-signed and garbage
    tokens as exactly {"active": false}; the gRPC RPC agrees."""
    with sidecar.client() as c:
        task = c.begin_task("x")
        grant = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=60)
        active = introspect_http(sidecar, grant.token)
        rpc_active = c.introspect(grant.token)
        foreign_key = SigningKey.from_private_key(generate_private_key("EdDSA"))
        header, payload, _ = grant.token.split(".")
        # Same claims and a header naming our kid, signed by someone else's key.
        forged = foreign_key.sign({"jti": grant.grant_id, "sub": "x"})
        forged_with_our_kid = f"{header}.{payload}.{forged.split('.')[2]}"
        c.revoke_grant(grant.grant_id)
        revoked = introspect_http(sidecar, grant.token)
        rpc_revoked = c.introspect(grant.token)
    assert active["active"] is True
    assert {"scope", "client_id", "sub", "aud", "exp", "iat", "jti", "txn"} <= set(active)
    assert active["jti"] == grant.grant_id
    assert active["txn"] == task.task_id
    assert active["scope"] == "docs.read"
    assert rpc_active.active and rpc_active.grant_id == grant.grant_id
    assert revoked == {"active": False}
    assert not rpc_revoked.active
    assert rpc_revoked.revocation_reason == "revoked_by_agent"
    for junk in (forged, forged_with_our_kid, "garbage", "a.b.c", "", "x" * 20000):
        assert introspect_http(sidecar, junk) == {"active": False}
    missing = requests.post(
        sidecar.http + "/introspect", data={}, headers=sidecar.http_auth, timeout=5
    )
    assert missing.status_code == 400


def test_rfc7009_revoke_endpoint(sidecar: SidecarProcess) -> None:
    """POST /revoke answers 200 for any token and revokes an active one."""
    with sidecar.client() as c:
        task = c.begin_task("x")
        grant = c.request_grant(task.task_id, "docs.read", "docs://a")
    auth = sidecar.http_auth
    r1 = requests.post(
        sidecar.http + "/revoke", data={"token": grant.token}, headers=auth, timeout=5
    )
    r2 = requests.post(sidecar.http + "/revoke", data={"token": "garbage"}, headers=auth, timeout=5)
    assert r1.status_code == 200
    assert r2.status_code == 200
    assert introspect_http(sidecar, grant.token) == {"active": False}
    (revoked,) = sidecar.events("grant_revoked")
    assert revoked["reason"] == "revoked_by_operator"


def test_http_credential_required_when_configured(tmp_path: Path, opa: OpaServer) -> None:
    """With http_token_file, /introspect and /revoke need the bearer credential;
    /metrics, /healthz and the JWKS stay open."""
    secret = tmp_path / "http-token"
    secret.write_text("s3cret-credential-0123456789\n")
    process = SidecarProcess(tmp_path / "s", opa.url, "--http-token-file", str(secret))
    with running(process) as sidecar:
        denied = requests.post(sidecar.http + "/introspect", data={"token": "x"}, timeout=5)
        wrong = requests.post(
            sidecar.http + "/introspect",
            data={"token": "x"},
            timeout=5,
            headers={"Authorization": "Bearer nope"},
        )
        allowed = requests.post(
            sidecar.http + "/introspect",
            data={"token": "x"},
            timeout=5,
            headers={"Authorization": "Bearer s3cret-credential-0123456789"},
        )
        revoke_denied = requests.post(sidecar.http + "/revoke", data={"token": "x"}, timeout=5)
        jwks = requests.get(sidecar.http + "/.well-known/jwks.json", timeout=5)
    assert denied.status_code == 401
    assert wrong.status_code == 401
    assert allowed.status_code == 200
    assert allowed.json() == {"active": False}
    assert revoke_denied.status_code == 401
    assert jwks.status_code == 200


def test_completion_is_visible_to_introspection_at_once(sidecar: SidecarProcess) -> None:
    """The first introspection after CompleteTask returns already says inactive."""
    with sidecar.client() as c:
        task = c.begin_task("x")
        grant = c.request_grant(task.task_id, "docs.read", "docs://a")
        c.complete_task(task.task_id)
        started = time.perf_counter()
        result = introspect_http(sidecar, grant.token)
        elapsed = time.perf_counter() - started
    assert result == {"active": False}
    print(f"introspection right after CompleteTask: inactive, answered in {elapsed * 1000:.1f} ms")


def test_kill_9_recovery(tmp_path: Path, opa: OpaServer) -> None:
    """SIGKILL with active grants: after a restart, active grants are still active, revoked
    ones stay revoked, grants and tasks whose time passed while down are ended at start-up
    with one record each, nothing is revoked twice, the audit chain is intact."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--sweep-interval", "0.2")
    process.start()
    try:
        with process.client() as c:
            long_task = c.begin_task("long", max_duration=300)
            keep = c.request_grant(long_task.task_id, "docs.read", "docs://keep", ttl_seconds=300)
            short = c.request_grant(long_task.task_id, "docs.read", "docs://short", ttl_seconds=2)
            gone = c.request_grant(long_task.task_id, "docs.read", "docs://gone")
            c.revoke_grant(gone.grant_id)
            brief_task = c.begin_task("brief", max_duration=3)
            brief = c.request_grant(brief_task.task_id, "docs.read", "docs://brief")
        process.kill()
        time.sleep(3.5)  # `short` and `brief_task` run out while the sidecar is down
        records_before = len(process.audit_records())
        process.start()
        with process.client() as c:
            results = {
                name: c.introspect(g.token)
                for name, g in (("keep", keep), ("short", short), ("gone", gone), ("brief", brief))
            }
            states = {g.grant_id: g for g in c.list_grants(long_task.task_id, True)}
        active_gauge = process.metric("jit_active_grants", tier="standing")
        process.stop()
        after_first_restart = process.audit_records()
        process.start()  # a second restart must add nothing but the restart itself
        process.stop()
        after_second_restart = process.audit_records()
    finally:
        if process.proc is not None:
            process.kill()
    assert results["keep"].active
    assert not results["short"].active
    assert not results["gone"].active
    assert results["gone"].revocation_reason == "revoked_by_agent"
    assert not results["brief"].active
    new = after_first_restart[records_before:]
    # brief's grant expires (its TTL stops at the task deadline) before the task does.
    assert [(r["event"], r.get("reason")) for r in new if r["event"] != "key_rotated"] == [
        ("grant_expired", "expired"),
        ("grant_expired", "expired"),
        ("task_completed", "task_expired"),
    ]
    assert {r.get("grant_id") for r in new if r["event"].startswith("grant_")} == {
        short.grant_id,
        brief.grant_id,
    }
    assert states[keep.grant_id].state == pb.GRANT_STATE_ACTIVE
    assert states[short.grant_id].state == pb.GRANT_STATE_EXPIRED
    assert states[gone.grant_id].state == pb.GRANT_STATE_REVOKED
    assert active_gauge == 1
    assert after_second_restart == after_first_restart
    assert max(end_records(process).values()) == 1
    verify = cli("audit", "verify", str(process.audit))
    assert verify.returncode == 0, verify.stdout


def test_kill_9_longer_than_heartbeat_window_crashes_tasks(tmp_path: Path, opa: OpaServer) -> None:
    """Down for longer than 3 heartbeat intervals: at start-up the task counts as crashed
    and its grants are revoked (agent_lost), once."""
    process = SidecarProcess(tmp_path / "s", opa.url, *FAST)
    process.start()
    try:
        with process.client() as c:
            task = c.begin_task("x", max_duration=300)
            grant = c.request_grant(task.task_id, "docs.read", "docs://a", ttl_seconds=300)
        process.kill()
        time.sleep(3.5)
        process.start()
        with process.client() as c:
            result = c.introspect(grant.token)
        (revoked,) = process.events("grant_revoked")
        (ended,) = process.events("task_completed")
    finally:
        process.stop()
    assert not result.active
    assert revoked["reason"] == "agent_lost"
    assert ended["state"] == "crashed"


def test_sigterm_drains_an_in_flight_call(tmp_path: Path) -> None:
    """SIGTERM with a call in flight: the call completes with its grant, new calls are
    refused, the audit log is flushed and intact, the process exits 0."""
    fake = FakeOpa().start()
    try:
        process = SidecarProcess(tmp_path / "s", fake.url, "--opa-timeout", "5")
        process.start()
        outcome: dict[str, Any] = {}
        with process.client() as c:
            task = c.begin_task("x")
            fake.answer({"result": VALID_JIT}, delay=1.5)

            def slow_call() -> None:
                try:
                    outcome["grant"] = c.request_grant(
                        task.task_id, "x.write", "x://1", justification="in flight at shutdown"
                    )
                except Exception as err:  # recorded and asserted below
                    outcome["error"] = err

            caller = threading.Thread(target=slow_call)
            caller.start()
            wait_for(lambda: fake.requests, 5, what="the call to reach OPA")
            assert process.proc is not None
            process.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(SidecarRpcError) as late:
                c.begin_task("too late")
            caller.join(10)
        code = process.stop()
    finally:
        fake.stop()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["grant"].grant_id
    assert code == 0
    assert late.value.code in (grpc.StatusCode.UNAVAILABLE,)
    (issued,) = process.events("grant_issued")
    assert issued["grant_id"] == outcome["grant"].grant_id
    assert [r["grant_id"] for r in process.grant_rows()] == [issued["grant_id"]]
    verify = cli("audit", "verify", str(process.audit))
    assert verify.returncode == 0, verify.stdout
