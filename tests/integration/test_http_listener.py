"""The HTTP listener under attack and misuse (issue 13 finding 3): credential by default,
header and body timeouts, the connection cap, and a local user holding hundreds of idle
connections at a low open-file limit while agents keep getting grants.

Real sidecar processes, the real OPA, real TCP and Unix sockets (tests/harness.py).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.harness import (
    OpaServer,
    SidecarProcess,
    free_port,
    run_captured,
    running,
    task_holders,
    wait_for,
)
from tests.slowloris import Attackers, LimitedSidecar, connect, open_fds

pytestmark = pytest.mark.integration


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True once the peer closed `sock` (EOF or reset) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            continue
        try:
            if sock.recv(4096) == b"":
                return True
        except ConnectionResetError:
            return True
    return False


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


# ---------------------------------------------------------------------- credential
def test_introspect_and_revoke_need_a_credential_by_default(tmp_path: Path, opa: OpaServer) -> None:
    """Without http_token_file, /introspect and /revoke answer 401 invalid_client to every
    caller (RFC 7662 §2.1, RFC 7009 §2.1) and the start-up log says why; /healthz and the
    JWKS stay open."""
    process = SidecarProcess(tmp_path / "s", opa.url, http_credential=False)
    with running(process) as sidecar:
        with sidecar.client() as c:
            task = c.begin_task("x")
            grant = c.request_grant(task.task_id, "docs.read", "docs://a")
        anonymous = requests.post(
            sidecar.http + "/introspect", data={"token": grant.token}, timeout=5
        )
        guessing = requests.post(
            sidecar.http + "/introspect",
            data={"token": grant.token},
            headers={"Authorization": "Bearer 0123456789abcdef0123"},
            timeout=5,
        )
        revoke = requests.post(sidecar.http + "/revoke", data={"token": grant.token}, timeout=5)
        health = requests.get(sidecar.http + "/healthz", timeout=5)
        jwks = requests.get(sidecar.http + "/.well-known/jwks.json", timeout=5)
        with sidecar.client() as c:
            still_active = c.introspect(grant.token).active
    assert anonymous.status_code == 401
    assert anonymous.json() == {
        "error": "invalid_client",
        "error_description": "no_credential_configured",
    }
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert guessing.status_code == 401
    assert revoke.status_code == 401
    assert still_active  # the refused /revoke revoked nothing
    assert health.status_code == 200
    assert jwks.status_code == 200
    warnings = [r["msg"] for r in process.log_records() if r.get("level") == "warning"]
    assert any("no http_token_file" in m for m in warnings), warnings


def test_anonymous_loopback_is_an_explicit_opt_in(tmp_path: Path, opa: OpaServer) -> None:
    """--http-allow-anonymous-loopback serves /introspect without a credential."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--http-allow-anonymous-loopback")
    with running(process) as sidecar:
        with sidecar.client() as c:
            task = c.begin_task("x")
            grant = c.request_grant(task.task_id, "docs.read", "docs://a")
        answer = requests.post(sidecar.http + "/introspect", data={"token": grant.token}, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["active"] is True
    assert answer.json()["jti"] == grant.grant_id


# ---------------------------------------------------------------------- timeouts
def test_slow_headers_are_cut_off_after_the_header_timeout(sidecar: SidecarProcess) -> None:
    """A client trickling a request head one byte a second is disconnected once the default
    http_header_timeout (10 s) has passed since it connected, not later."""
    sock = connect(sidecar.http_port)
    opened = time.monotonic()
    closed_at = None
    try:
        while time.monotonic() - opened < 25:
            if closed_by_peer(sock, 1.0):
                closed_at = time.monotonic() - opened
                break
            try:
                sock.sendall(b"X")
            except OSError:
                closed_at = time.monotonic() - opened
                break
    finally:
        sock.close()
    assert closed_at is not None, "the slow-headers client was never cut off"
    assert 9.0 <= closed_at <= 16.0, closed_at


def test_slow_body_gets_408(tmp_path: Path, opa: OpaServer) -> None:
    """A /introspect body that stops arriving gets 408 body_timeout after
    http_body_timeout."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--http-body-timeout", "1")
    with running(process) as sidecar:
        sock = socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=5)
        auth = sidecar.http_auth["Authorization"]
        sock.sendall(
            b"POST /introspect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Authorization: {auth}\r\n".encode()
            + b"Content-Length: 100\r\n\r\ntoken=abc"
        )
        started = time.monotonic()
        select.select([sock], [], [], 10)
        waited = time.monotonic() - started
        answer = read_response(sock)
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body) == {"error": "invalid_request", "error_description": "body_timeout"}
    assert 0.9 <= waited <= 8, waited


# ---------------------------------------------------------------------- connection cap
def test_connection_cap_replaces_idle_connections_and_refuses_when_all_are_busy(
    tmp_path: Path, opa: OpaServer
) -> None:
    """At http_max_connections, a caller is still served by closing the connection idle
    longest; when every connection is handling a request, the next one gets 503
    too_many_connections."""
    process = SidecarProcess(
        tmp_path / "s", opa.url, "--http-max-connections", "3", "--http-body-timeout", "30"
    )
    with running(process) as sidecar:
        idle = [connect(sidecar.http_port) for _ in range(3)]
        time.sleep(0.3)
        served = requests.get(sidecar.http + "/healthz", timeout=5)
        oldest_closed = closed_by_peer(idle[0], 3.0)
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        # Three requests in their handlers (waiting for a body that never comes).
        auth = sidecar.http_auth["Authorization"]
        busy = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=5)
            sock.sendall(
                b"POST /introspect HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                + f"Authorization: {auth}\r\n".encode()
                + b"Content-Length: 100\r\n\r\ntoken="
            )
            busy.append(sock)
        time.sleep(0.5)
        extra = socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=5)
        refused = read_response(extra, 5)
        extra.close()
        for sock in busy:
            sock.close()
    assert served.status_code == 200
    assert oldest_closed
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), refused[:200]
    assert json.loads(body)["error_description"] == "too_many_connections"


def test_idle_attackers_cannot_starve_agents_or_introspection(
    tmp_path: Path, opa: OpaServer
) -> None:
    """With 300 idle HTTP connections held at an open-file limit of 256, a new agent's gRPC
    connection gets grants and /introspect (with the credential) answers; the sidecar's
    descriptors stay below the limit and the cap (a quarter of it) is logged."""
    process = LimitedSidecar(tmp_path / "s", opa.url)
    with running(process) as sidecar, Attackers(sidecar.http_port, 300) as attack:
        assert sidecar.proc is not None
        pid = sidecar.proc.pid
        peak = open_fds(pid)
        tokens = []
        with sidecar.client() as c:  # a new channel: a new agent connecting now
            task = c.begin_task("under attack")
            for i in range(20):
                grant = c.request_grant(task.task_id, "docs.read", f"docs://a/{i}")
                tokens.append(grant.token)
                peak = max(peak, open_fds(pid))
        answers = []
        for token in tokens:
            r = requests.post(
                sidecar.http + "/introspect",
                data={"token": token},
                headers=sidecar.http_auth,
                timeout=10,
            )
            answers.append((r.status_code, r.json().get("active")))
            peak = max(peak, open_fds(pid))
        health = requests.get(sidecar.http + "/healthz", timeout=10)
        held = attack.connected
    assert held == 300
    assert answers == [(200, True)] * 20
    assert health.status_code == 200
    assert peak < LimitedSidecar.nofile - 32, peak
    messages = [r["msg"] for r in process.log_records()]
    assert any("at most 64 connections" in m for m in messages), messages[-20:]
    assert any("at its cap of 64 connections" in m for m in messages), messages[-20:]


# ---------------------------------------------------------------------- start-up
def test_http_port_in_use_is_a_one_line_error(tmp_path: Path, opa: OpaServer) -> None:
    """`serve` on an HTTP port already in use prints `jit-sidecar: ...` naming the address,
    exits 2, shows no traceback, and leaves no socket behind."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    process = SidecarProcess(tmp_path / "s", opa.url, http_port=port)
    try:
        process.http_token.write_text("0123456789abcdef0123456789\n")
        run = run_captured(process.args(), tmp_path, 60)
    finally:
        holder.close()
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("jit-sidecar: "), run.stderr
    assert f"127.0.0.1:{port}" in lines[-1]
    assert "already in use" in lines[-1]
    assert "Traceback" not in run.stderr
    assert not process.socket.exists()


def test_opa_unreachable_at_start_is_logged_as_an_error(tmp_path: Path) -> None:
    """When OPA does not answer at start-up, the first failed probe is an error line that
    names OPA's URL."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    process = SidecarProcess(tmp_path / "s", nowhere)
    with running(process):
        wait_for(
            lambda: any(r.get("level") == "error" for r in process.log_records()),
            10,
            what="an error line",
        )
    errors = [r["msg"] for r in process.log_records() if r.get("level") == "error"]
    assert any(nowhere in m and "unreachable" in m for m in errors), errors


# ---------------------------------------------------------------------- people at a terminal
def cli(sidecar: SidecarProcess, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sidecar.cli", *args, "--socket", str(sidecar.socket)]
    return run_captured(argv, sidecar.workdir, 30)


def test_task_begin_hold_keeps_a_cli_task_alive_and_ends_with_it(
    tmp_path: Path, opa: OpaServer
) -> None:
    """With 1 s heartbeats (3 misses), a task begun with --hold is still active 6 s later;
    `task complete` stops its holder first, so no heartbeat reaches the ended task; a held
    task that reaches its deadline ends its holder too; one begun without --hold crashes."""
    fast = ("--heartbeat-interval", "1", "--sweep-interval", "0.2")
    with running(SidecarProcess(tmp_path / "s", opa.url, *fast)) as sidecar:
        held = cli(sidecar, "task", "begin", "--goal", "held", "--hold", "-q")
        short = cli(sidecar, "task", "begin", "--max-duration", "4", "--hold", "-q")
        bare = cli(sidecar, "task", "begin", "--goal", "bare", "-q")
        held_id, short_id, bare_id = (r.stdout.strip() for r in (held, short, bare))
        time.sleep(6)
        granted = cli(sidecar, "grant", held_id, "docs.read", "docs://a", "-q")
        crashed = cli(sidecar, "grant", bare_id, "docs.read", "docs://a", "-q")
        assert task_holders(held_id)
        done = cli(sidecar, "task", "complete", held_id)
        holders_left = task_holders(held_id)
        wait_for(lambda: not task_holders(short_id), 10, what="the short task's holder to exit")
        time.sleep(2)  # a holder that outlived its task would heartbeat in this time
        ended = {e["task_id"]: e["state"] for e in sidecar.events("task_completed")}
        rejected = [(e["rpc"], e["task_id"]) for e in sidecar.events("request_rejected")]
    assert held_id.startswith("t-")
    assert granted.returncode == 0 and granted.stdout.startswith("eyJ")
    assert crashed.returncode != 0
    assert "task_inactive" in crashed.stderr
    assert done.returncode == 0
    assert holders_left == []
    assert ended == {bare_id: "crashed", short_id: "expired", held_id: "succeeded"}
    # The grant on the crashed task; the short task's holder learnt of its end once.
    assert sorted(rejected) == sorted([("RequestGrant", bare_id), ("Heartbeat", short_id)])
