"""The PostgreSQL broker against a real PostgreSQL cluster (tests/postgres.py): every
assertion reads the real catalog (`pg_roles`, `pg_stat_activity`) or runs a real query through
the issued login."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import pytest

from sidecar.brokers import BrokerUnavailable, CredentialSpecInvalid, LeaseRequest
from sidecar.brokers.postgres import PostgresBroker, PostgresSettings, role_name
from tests.postgres import PostgresServer

pytestmark = pytest.mark.integration
T = TypeVar("T")
SPEC = {
    "broker": "postgres",
    "database": "crm",
    "privileges": ["SELECT"],
    "tables": ["public.tickets"],
}
RESOURCE = "postgres://crm/public.tickets"


def run(coro_fn: Callable[[PostgresBroker], Awaitable[T]], broker: PostgresBroker) -> T:
    async def scenario() -> T:
        try:
            return await coro_fn(broker)
        finally:
            await broker.aclose()

    return asyncio.run(scenario())


def new_request(ttl: float = 300) -> LeaseRequest:
    return LeaseRequest(
        grant_id=secrets.token_urlsafe(16),
        task_id="t-1",
        subject="spiffe://jit.local/agent/dev",
        action="db.read",
        resource=RESOURCE,
        expires_at=time.time() + ttl,
    )


@pytest.fixture
def broker(postgres: PostgresServer) -> PostgresBroker:
    return PostgresBroker(PostgresSettings(admin_dsn=postgres.admin_dsn))


def roles(postgres: PostgresServer) -> set[str]:
    return {
        r[0] for r in postgres.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'jit\\_%'")
    }


def sessions(postgres: PostgresServer, role: str) -> int:
    return int(
        postgres.query("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", role)[0][0]
    )


def test_issued_login_reads_exactly_the_granted_table(
    postgres: PostgresServer, broker: PostgresBroker
) -> None:
    """SELECT on the granted table works; UPDATE on it and SELECT elsewhere are refused."""
    spec = broker.parse(SPEC, resource=RESOURCE)
    issued = run(lambda b: b.issue(new_request(), spec), broker)
    with psycopg.connect(issued.secret["dsn"], autocommit=True) as conn:
        rows = conn.execute("SELECT subject FROM public.tickets WHERE id = 1001").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE public.tickets SET subject = 'x' WHERE id = 1001")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT email FROM public.customers")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.mine (x int)")
    run(lambda b: b.revoke(issued.lease), broker)
    assert rows == [("printer on fire",)]
    assert issued.lease.handle == issued.secret["username"]
    assert issued.lease.details == {
        "database": "crm",
        "privileges": "SELECT",
        "tables": "public.tickets",
    }


def test_role_has_nothing_but_the_grant(postgres: PostgresServer, broker: PostgresBroker) -> None:
    """The role is a plain LOGIN role: no superuser, createrole, createdb, replication,
    bypassrls or inheritance; connection-limited; valid until the grant's exp; search_path
    and statement_timeout pinned; the password only as a SCRAM verifier."""
    request = new_request(ttl=120)
    issued = run(lambda b: b.issue(request, b.parse(SPEC, resource=RESOURCE)), broker)
    (row,) = postgres.query(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit, "
        "rolconnlimit, extract(epoch FROM rolvaliduntil), rolconfig FROM pg_roles "
        "WHERE rolname = %s",
        issued.lease.handle,
    )
    (verifier,) = postgres.query(
        "SELECT rolpassword FROM pg_authid WHERE rolname = %s", issued.lease.handle
    )[0]
    run(lambda b: b.revoke(issued.lease), broker)
    assert row[:6] == (False, False, False, False, False, False)
    assert row[6] == 2
    assert abs(float(row[7]) - request.expires_at) < 1
    assert set(row[8]) == {
        "search_path=pg_catalog, public",
        "statement_timeout=30000",
        "idle_in_transaction_session_timeout=60000",
    }
    assert verifier.startswith("SCRAM-SHA-256$")
    assert issued.secret["password"] not in verifier


def test_revoke_ends_open_sessions_and_the_login(
    postgres: PostgresServer, broker: PostgresBroker
) -> None:
    """After revoke the agent's open session is gone, a new login fails and the role is
    dropped; a second revoke is a no-op."""
    spec = broker.parse(SPEC, resource=RESOURCE)

    async def scenario(b: PostgresBroker) -> tuple[Any, ...]:
        issued = await b.issue(new_request(), spec)
        conn = await psycopg.AsyncConnection.connect(issued.secret["dsn"], autocommit=True)
        try:
            await conn.execute("SELECT 1")
            open_before = sessions(postgres, issued.lease.handle)
            await b.revoke(issued.lease)
            open_after = sessions(postgres, issued.lease.handle)
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")
        finally:
            await conn.close()
        with pytest.raises(psycopg.OperationalError) as refused:
            await psycopg.AsyncConnection.connect(issued.secret["dsn"])
        await b.revoke(issued.lease)  # idempotent
        return issued, open_before, open_after, str(refused.value)

    issued, open_before, open_after, refused = run(scenario, broker)
    assert open_before == 1
    assert open_after == 0
    assert "password authentication failed" in refused
    assert issued.lease.handle not in roles(postgres)


def test_orphans_are_found_by_comment_and_dropped(
    postgres: PostgresServer, broker: PostgresBroker
) -> None:
    """A role the broker made but nobody recorded is listed by `orphans` and can be revoked;
    a recorded one is not listed, and a role with the prefix that the broker did not make is
    left alone."""
    earlier = roles(postgres)  # other tests' roles on this shared cluster
    postgres.execute("CREATE ROLE jit_not_ours LOGIN")
    spec = broker.parse(SPEC, resource=RESOURCE)

    async def scenario(b: PostgresBroker) -> tuple[Any, ...]:
        recorded = await b.issue(new_request(), spec)
        lost = await b.issue(new_request(), spec)
        found = await b.orphans(earlier | {recorded.lease.handle})
        for lease in found:
            await b.revoke(lease)
        again = await b.orphans(earlier | {recorded.lease.handle})
        await b.revoke(recorded.lease)
        return recorded, lost, found, again

    try:
        _recorded, lost, found, again = run(scenario, broker)
    finally:
        postgres.execute("DROP ROLE IF EXISTS jit_not_ours")
    assert [(o.handle, o.grant_id, o.details["database"]) for o in found] == [
        (lost.lease.handle, lost.lease.grant_id, "crm")
    ]
    assert again == []
    assert lost.lease.handle not in roles(postgres)


def test_missing_table_leaves_no_role(postgres: PostgresServer, broker: PostgresBroker) -> None:
    """A grant on a table that does not exist fails with broker_unavailable (no_table), and the
    transaction leaves no half-made role behind."""
    spec = broker.parse({**SPEC, "tables": ["public.nope"]}, resource="postgres://crm/public")
    request = new_request()

    async def scenario(b: PostgresBroker) -> BrokerUnavailable:
        with pytest.raises(BrokerUnavailable) as caught:
            await b.issue(request, spec)
        return caught.value

    err = run(scenario, broker)
    assert err.reason == "broker_unavailable"
    assert err.metadata["cause"] == "no_table"
    assert role_name("jit_", request.grant_id) not in roles(postgres)


def test_public_write_is_refused(postgres: PostgresServer, broker: PostgresBroker) -> None:
    """When PUBLIC may write a table, a SELECT-only credential would be a write credential:
    the broker refuses to issue (public_write) and makes no role."""
    postgres.execute("GRANT UPDATE ON public.customers TO PUBLIC", dbname="crm")
    spec = broker.parse({**SPEC, "tables": ["public.customers"]}, resource="postgres://crm")
    request = new_request()

    async def scenario(b: PostgresBroker) -> BrokerUnavailable:
        with pytest.raises(BrokerUnavailable) as caught:
            await b.issue(request, spec)
        return caught.value

    try:
        err = run(scenario, broker)
    finally:
        postgres.execute("REVOKE UPDATE ON public.customers FROM PUBLIC", dbname="crm")
    assert err.metadata["cause"] == "public_write"
    assert "UPDATE on customers" in err.message
    assert role_name("jit_", request.grant_id) not in roles(postgres)


def test_unreachable_server_fails_closed_and_recovers(
    tmp_path: Any,
) -> None:
    """With PostgreSQL down, issue and revoke raise broker_unavailable (unreachable) and no
    role is made; once it is back, the same revoke completes."""
    server = PostgresServer(tmp_path / "pg").start()
    try:
        broker = PostgresBroker(PostgresSettings(admin_dsn=server.admin_dsn))
        spec = broker.parse(SPEC, resource=RESOURCE)
        issued = run(lambda b: b.issue(new_request(), spec), broker)
        server.stop()
        down_request = new_request()

        async def while_down(b: PostgresBroker) -> tuple[BrokerUnavailable, BrokerUnavailable]:
            with pytest.raises(BrokerUnavailable) as on_issue:
                await b.issue(down_request, spec)
            with pytest.raises(BrokerUnavailable) as on_revoke:
                await b.revoke(issued.lease)
            return on_issue.value, on_revoke.value

        on_issue, on_revoke = run(while_down, broker)
        server.restart()
        run(lambda b: b.revoke(issued.lease), broker)
        left = roles(server)
    finally:
        server.destroy()
    assert on_issue.metadata["cause"] == "unreachable"
    assert on_revoke.metadata["cause"] == "unreachable"
    assert server.admin_password not in on_issue.message
    assert issued.lease.handle not in left
    assert role_name("jit_", down_request.grant_id) not in left


@pytest.mark.parametrize(
    ("spec", "resource", "why"),
    [
        ({**SPEC, "extra": 1}, RESOURCE, "unknown member"),
        ({**SPEC, "database": "CRM"}, RESOURCE, "database"),
        ({**SPEC, "database": 'crm"; drop role x; --'}, RESOURCE, "database"),
        ({**SPEC, "privileges": []}, RESOURCE, "privileges"),
        ({**SPEC, "privileges": ["TRUNCATE"]}, RESOURCE, "privilege"),
        ({**SPEC, "privileges": ["select"]}, RESOURCE, "privilege"),
        ({**SPEC, "privileges": ["SELECT", "SELECT"]}, RESOURCE, "duplicates"),
        ({**SPEC, "privileges": "SELECT"}, RESOURCE, "privileges"),
        ({**SPEC, "tables": ["tickets"]}, RESOURCE, "schema.table"),
        ({**SPEC, "tables": ["public.Tickets"]}, "postgres://crm", "schema.table"),
        ({**SPEC, "tables": ["public.tickets", 3]}, RESOURCE, "strings"),
        ({**SPEC, "tables": ["public.customers"]}, RESOURCE, "outside the resource"),
        ({**SPEC, "database": "hr"}, RESOURCE, "outside the resource"),
        ({**SPEC, "tables": ["audit.log"]}, "postgres://crm/public", "outside the resource"),
    ],
)
def test_bad_credential_specs_are_refused(
    broker: PostgresBroker, spec: dict[str, Any], resource: str, why: str
) -> None:
    """A malformed `credential` object, or one reaching beyond the intent's resource, is a
    policy_result_invalid (cause shape): fail closed, never a wider credential."""
    with pytest.raises(CredentialSpecInvalid) as caught:
        broker.parse(spec, resource=resource)
    assert caught.value.reason == "policy_result_invalid"
    assert caught.value.metadata["cause"] == "shape"
    assert why in caught.value.message


def test_secret_stays_out_of_reprs_and_records(broker: PostgresBroker) -> None:
    """Neither the issued credential's repr nor the lease record carries the password."""
    spec = broker.parse(SPEC, resource=RESOURCE)
    issued = run(lambda b: b.issue(new_request(), spec), broker)
    run(lambda b: b.revoke(issued.lease), broker)
    password = issued.secret["password"]
    assert password not in repr(issued)
    assert password not in repr(issued.lease.as_record())
    assert password not in repr(PostgresSettings(admin_dsn="password=hunter2"))
    assert "hunter2" not in repr(PostgresSettings(admin_dsn="password=hunter2"))
