"""Fleets of sidecars sharing revocations through Redis: real sidecar processes, the real
OPA, real throwaway redis-server instances (a single one and a 3-master Cluster) on free
loopback ports, real SQLite. The one fake is `TcpProxy`, which cuts one sidecar off Redis
while the rest of the fleet keeps it."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from sidecar.client import SidecarRpcError
from sidecar.tokens import SigningKey, generate_private_key
from tests.fakes import TcpProxy
from tests.harness import (
    OpaServer,
    RedisClusterServers,
    RedisServer,
    SidecarProcess,
    running,
    tls_files,
    wait_for,
)

FLEET_ACL = (
    "resetkeys ~jit:* ~{jit}:* resetchannels -@all +ping +eval +xread +get +mget +hgetall +hget "
    "+zrangebyscore +hset +set +exists +zadd +zremrangebyscore +pexpireat +pexpiretime +xadd "
    "+xinfo|stream"
)
"""The least a fleet member needs (docs/scale-out.md, "Securing Redis"), with prefix jit."""
AGENT_X = "spiffe://jit.local/agent/dev"  # both own `docs` in rego/jit/data.json
AGENT_Y = "spiffe://jit.local/agent/billing"


def member(
    tmp_path: Path,
    name: str,
    opa: OpaServer,
    url: str,
    prefix: str,
    *extra: str,
    subject: str = AGENT_X,
) -> SidecarProcess:
    """A sidecar of the fleet `prefix` on the Redis at `url`."""
    return SidecarProcess(
        tmp_path / name,
        opa.url,
        "--redis-prefix",
        prefix,
        "--fleet-id",
        name,
        "--dev-subject",
        subject,
        "--sweep-interval",
        "0.2",
        *extra,
        shared=url,
    )


@contextlib.contextmanager
def fleet(*members: SidecarProcess) -> Iterator[tuple[SidecarProcess, ...]]:
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(running(m)) for m in members)


def new_prefix() -> str:
    return "t" + secrets.token_hex(4)


def active(sidecar: SidecarProcess, token: str) -> bool:
    r = requests.post(
        sidecar.http + "/introspect", data={"token": token}, headers=sidecar.http_auth, timeout=5
    )
    assert r.status_code == 200
    return bool(r.json()["active"])


def settled(expected: Any, observe: Callable[[], Any], timeout: float = 5.0) -> Any:
    """What `observe` returns once it equals `expected`, or at the timeout (propagation takes
    milliseconds, but a loaded test machine may delay the receiving process; the figures are
    measured by bench/propagation.py, never here)."""
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: observe() == expected, timeout, interval=0.01)
    return observe()


def ready(sidecar: SidecarProcess) -> tuple[int, dict[str, Any]]:
    r = requests.get(sidecar.http + "/readyz", timeout=5)
    return r.status_code, r.json()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, timeout=30
    )


def issue(sidecar: SidecarProcess, resource: str = "docs://a", ttl: int = 120) -> Any:
    with sidecar.client() as c:
        task = c.begin_task("fleet work", max_duration=300)
        return c.request_grant(task.task_id, "docs.read", resource, ttl_seconds=ttl)


def test_revoke_on_one_sidecar_is_inactive_on_the_others(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """Three sidecars share Redis: A's token is active on B and C (fleet JWKS), a token
    forged under A's kid or signed by an unknown key is not, and once RevokeGrant returns on
    A it is inactive on B and C, with A's revocation reason."""
    prefix = new_prefix()
    members = (member(tmp_path, n, opa, redis_server.url, prefix) for n in ("a", "b", "c"))
    with fleet(*members) as (a, b, c):
        grant = issue(a)
        before = [active(s, grant.token) for s in (a, b, c)]
        stranger = SigningKey.from_private_key(generate_private_key("EdDSA"))
        header, payload, _ = grant.token.split(".")
        resigned = stranger.sign(json.loads(base64.urlsafe_b64decode(payload + "==")))
        forged = f"{header}.{payload}.{resigned.split('.')[2]}"  # A's kid, another key
        fakes = [active(s, t) for s in (b, c) for t in (forged, resigned)]
        with a.client() as client:
            client.revoke_grant(grant.grant_id, "done")
        after = settled([False, False], lambda: [active(s, grant.token) for s in (b, c)])
        with b.client() as client:
            reason = client.introspect(grant.token).revocation_reason
        jwks = requests.get(b.http + "/.well-known/jwks.json", timeout=5).json()
        kids = {k["kid"] for k in jwks["keys"]}
        (issued,) = a.events("grant_issued")
    assert before == [True, True, True]
    assert fakes == [False] * 4
    assert after == [False, False]
    assert reason == "revoked_by_agent"
    assert issued["kid"] in kids  # A's key, served by B
    assert len(kids) == 3
    assert all("d" not in k for k in jwks["keys"])


def test_operator_revokes_by_task_and_grant_from_another_sidecar(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """An operator on B revokes A's grant (by id), A's task (by id), and a resource server
    revokes another of A's tokens through B's RFC 7009 /revoke: all are inactive everywhere at
    once, and A ends them itself, audited with B as their origin."""
    prefix = new_prefix()
    with fleet(*(member(tmp_path, n, opa, redis_server.url, prefix) for n in "ab")) as (a, b):
        lone = issue(a, "docs://lone")
        posted = issue(a, "docs://posted")
        with a.client() as c:
            task = c.begin_task("two grants", max_duration=300)
            g1 = c.request_grant(task.task_id, "docs.read", "docs://1", ttl_seconds=120)
            g2 = c.request_grant(task.task_id, "docs.read", "docs://2", ttl_seconds=120)
        admin = ("--admin-socket", str(b.admin_socket))
        by_grant = cli("revoke", lone.grant_id, *admin, "--reason", "leaked")
        by_task = cli("revoke", "--task", task.task_id, *admin, "--reason", "runaway")
        unknown_task = cli("revoke", "--task", "t-nobody-has-this", *admin)
        rfc7009 = requests.post(
            b.http + "/revoke", data={"token": posted.token}, headers=b.http_auth, timeout=5
        )
        everything = (lone, g1, g2, posted)
        inactive = settled(
            {g.grant_id: [False, False] for g in everything},
            lambda: {g.grant_id: [active(s, g.token) for s in (a, b)] for g in everything},
        )
        wait_for(lambda: len(a.events("grant_revoked")) == 4, 5, what="A to end its grants")
        revoked = {r["grant_id"]: r for r in a.events("grant_revoked")}
        (ended,) = a.events("task_completed")
        orders = b.events("revocation_ordered")
        with a.client() as c:
            states = c.list_grants(task.task_id, include_inactive=True)
    assert by_grant.returncode == 0, by_grant.stderr
    assert by_task.returncode == 0, by_task.stderr
    assert "2 grant(s) revoked" in by_task.stdout
    assert unknown_task.returncode != 0
    assert "task_not_found" in unknown_task.stderr + unknown_task.stdout
    assert rfc7009.status_code == 200
    assert inactive == {g.grant_id: [False, False] for g in everything}
    assert {r["reason"] for r in revoked.values()} == {"revoked_by_operator"}
    assert {r["origin"] for r in revoked.values()} == {"b"}
    assert revoked[lone.grant_id]["detail"] == "from b: leaked"
    assert ended["task_id"] == task.task_id
    assert ended["state"] == "failed"
    assert [(o["scope"], o.get("grant_id") or o.get("task_id")) for o in orders] == [
        ("grant", lone.grant_id),
        ("task", task.task_id),
        ("grant", posted.grant_id),
    ]
    assert {g.revocation_reason for g in states} == {"revoked_by_operator"}


def test_kill_switch_across_the_fleet(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """`revoke --subject X` on B: every token X holds, from A and C, is inactive on every
    sidecar at once; A and C end X's tasks themselves (kill_switch, origin B); Y's token
    stays active; X can be granted anew afterwards. `revoke --all` then ends Y's too."""
    prefix = new_prefix()
    a, b, c = (
        member(tmp_path, name, opa, redis_server.url, prefix, subject=subject)
        for name, subject in (("a", AGENT_X), ("b", AGENT_Y), ("c", AGENT_X))
    )
    with fleet(a, b, c):
        xa, yb, xc = issue(a), issue(b), issue(c)
        killed = cli("revoke", "--subject", AGENT_X, "--admin-socket", str(b.admin_socket))
        expected = {
            "xa": [False, False, False],
            "yb": [True, True, True],
            "xc": [False, False, False],
        }
        after_kill = settled(
            expected,
            lambda: {
                name: [active(s, g.token) for s in (a, b, c)]
                for name, g in (("xa", xa), ("yb", yb), ("xc", xc))
            },
        )
        with c.client() as client:
            reason = client.introspect(xa.token).revocation_reason
        for s in (a, c):
            wait_for(lambda s=s: s.events("grant_revoked"), 5, what="the owner to end X's grant")
        ends = {s.workdir.name: s.events("grant_revoked") for s in (a, c)}
        tasks = {s.workdir.name: s.events("task_completed") for s in (a, c)}
        time.sleep(1.1)  # iat has one-second resolution: the next token is after the cutoff
        fresh = issue(a)
        fresh_active = [active(s, fresh.token) for s in (a, b, c)]
        everything = cli("revoke", "--all", "--admin-socket", str(a.admin_socket))
        after_all = settled(
            [False] * 6, lambda: [active(s, g.token) for g in (yb, fresh) for s in (a, b, c)]
        )
        wait_for(lambda: b.events("grant_revoked"), 5, what="B to end Y's grant")
        (b_end,) = b.events("grant_revoked")
    assert killed.returncode == 0, killed.stderr
    assert after_kill == expected
    assert reason == "kill_switch"
    for name in "ac":
        assert [(e["reason"], e["origin"]) for e in ends[name]] == [("kill_switch", "b")]
        assert [t["state"] for t in tasks[name]] == ["failed"]
    assert fresh_active == [True, True, True]
    assert everything.returncode == 0, everything.stderr
    assert after_all == [False] * 6
    assert (b_end["grant_id"], b_end["reason"], b_end["origin"]) == (
        yb.grant_id,
        "kill_switch",
        "a",
    )


def test_a_sidecar_started_later_sees_earlier_revocations(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """A sidecar that joins after revocations and a kill switch were made refuses the
    tokens they cover and accepts the others."""
    prefix = new_prefix()
    a = member(tmp_path, "a", opa, redis_server.url, prefix, subject=AGENT_X)
    b = member(tmp_path, "b", opa, redis_server.url, prefix, subject=AGENT_Y)
    with fleet(a, b):
        kept, gone = issue(a, "docs://kept"), issue(a, "docs://gone")
        y_token = issue(b)
        with a.client() as client:
            client.revoke_grant(gone.grant_id)
        killed = cli("revoke", "--subject", AGENT_Y, "--admin-socket", str(a.admin_socket))
        with running(member(tmp_path, "late", opa, redis_server.url, prefix)) as late:
            seen = {name: active(late, g.token) for name, g in (("kept", kept), ("gone", gone))}
            seen["y"] = active(late, y_token.token)
            with late.client() as client:
                reasons = [client.introspect(g.token).revocation_reason for g in (gone, y_token)]
    assert killed.returncode == 0, killed.stderr
    assert seen == {"kept": True, "gone": False, "y": False}
    assert reasons == ["revoked_by_agent", "kill_switch"]


def test_redis_down_then_back(tmp_path: Path, opa: OpaServer) -> None:
    """Redis stopped mid-flight: no grant is issued while it is down (UNAVAILABLE,
    store_unavailable), revocations and completions still hold and queue in the outbox,
    views go stale and fail closed; once Redis restarts (empty: no persistence) the outbox
    drains, the epoch change makes every sidecar republish, and a sidecar started afterwards
    sees revocations made both before the outage and during it."""
    server = RedisServer(tmp_path / "redis").start()
    prefix = new_prefix()
    a = member(tmp_path, "a", opa, server.url, prefix)
    b = member(tmp_path, "b", opa, server.url, prefix)
    try:
        with fleet(a, b):
            before = issue(a, "docs://before")
            with a.client() as client:
                client.revoke_grant(before.grant_id)
                task = client.begin_task("in flight", max_duration=300)
                during = client.request_grant(task.task_id, "docs.read", "docs://x")
                finished = client.request_grant(task.task_id, "docs.read", "docs://y")
                kept = issue(a, "docs://kept")
            server.stop()
            with a.client() as client, pytest.raises(SidecarRpcError) as refused:
                client.request_grant(task.task_id, "docs.read", "docs://refused")
            with a.client() as client:
                client.revoke_grant(during.grant_id)
                completed = client.complete_task(task.task_id)
                second = client.begin_task("while down", max_duration=300)
            queued = a.metric("jit_fleet_outbox_depth")
            wait_for(lambda: ready(b)[0] == 503, 5, what="B's view to go stale")
            stale_b = [active(b, g.token) for g in (during, kept)]
            code_a, body_a = ready(a)
            issued = {e["grant_id"] for e in a.events("grant_issued")}
            aborted = {
                e["grant_id"] for e in a.events("grant_revoked") if e["reason"] == "issue_aborted"
            }

            server.start()  # same port, no data
            wait_for(lambda: a.metric("jit_fleet_outbox_depth") == 0, 10, what="the replay")
            wait_for(lambda: ready(a)[0] == 200 and ready(b)[0] == 200, 10, what="readiness")
            after_b = settled(
                {"during": False, "finished": False, "kept": True},
                lambda: {
                    n: active(b, g.token)
                    for n, g in (("during", during), ("finished", finished), ("kept", kept))
                },
            )
            replay_lag = a.metric("jit_fleet_outbox_replay_lag_seconds_count")
            with a.client() as client:
                new = client.request_grant(second.task_id, "docs.read", "docs://new")
            new_on_b = active(b, new.token)
            late = member(tmp_path, "late", opa, server.url, prefix)
            with running(late):
                on_late = {
                    n: active(late, g.token)
                    for n, g in (("before", before), ("during", during), ("kept", kept))
                }
    finally:
        server.stop()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "store_unavailable"
    assert completed.revoked_grants == 1  # `finished`; `kept` is in another task
    assert queued >= 4  # two revocations, the completion and the new task
    assert stale_b == [False, False]
    assert code_a == 503
    assert "Redis unavailable" in body_a["checks"]["fleet"]
    # The first attempt may race the outage's detection: then it is recorded as issued and
    # at once revoked as issue_aborted, and its token never leaves (`refused` above).
    assert issued - {g.grant_id for g in (before, during, finished, kept)} == aborted
    assert len(aborted) <= 1
    assert after_b == {"during": False, "finished": False, "kept": True}
    assert replay_lag >= 4
    assert new_on_b is True
    assert on_late == {"before": False, "during": False, "kept": True}


def test_disconnected_sidecar_applies_kill_switch_on_resync(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """C loses Redis (cut proxy): its view goes stale, so it answers inactive for every
    token and /readyz says why; a kill switch made meanwhile holds on A and B at once, and
    C applies it (its own grant ended, kill_switch, origin B) when it resumes the stream."""
    prefix = new_prefix()
    proxy = TcpProxy(redis_server.port)
    a = member(tmp_path, "a", opa, redis_server.url, prefix, subject=AGENT_Y)
    b = member(tmp_path, "b", opa, redis_server.url, prefix, subject=AGENT_Y)
    c = member(tmp_path, "c", opa, proxy.url, prefix, subject=AGENT_X)
    try:
        with fleet(a, b, c):
            xc, ya = issue(c), issue(a)
            proxy.cut()
            wait_for(lambda: ready(c)[0] == 503, 5, what="C's view to go stale")
            _, readiness = ready(c)
            stale = [active(c, g.token) for g in (xc, ya)]
            with c.client() as client:
                stale_reason = client.introspect(xc.token).revocation_reason
            killed = cli("revoke", "--subject", AGENT_X, "--admin-socket", str(b.admin_socket))
            elsewhere = settled([False, False], lambda: [active(s, xc.token) for s in (a, b)])
            not_yet = c.events("grant_revoked")
            proxy.restore()
            wait_for(lambda: ready(c)[0] == 200, 10, what="C to resynchronise")
            wait_for(lambda: c.events("grant_revoked"), 5, what="C to apply the kill switch")
            (ended,) = c.events("grant_revoked")
            resumed = [active(c, g.token) for g in (xc, ya)]
            resyncs = c.metric("jit_fleet_resyncs_total", kind="incremental")
    finally:
        proxy.close()
    assert "revocation view" in readiness["checks"]["fleet"]
    assert stale == [False, False]
    assert stale_reason == "revocation_view_stale"
    assert killed.returncode == 0, killed.stderr
    assert elsewhere == [False, False]
    assert not_yet == []
    assert (ended["grant_id"], ended["reason"], ended["origin"]) == (
        xc.grant_id,
        "kill_switch",
        "b",
    )
    assert resumed == [False, True]
    assert resyncs >= 1


def test_long_disconnection_resynchronises_from_the_index(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """When the stream no longer holds every entry since the last one a sidecar saw (trimmed
    after the retention), the sidecar reloads the revocation index instead (full resync)
    and misses nothing."""
    prefix = new_prefix()
    proxy = TcpProxy(redis_server.port)
    short = ("--redis-stream-retention", "1")
    a = member(tmp_path, "a", opa, redis_server.url, prefix, *short)
    c = member(tmp_path, "c", opa, proxy.url, prefix, *short)
    try:
        with fleet(a, c):
            g1, g2 = issue(a, "docs://1"), issue(a, "docs://2")
            full_before = c.metric("jit_fleet_resyncs_total", kind="full")
            proxy.cut()
            with a.client() as client:
                client.revoke_grant(g1.grant_id)
                time.sleep(1.5)
                client.revoke_grant(g2.grant_id)  # its XADD trims the first entry
            proxy.restore()
            wait_for(
                lambda: c.metric("jit_fleet_resyncs_total", kind="full") > full_before,
                10,
                what="C to resynchronise",
            )
            wait_for(lambda: ready(c)[0] == 200, 10, what="C's view to be fresh")
            seen = [active(c, g.token) for g in (g1, g2)]
            full_after = c.metric("jit_fleet_resyncs_total", kind="full")
            incremental = c.metric("jit_fleet_resyncs_total", kind="incremental")
    finally:
        proxy.close()
    assert seen == [False, False]
    assert full_after == full_before + 1
    assert incremental == 0


def test_fleet_on_a_redis_cluster(
    tmp_path: Path, opa: OpaServer, redis_cluster: RedisClusterServers
) -> None:
    """Against a 3-master Redis Cluster: revocation, remote task revocation and the kill
    switch propagate; every key of a task sits in one hash slot, every fleet-wide key in
    one slot, and each grant key expires with its grant."""
    prefix = new_prefix()
    flags = ("--redis-cluster", "true")
    a = member(tmp_path, "a", opa, redis_cluster.url, prefix, *flags)
    b = member(tmp_path, "b", opa, redis_cluster.url, prefix, *flags, subject=AGENT_Y)
    with fleet(a, b):
        with a.client() as c:
            tasks = [c.begin_task(f"task {i}", max_duration=300) for i in range(4)]
            grants = [
                c.request_grant(t.task_id, "docs.read", f"docs://{i}", ttl_seconds=120)
                for i, t in enumerate(tasks)
            ]
            c.revoke_grant(grants[0].grant_id)
        by_task = cli("revoke", "--task", tasks[1].task_id, "--admin-socket", str(b.admin_socket))
        y_grant = issue(b)
        killed = cli("revoke", "--subject", AGENT_X, "--admin-socket", str(b.admin_socket))
        states = settled(
            [False, False, False, False, True],
            lambda: [active(b, g.token) for g in (*grants, y_grant)],
        )
        slots: dict[str, set[int]] = {}
        ttl_ok = []
        with redis_cluster.client() as client:
            for t, g in zip(tasks, grants, strict=True):
                keys = [
                    f"{prefix}:{{t:{t.task_id}}}:task",
                    f"{prefix}:{{t:{t.task_id}}}:grants",
                    f"{prefix}:{{t:{t.task_id}}}:grant:{g.grant_id}",
                ]
                slots[t.task_id] = {client.keyslot(k) for k in keys}
                assert all(client.exists(k) for k in keys)
                expires = client.pexpiretime(keys[2]) / 1000
                ttl_ok.append(abs(expires - g.expires_at.seconds) < 1.0)
            fleet_keys = list(client.scan_iter(match=f"{{{prefix}}}:*"))
            fleet_slots = {client.keyslot(k) for k in fleet_keys}
        task_slots = {next(iter(s)) for s in slots.values()}
    assert by_task.returncode == 0, by_task.stderr
    assert killed.returncode == 0, killed.stderr
    assert states == [False, False, False, False, True]
    assert all(len(s) == 1 for s in slots.values())
    assert len(task_slots) > 1  # tasks spread over the cluster
    assert len(fleet_slots) == 1
    fleet_names = {f"{{{prefix}}}:{name}" for name in ("feed", "revocations", "keys", "epoch")}
    assert fleet_names <= set(fleet_keys)
    assert all(ttl_ok)


def test_key_rotation_reaches_the_fleet(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer
) -> None:
    """After A rotates its signing key, B serves A's new and previous public keys and
    accepts tokens signed with either; no private key material is in Redis."""
    prefix = new_prefix()
    with fleet(*(member(tmp_path, n, opa, redis_server.url, prefix) for n in "ab")) as (a, b):
        old = issue(a, "docs://old")
        rotated = cli("keys", "rotate", "--admin-socket", str(a.admin_socket))
        new = issue(a, "docs://new")
        accepted = [active(b, g.token) for g in (old, new)]
        kids = {
            k["kid"]
            for k in requests.get(b.http + "/.well-known/jwks.json", timeout=5).json()["keys"]
        }
        issued = {e["grant_id"]: e["kid"] for e in a.events("grant_issued")}
        with redis_server.client() as client:
            values = [client.get(k) for k in client.scan_iter(match=f"{{{prefix}}}:key:*")]
    assert rotated.returncode == 0, rotated.stderr
    assert accepted == [True, True]
    assert issued[old.grant_id] != issued[new.grant_id]
    assert {issued[old.grant_id], issued[new.grant_id]} <= kids
    assert values
    assert all('"d"' not in v for v in values)


def test_tls_and_acl_user(tmp_path: Path, opa: OpaServer) -> None:
    """Over rediss:// with a least-privilege ACL user (password from a file, CA from
    --redis-ca-file) the fleet works; with a wrong password a sidecar starts but fails
    closed: no grant (store_unavailable), every token inactive, /readyz says why; no password
    in its log."""
    ca, cert, key = tls_files(tmp_path / "tls")
    prefix = new_prefix()
    acl = [rule.replace("jit", prefix) for rule in FLEET_ACL.split()]  # docs/scale-out.md
    user = ("fleet", "pw-0123456789")
    server = RedisServer(tmp_path / "redis", tls=(ca, cert, key), user=user, acl=acl).start()
    good = tmp_path / "redis-password"
    good.write_text("pw-0123456789\n")
    bad = tmp_path / "wrong-password"
    bad.write_text("not-the-password\n")

    def tls_member(name: str, password: Path) -> SidecarProcess:
        flags = ("--redis-ca-file", str(ca), "--redis-password-file", str(password))
        return member(tmp_path, name, opa, server.url, prefix, *flags)

    try:
        with fleet(tls_member("a", good), tls_member("b", good), tls_member("c", bad)) as (
            a,
            b,
            c,
        ):
            grant = issue(a)
            on_b = active(b, grant.token)
            with a.client() as client:
                client.revoke_grant(grant.grant_id)
            after = settled(False, lambda: active(b, grant.token))
            code, body = ready(c)
            with c.client() as client:
                task = client.begin_task("locked out")  # local: works without Redis
                with pytest.raises(SidecarRpcError) as refused:
                    client.request_grant(task.task_id, "docs.read", "docs://a")
            on_c = active(c, issue(a, "docs://other").token)
    finally:
        server.stop()
    assert server.url.startswith("rediss://fleet@")
    assert on_b is True
    assert after is False
    assert code == 503
    assert "revocation view" in body["checks"]["fleet"]
    assert refused.value.reason == "store_unavailable"
    assert on_c is False
    assert "pw-0123456789" not in c.log() + a.log()
    assert "not-the-password" not in c.log()
