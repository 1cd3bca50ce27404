"""Brokered grants end to end: a real sidecar process (gRPC over its Unix socket), the real OPA
with the policy library (rego/: postgres://crm/public.tickets is brokered, privileges by the
action's class) and a real PostgreSQL cluster (tests/postgres.py). Every assertion reads the
real catalog (`pg_roles`, `pg_stat_activity`), runs a real query through the issued login,
or reads the sidecar's own audit log, store and metrics."""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from sidecar._proto.jit.v1 import access_pb2 as pb
from sidecar.client import AccessClient, Grant, SidecarRpcError, grant_from_response
from tests.faults import immutable
from tests.grant_streams import RawStream, status_reason, stream_intent
from tests.harness import OpaServer, SidecarProcess, run_captured, running, wait_for
from tests.postgres import PostgresServer

pytestmark = pytest.mark.integration
TABLE = "postgres://crm/public.tickets"
DEV = "spiffe://jit.local/agent/dev"


def brokered_sidecar(
    workdir: Path, opa: OpaServer, server: PostgresServer, *extra: str
) -> SidecarProcess:
    """A sidecar whose postgres broker gets its admin DSN from the environment (never a
    flag), retrying revocations at most every second."""
    return SidecarProcess(
        workdir,
        opa.url,
        "--broker-retry-max",
        "1",
        *extra,
        env={"JIT_SIDECAR_BROKER_POSTGRES_DSN": server.admin_dsn},
    )


@pytest.fixture
def pg_sidecar(
    tmp_path: Path, opa: OpaServer, postgres: PostgresServer
) -> Iterator[SidecarProcess]:
    process = brokered_sidecar(tmp_path / "sidecar", opa, postgres).start()
    yield process
    if process.proc is not None:
        process.stop(timeout=15)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A cluster of this test's own, which it may stop and start."""
    server = PostgresServer(tmp_path / "pg").start()
    yield server
    server.destroy()


def role_exists(server: PostgresServer, role: str) -> bool:
    return bool(server.query("SELECT 1 FROM pg_roles WHERE rolname = %s", role))


def brokered_roles(server: PostgresServer) -> list[str]:
    """Roles the broker made (they carry its comment), whoever recorded them."""
    rows = server.query(
        "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') LIKE "
        "'jit-sidecar grant=%%'"
    )
    return [r[0] for r in rows]


def sessions(server: PostgresServer, role: str) -> int:
    return int(server.query("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", role)[0][0])


def read_grant(client: AccessClient, task_id: str, ttl: int = 300) -> Grant:
    response = client.request_grant_raw(task_id, "postgres.read", TABLE, ttl_seconds=ttl)
    return grant_from_response(response)


def open_session(grant: Grant) -> psycopg.Connection[Any]:
    assert grant.credential is not None
    conn = psycopg.connect(grant.credential.dsn, autocommit=True)
    conn.execute("SELECT 1")
    return conn


def stop_postgres(server: PostgresServer) -> None:
    """Stop the cluster as a crash would (immediate), after a CHECKPOINT: the test cluster
    runs with synchronous_commit=off, and an immediate stop would otherwise lose the roles
    created in the last few hundred milliseconds, which a real server keeps."""
    server.execute("CHECKPOINT")
    server.stop()


def wait_gone(server: PostgresServer, role: str, timeout: float = 15) -> None:
    wait_for(lambda: not role_exists(server, role), timeout, what=f"role {role} to be dropped")


def test_granted_select_works_and_update_is_refused(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """postgres.read yields a login that can SELECT the table and nothing more; the lease
    (never the secret) shows in ListGrants, introspection, the audit log and the metrics."""
    with pg_sidecar.client() as client:
        task = client.begin_task("read tickets")
        grant = read_grant(client, task.task_id)
        assert grant.credential is not None
        with psycopg.connect(grant.credential.dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT subject FROM public.tickets WHERE id = 1001").fetchall()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("UPDATE public.tickets SET subject = 'x' WHERE id = 1001")
        listed = client.list_grants(task.task_id)
        introspected = client.introspect(grant.token)
        client.complete_task(task.task_id)
    assert rows == [("printer on fire",)]
    assert grant.lease is not None
    assert grant.lease.handle == grant.credential.username
    assert grant.lease.details == {
        "database": "crm",
        "privileges": "SELECT",
        "tables": "public.tickets",
    }
    assert [g.lease.handle for g in listed] == [grant.lease.handle]
    assert introspected.lease.handle == grant.lease.handle
    (issued,) = pg_sidecar.events("credential_issued")
    assert (issued["grant_id"], issued["broker"], issued["handle"]) == (
        grant.grant_id,
        "postgres",
        grant.lease.handle,
    )
    assert (
        pg_sidecar.metric(
            "jit_broker_operations_total", broker="postgres", op="issue", outcome="ok"
        )
        == 1
    )
    wait_gone(postgres, grant.lease.handle)
    everything = pg_sidecar.audit.read_text() + pg_sidecar.log()
    assert grant.credential.password not in everything
    assert postgres.admin_password not in everything


def test_complete_task_ends_the_open_session_and_the_login(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """After CompleteTask the agent's open session is terminated, a new login with the same
    credential fails, the role is gone and credential_revoked is audited."""
    with pg_sidecar.client() as client:
        task = client.begin_task("read tickets")
        grant = read_grant(client, task.task_id)
        assert grant.credential is not None and grant.lease is not None
        conn = open_session(grant)
        assert sessions(postgres, grant.lease.handle) == 1
        client.complete_task(task.task_id)
    try:
        wait_for(lambda: sessions(postgres, grant.lease.handle) == 0, 10, what="session end")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    wait_gone(postgres, grant.lease.handle)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(grant.credential.dsn)
    wait_for(lambda: pg_sidecar.events("credential_revoked"), 10, what="credential_revoked")
    (revoked,) = pg_sidecar.events("credential_revoked")
    assert "password authentication failed" in str(refused.value)
    assert (revoked["grant_id"], revoked["handle"], revoked["reason"]) == (
        grant.grant_id,
        grant.lease.handle,
        "completed",
    )
    assert pg_sidecar.metric("jit_broker_pending_revocations") == 0


def test_crashed_agent_loses_its_session(
    tmp_path: Path, opa: OpaServer, postgres: PostgresServer
) -> None:
    """An agent that stops heartbeating is declared crashed, and its open database session
    is terminated with the role."""
    process = brokered_sidecar(tmp_path / "s", opa, postgres, "--heartbeat-interval", "1")
    with running(process), process.client() as client:
        task = client.begin_task("read tickets")  # and never a heartbeat
        grant = read_grant(client, task.task_id)
        assert grant.lease is not None
        conn = open_session(grant)
        try:
            wait_for(lambda: sessions(postgres, grant.lease.handle) == 0, 20, what="session end")
        finally:
            conn.close()
        wait_gone(postgres, grant.lease.handle)
        # The record is committed after the broker dropped the role: wait for it too.
        wait_for(lambda: process.events("credential_revoked"), 10, what="credential_revoked")
        (revoked,) = process.events("credential_revoked")
        process.stop()
    assert revoked["reason"] == "agent_lost"


def test_kill_switch_drops_every_role_of_the_agent(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """The kill switch for the agent's identity ends both of its tasks, and every role they
    held is dropped, open sessions included."""
    with pg_sidecar.client() as client:
        grants = []
        for goal in ("one", "two"):
            task = client.begin_task(goal)
            grants.append(read_grant(client, task.task_id))
    handles = [g.lease.handle for g in grants if g.lease is not None]
    conns = [open_session(g) for g in grants]
    try:
        revoked = pg_sidecar.admin().revoke(subject=DEV, reason="incident")
        for handle in handles:
            wait_gone(postgres, handle)
        left = [sessions(postgres, h) for h in handles]
    finally:
        for conn in conns:
            conn.close()
    assert revoked == 2
    assert len(handles) == 2
    assert left == [0, 0]
    reasons = {r["handle"]: r["reason"] for r in pg_sidecar.events("credential_revoked")}
    assert reasons == dict.fromkeys(handles, "kill_switch")


def test_postgres_down_at_issue_means_no_grant_and_no_role(
    tmp_path: Path, opa: OpaServer, own_postgres: PostgresServer
) -> None:
    """With PostgreSQL down, RequestGrant fails UNAVAILABLE broker_unavailable: no token, no
    grant row, and once PostgreSQL is back no role was left behind."""
    process = brokered_sidecar(tmp_path / "s", opa, own_postgres)
    with running(process), process.client() as client:
        task = client.begin_task("read tickets")
        stop_postgres(own_postgres)
        with pytest.raises(SidecarRpcError) as refused:
            read_grant(client, task.task_id)
        own_postgres.restart()
        rows = process.grant_rows()
        rejected = process.events("request_rejected")
        process.stop()
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "broker_unavailable"
    assert rows == []
    assert [r["reason"] for r in rejected] == ["broker_unavailable"]
    assert brokered_roles(own_postgres) == []


def decision_inputs(opa: OpaServer) -> dict[str, dict[str, Any]]:
    """The input of each decision OPA's console decision log shows, by decision_id."""
    inputs = {}
    for line in opa.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("msg") == "Decision Log" and "input" in entry:
                inputs[entry["decision_id"]] = entry["input"]
    return inputs


def test_a_brokered_grant_ends_in_the_history_as_its_grant_did(
    pg_sidecar: SidecarProcess, postgres: PostgresServer, opa: OpaServer
) -> None:
    """A grant with a downstream credential enters the task's history (issue 22) like any
    other; once the agent revokes it and the broker drops its login, the next decision's
    input shows how the grant ended (revoked, revoked_by_agent), and so does the history
    restored from the store after kill -9."""
    with pg_sidecar.client() as client:
        task = client.begin_task("read tickets", max_duration=600)
        grant = read_grant(client, task.task_id)
        assert grant.lease is not None
        client.revoke_grant(grant.grant_id)
        wait_gone(postgres, grant.lease.handle)
        wait_for(lambda: pg_sidecar.events("credential_revoked"), 10, what="credential_revoked")
        after = client.request_grant_raw(task.task_id, "docs.read", "docs://handbook/intro")
    pg_sidecar.kill()
    pg_sidecar.start()
    with pg_sidecar.client() as client:
        restarted = client.request_grant_raw(task.task_id, "tickets.read", "tickets://t-1001")
    inputs = decision_inputs(opa)
    for answer in (after, restarted):
        first = inputs[answer.decision_id]["task"]["history"][0]
        ended = (first["action"], first["resource"], first["state"], first["end_reason"])
        assert ended == ("postgres.read", TABLE, "revoked", "revoked_by_agent")
    assert [e["action"] for e in inputs[restarted.decision_id]["task"]["history"]] == [
        "postgres.read",
        "docs.read",
    ]


def test_postgres_down_during_revocation_then_up(
    tmp_path: Path, opa: OpaServer, own_postgres: PostgresServer
) -> None:
    """PostgreSQL stopped when the task completes: the token is inactive at once, the
    revocation waits (pending revocations 1) and completes once PostgreSQL is back."""
    process = brokered_sidecar(tmp_path / "s", opa, own_postgres)
    with running(process), process.client() as client:
        task = client.begin_task("read tickets")
        grant = read_grant(client, task.task_id)
        assert grant.lease is not None
        stop_postgres(own_postgres)
        client.complete_task(task.task_id)
        token_active = client.introspect(grant.token).active
        wait_for(
            lambda: (
                process.metric(
                    "jit_broker_operations_total",
                    broker="postgres",
                    op="revoke",
                    outcome="unavailable",
                )
                >= 2
            ),
            20,
            what="revocation retries",
        )
        pending_while_down = process.metric("jit_broker_pending_revocations")
        own_postgres.restart()
        wait_gone(own_postgres, grant.lease.handle, timeout=20)
        wait_for(lambda: process.events("credential_revoked"), 10, what="credential_revoked")
        pending_after = process.metric("jit_broker_pending_revocations")
        (revoked,) = process.events("credential_revoked")
        process.stop()
    assert token_active is False
    assert pending_while_down == 1
    assert pending_after == 0
    assert revoked["attempts"] >= 3


def test_kill_9_then_restart_finishes_due_revocations_and_drops_orphans(
    tmp_path: Path, opa: OpaServer, own_postgres: PostgresServer
) -> None:
    """After kill -9 the next start revokes what was due: a lease whose revocation was
    queued (PostgreSQL was down), a lease whose grant expired while the sidecar was down,
    and a role the broker made that nobody recorded (an orphan); a live lease stays."""
    process = brokered_sidecar(tmp_path / "s", opa, own_postgres, "--heartbeat-interval", "60")
    with running(process), process.client() as client:
        done = client.begin_task("finished")
        queued = read_grant(client, done.task_id)
        ongoing = client.begin_task("still running", max_duration=600)
        expiring = read_grant(client, ongoing.task_id, ttl=2)
        kept = read_grant(client, ongoing.task_id)
        stop_postgres(own_postgres)
        client.complete_task(done.task_id)  # the revocation is durable, the broker waits
        process.kill()
        own_postgres.restart()
    orphan = make_orphan(own_postgres)
    time.sleep(2.5)  # `expiring` reaches its exp while the sidecar is down
    handles = {g.grant_id: g.lease.handle for g in (queued, expiring, kept) if g.lease}
    with running(process):
        for grant_id in (queued.grant_id, expiring.grant_id):
            wait_gone(own_postgres, handles[grant_id])
        wait_gone(own_postgres, orphan)
        kept_exists = role_exists(own_postgres, handles[kept.grant_id])
        reasons = {r["handle"]: r["reason"] for r in process.events("credential_revoked")}
        process.stop()
    assert kept_exists
    assert reasons == {
        handles[queued.grant_id]: "restart",
        handles[expiring.grant_id]: "expired",
        orphan: "orphan",
    }


def make_orphan(server: PostgresServer) -> str:
    """A role exactly as the broker makes it, that no sidecar recorded (the crash between
    the broker's CREATE ROLE and the journal's commit)."""
    import asyncio

    from sidecar.brokers import LeaseRequest
    from sidecar.brokers.postgres import PostgresBroker, PostgresSettings

    broker = PostgresBroker(PostgresSettings(admin_dsn=server.admin_dsn))
    spec = broker.parse(
        {
            "broker": "postgres",
            "database": "crm",
            "privileges": ["SELECT"],
            "tables": ["public.tickets"],
        },
        resource=TABLE,
    )
    request = LeaseRequest(
        grant_id=secrets.token_urlsafe(16),
        task_id="t-lost",
        subject=DEV,
        action="postgres.read",
        resource=TABLE,
        expires_at=time.time() + 600,
    )

    async def issue() -> str:
        try:
            return (await broker.issue(request, spec)).lease.handle
        finally:
            await broker.aclose()

    return asyncio.run(issue())


def test_admin_dsn_is_never_a_flag(tmp_path: Path, opa: OpaServer) -> None:
    """`--broker-postgres-dsn` does not exist: the secret comes from a file or the
    environment only."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--broker-postgres-dsn", "password=x")
    with pytest.raises(RuntimeError) as refused:
        process.start()
    assert "unrecognized arguments: --broker-postgres-dsn" in str(refused.value)


def test_commit_failure_after_issue_revokes_the_credential_at_once(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """The broker made the role, then the journal commit failed: with the audit log
    unwritable (nothing durable) and with the state store read-only (audited, not stored)
    the grant fails closed and the role is dropped at once: no orphan waits for a restart."""
    with pg_sidecar.client() as client:
        task = client.begin_task("read tickets")
        before = set(brokered_roles(postgres))
        with immutable(pg_sidecar.audit), pytest.raises(SidecarRpcError) as no_audit:
            read_grant(client, task.task_id)
        wait_for(lambda: set(brokered_roles(postgres)) == before, 10, what="role dropped")
        wal = Path(str(pg_sidecar.state) + "-wal")
        with immutable(pg_sidecar.state, wal), pytest.raises(SidecarRpcError) as no_store:
            read_grant(client, task.task_id)
        wait_for(lambda: set(brokered_roles(postgres)) == before, 10, what="role dropped")
        wait_for(lambda: pg_sidecar.events("credential_revoked"), 10, what="credential_revoked")
    aborted = [r for r in pg_sidecar.events("grant_revoked") if r["reason"] == "issue_aborted"]
    (issued,) = pg_sidecar.events("credential_issued")  # the second attempt's, audited
    # The first role's record too, when its revocation finished after the log came back.
    revoked = {r["handle"]: r["reason"] for r in pg_sidecar.events("credential_revoked")}
    assert no_audit.value.reason == "audit_unavailable"
    assert no_store.value.reason == "store_unavailable"
    assert [r["grant_id"] for r in aborted] == [issued["grant_id"]]
    assert revoked[issued["handle"]] == "issue_aborted"
    assert set(revoked.values()) == {"issue_aborted"}


# ---------------------------------------------------------------------------- GrantStream batches
DOCS = ("docs.read", "docs://handbook/intro")


@contextlib.contextmanager
def batch_stream(sidecar: SidecarProcess) -> Iterator[RawStream]:
    """A GrantStream opened on a new task; the task completes before the stream closes (a
    stream closed first would crash the task and end its grants)."""
    with sidecar.client() as client:
        task_id = client.begin_task("batch").task_id
        stream = RawStream(sidecar)
        stream.send(task_id=task_id)
        stream.read()
        try:
            yield stream
        finally:
            with contextlib.suppress(SidecarRpcError):
                client.complete_task(task_id)
            stream.close()


def ask(stream: RawStream, *intents: tuple[str, str]) -> pb.GrantStreamResponse:
    """The answer to one message holding `intents`."""
    stream.send(intents=[stream_intent(*i) for i in intents])
    return stream.read()


def test_a_batch_issues_one_credential_per_brokered_intent(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """Step 6 per item of a GrantStream batch: each brokered intent gets its own login that
    works, committed with its grant; the unbrokered intent of the same message gets none;
    completing the task drops both logins."""
    with batch_stream(pg_sidecar) as stream:
        answer = ask(stream, ("postgres.read", TABLE), DOCS, ("postgres.read", TABLE))
        granted = [r.response for r in answer.results]
        assert [g.decision for g in granted] == [pb.DECISION_GRANTED] * 3
        first, docs, second = granted
        assert not docs.HasField("credential")
        assert first.credential.handle != second.credential.handle
        for response in (first, second):
            with psycopg.connect(response.credential.dsn, autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM public.tickets").fetchone()
    issued = pg_sidecar.events("credential_issued")
    assert [r["grant_id"] for r in issued] == [first.grant.grant_id, second.grant.grant_id]
    assert {r["handle"] for r in issued} == {first.credential.handle, second.credential.handle}
    for response in (first, second):  # the task completed: both logins go
        wait_gone(postgres, response.credential.handle)


def test_broker_down_in_a_batch_fails_only_the_brokered_intents(
    tmp_path: Path, opa: OpaServer, own_postgres: PostgresServer
) -> None:
    """PostgreSQL down: a batch's brokered intent fails UNAVAILABLE broker_unavailable (no
    token, no grant row, no role once PostgreSQL is back); its unbrokered neighbour is
    granted."""
    process = brokered_sidecar(tmp_path / "s", opa, own_postgres)
    with running(process):
        stop_postgres(own_postgres)
        with batch_stream(process) as stream:
            answer = ask(stream, ("postgres.read", TABLE), DOCS)
        own_postgres.restart()
        rows = process.grant_rows()
    refused, docs = answer.results
    assert not refused.HasField("response")
    assert refused.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert status_reason(refused.error) == "broker_unavailable"
    assert docs.response.decision == pb.DECISION_GRANTED
    assert [r["resource"] for r in rows] == [DOCS[1]]
    assert brokered_roles(own_postgres) == []


def test_a_failed_batch_commit_revokes_every_credential_it_issued(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """The broker made two logins for one message, then its one journal commit failed: both
    intents fail closed (audit_unavailable) and both roles are dropped at once."""
    before = set(brokered_roles(postgres))
    with batch_stream(pg_sidecar) as stream, immutable(pg_sidecar.audit):
        answer = ask(stream, ("postgres.read", TABLE), ("postgres.read", TABLE))
    assert [status_reason(r.error) for r in answer.results] == ["audit_unavailable"] * 2
    assert not any(r.HasField("response") for r in answer.results)
    wait_for(lambda: set(brokered_roles(postgres)) == before, 10, what="roles dropped")
    wait_for(
        lambda: len(pg_sidecar.events("credential_revoked")) == 2, 10, what="credential_revoked"
    )
    reasons = {r["reason"] for r in pg_sidecar.events("credential_revoked")}
    assert reasons == {"issue_aborted"}


def test_cli_shows_the_lease_and_never_the_secret(
    pg_sidecar: SidecarProcess, postgres: PostgresServer
) -> None:
    """`jit-sidecar grants` lists each grant's lease (broker, role, state, privileges), in
    text and JSON, and neither holds the password."""
    with pg_sidecar.client() as client:
        task = client.begin_task("read tickets")
        grant = read_grant(client, task.task_id)
        cli = [sys.executable, "-m", "sidecar.cli", "grants", task.task_id]
        cli += ["--socket", str(pg_sidecar.socket)]
        text = run_captured(cli, pg_sidecar.workdir, 30)
        as_json = run_captured([*cli, "--json"], pg_sidecar.workdir, 30)
        client.complete_task(task.task_id)
    assert grant.lease is not None
    assert grant.credential is not None
    assert text.returncode == 0, text.stderr
    assert (
        f"lease: postgres {grant.lease.handle} active  database=crm privileges=SELECT "
        "tables=public.tickets"
    ) in text.stdout
    (listed,) = json.loads(as_json.stdout)
    assert listed["lease"]["handle"] == grant.lease.handle
    assert grant.credential.password not in text.stdout + as_json.stdout
    wait_gone(postgres, grant.lease.handle)


def test_an_approved_grant_gets_its_credential_after_a_restart(
    tmp_path: Path, own_opa: OpaServer, postgres: PostgresServer
) -> None:
    """An intent that needs a human keeps the decision's credential object with the parked
    approval (its audit record): approved after the sidecar restarted, the grant still
    comes with the login the policy chose."""
    own_opa.put_data(
        "jit/classes/admin", {"tier": "jit", "approval": {"resource_prefixes": ["postgres://crm/"]}}
    )
    process = SidecarProcess(
        tmp_path / "s",
        own_opa.url,
        env={"JIT_SIDECAR_BROKER_POSTGRES_DSN": postgres.admin_dsn},
    )
    with running(process), process.client() as client:
        task = client.begin_task("clean up tickets")
        parked = client.request_grant_raw(
            task.task_id,
            "postgres.admin",
            TABLE,
            justification="ticket 1001: remove the duplicate rows",
        )
        process.stop()
        process.start()
        process.admin().decide_approval(parked.approval_id, approve=True, reason="ok")
        grant = grant_from_response(client.await_approval(parked.approval_id, 10))
        assert grant.credential is not None
        with psycopg.connect(grant.credential.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM public.tickets WHERE id = -1")
        client.complete_task(task.task_id)
    assert parked.approval_id
    assert grant.lease is not None
    assert grant.lease.details["privileges"] == "SELECT,INSERT,UPDATE,DELETE"
    wait_gone(postgres, grant.lease.handle)
