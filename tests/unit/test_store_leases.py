"""Broker leases in the real SQLite store: the lease rides with its grant, a grant's end makes
its revocation due (the durable queue), a completed revocation leaves it, and a state file
of the previous schema opens and gains the table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sidecar.events import (
    CredentialIssued,
    CredentialRevoked,
    Event,
    GrantIssued,
    GrantRevoked,
    Recorded,
    TaskBegun,
)
from sidecar.store.sqlite import SCHEMA_VERSION, SqliteStore

T0 = "2027-01-15T08:00:00.000000Z"
EXP = "2027-01-15T08:15:00.000000Z"
SUBJECT = "spiffe://jit.local/agent/dev"
INTENT = {"action": "postgres.read", "resource": "postgres://crm/public.tickets"}


def issued(grant_id: str) -> list[Event]:
    return [
        GrantIssued(
            time=T0,
            task_id="t1",
            grant_id=grant_id,
            subject=SUBJECT,
            intent=INTENT,
            tier="standing",
            scope=["postgres.read"],
            audience="postgres",
            expires_at=EXP,
            kid="k1",
        ),
        CredentialIssued(
            time=T0,
            task_id="t1",
            grant_id=grant_id,
            subject=SUBJECT,
            broker="postgres",
            handle=f"jit_{grant_id}",
            expires_at=EXP,
            details={"database": "crm", "privileges": "SELECT"},
        ),
    ]


def apply(store: SqliteStore, events: list[Event]) -> None:
    start = store.applied_seq()
    records = [Recorded(start + i + 1, e) for i, e in enumerate(events)]
    store.apply(records, (), start + len(events))


def test_leases_ride_with_grants_and_ended_grants_queue_their_revocation(
    tmp_path: Path,
) -> None:
    """After a restart an active grant comes back with its lease; a revoked grant's lease is
    due (`revoking`) until its credential_revoked, after which nothing is due."""
    store = SqliteStore(tmp_path / "state.db")
    task = TaskBegun(
        time=T0, task_id="t1", subject=SUBJECT, expires_at=EXP, heartbeat_interval_seconds=5
    )
    apply(store, [task, *issued("g1"), *issued("g2")])
    apply(store, [GrantRevoked(time=T0, task_id="t1", grant_id="g2", reason="completed")])
    loaded = store.load()
    apply(
        store,
        [CredentialRevoked(time=T0, grant_id="g2", broker="postgres", handle="jit_g2")],
    )
    after = store.load()
    store.close()
    (live,) = loaded.grants
    (due,) = loaded.due_leases
    assert live.grant_id == "g1"
    assert live.lease is not None
    assert (live.lease.handle, live.lease.state) == ("jit_g1", "active")
    assert dict(live.lease.details) == {"database": "crm", "privileges": "SELECT"}
    assert (due.grant_id, due.handle, due.state) == ("g2", "jit_g2", "revoking")
    assert after.due_leases == []
    assert after.grants[0].lease is not None


def test_a_state_file_of_schema_1_gains_the_leases_table(tmp_path: Path) -> None:
    """A state file written before brokers existed opens, gets the `leases` table and is
    marked with the new schema version, so an older sidecar will not ignore it."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('applied_seq', '0')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    tables = {r[0] for r in store.writer.execute("SELECT name FROM sqlite_master")}
    version = store.writer.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    (value,) = version.fetchone()
    store.close()
    assert "leases" in tables
    assert int(value) == SCHEMA_VERSION == 4
