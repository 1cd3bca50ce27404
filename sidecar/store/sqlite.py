"""SQLite state store (the embedded default).

WAL mode with synchronous=NORMAL: a commit survives a process crash; power-loss durability
comes from the audit log, which is fsynced first and replayed into this store at start-up
(`sidecar.journal`). One connection writes (the journal's thread); another serves cold-path
reads in a worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ..approvals import Approval, ApprovalState, decision_from_record
from ..brokers.base import Lease
from ..errors import Reason, Unavailable
from ..events import (
    ApprovalDecided,
    ApprovalExpired,
    CredentialIssued,
    CredentialRevoked,
    Event,
    GrantEnded,
    GrantExpired,
    GrantIssued,
    GrantPending,
    GrantRevoked,
    KeyRotated,
    Recorded,
    TaskBegun,
    TaskCompleted,
)
from ..model import Grant, GrantState, Intent, Principal, Task, TaskState, Tier
from ..tokens import PublishedKey
from . import Snapshot
from . import flows as flow_store

log = logging.getLogger("jit_sidecar.store")
SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  task_id TEXT PRIMARY KEY,
  subject TEXT NOT NULL,
  goal TEXT NOT NULL,
  labels TEXT NOT NULL,
  started_at REAL NOT NULL,
  deadline REAL NOT NULL,
  heartbeat_interval INTEGER NOT NULL,
  state TEXT NOT NULL,
  last_heartbeat REAL NOT NULL,
  pop_jkt TEXT NOT NULL DEFAULT '',
  ended_at REAL,
  end_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (subject) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS grants (
  grant_id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  action TEXT NOT NULL,
  resource TEXT NOT NULL,
  justification TEXT NOT NULL,
  tier TEXT NOT NULL,
  audience TEXT NOT NULL,
  scope TEXT NOT NULL,
  issued_at REAL NOT NULL,
  expires_at REAL NOT NULL,
  kid TEXT NOT NULL,
  decision_id TEXT NOT NULL,
  cnf_jkt TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  end_reason TEXT NOT NULL DEFAULT '',
  ended_at REAL
);
CREATE INDEX IF NOT EXISTS grants_by_task ON grants (task_id);
CREATE INDEX IF NOT EXISTS grants_active ON grants (expires_at) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS grants_by_kid ON grants (kid, expires_at);
CREATE TABLE IF NOT EXISTS approvals (
  approval_id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL,
  subject TEXT NOT NULL,
  intent TEXT NOT NULL,
  intent_hash TEXT NOT NULL,
  requested_ttl INTEGER NOT NULL,
  record TEXT NOT NULL,
  created_at REAL NOT NULL,
  expires_at REAL NOT NULL,
  state TEXT NOT NULL,
  decided_by TEXT NOT NULL DEFAULT '',
  decision_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approvals_open ON approvals (expires_at)
  WHERE state IN ('pending', 'approved');
CREATE TABLE IF NOT EXISTS keys (
  kid TEXT PRIMARY KEY,
  jwk TEXT NOT NULL,
  retire_at REAL NOT NULL
);
-- schema 2: broker leases (docs/brokers.md). state: active, revoking (grant ended; the
-- broker revocation is due: the durable queue), revoked.
CREATE TABLE IF NOT EXISTS leases (
  grant_id TEXT PRIMARY KEY,
  task_id TEXT NOT NULL,
  broker TEXT NOT NULL,
  handle TEXT NOT NULL,
  expires_at REAL NOT NULL,
  details TEXT NOT NULL,
  state TEXT NOT NULL,
  issued_at REAL NOT NULL,
  revoked_at REAL
);
CREATE INDEX IF NOT EXISTS leases_by_task ON leases (task_id);
CREATE INDEX IF NOT EXISTS leases_open ON leases (state) WHERE state != 'revoked';
-- schema 3: delegation (docs/delegation.md): the person of a task, and the person and `act`
-- claim of a delegated grant, in tables of their own (CREATE TABLE IF NOT EXISTS adds them).
CREATE TABLE IF NOT EXISTS task_principals (
  task_id TEXT PRIMARY KEY,
  principal TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grant_actors (
  grant_id TEXT PRIMARY KEY,
  principal TEXT NOT NULL,
  act TEXT NOT NULL
);
-- schema 4: flows (docs/policy-authoring.md, "Flows"; sidecar/store/flows.py): the risk class
-- and flow labels the policy gave a grant, a task's declared plan and its denials, in tables
-- of their own like schema 3's, so that CREATE TABLE IF NOT EXISTS adds them.
CREATE TABLE IF NOT EXISTS grant_flows (
  grant_id TEXT PRIMARY KEY,
  flow_class TEXT NOT NULL,
  flow_labels TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_plans (
  task_id TEXT PRIMARY KEY,
  plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS task_denials (task_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS task_denials_by_task ON task_denials (task_id, at);
"""

GRANT_COLUMNS = (
    "grant_id, task_id, subject, action, resource, justification, tier, audience, scope, "
    "issued_at, expires_at, kid, decision_id, cnf_jkt, state, end_reason, ended_at"
)
GRANT_WIDTH = len(GRANT_COLUMNS.split(","))
GRANT_READ_COLUMNS = f"{GRANT_COLUMNS}, {flow_store.FLOW_COLUMNS}"
"""A grant with its flow (schema 4): `SELECT {GRANT_READ_COLUMNS} FROM {GRANTS_WITH_FLOWS}`."""
GRANTS_WITH_FLOWS = flow_store.GRANTS_WITH_FLOWS
TASK_COLUMNS = (
    "task_id, subject, goal, labels, started_at, deadline, heartbeat_interval, state, "
    "last_heartbeat, pop_jkt, ended_at, end_reason"
)


def ts(value: str) -> float:
    """Seconds since the epoch from an audit record's RFC 3339 time."""
    return datetime.fromisoformat(value).timestamp()


def _grant(row: Sequence[Any]) -> Grant:
    if len(row) > GRANT_WIDTH:  # read with GRANT_READ_COLUMNS
        return flow_store.set_flow(_grant(row[:GRANT_WIDTH]), *row[GRANT_WIDTH:])
    return Grant(
        grant_id=row[0],
        task_id=row[1],
        subject=row[2],
        action=row[3],
        resource=row[4],
        justification=row[5],
        tier=Tier(row[6]),
        audience=row[7],
        scope=tuple(row[8].split(" ")) if row[8] else (),
        issued_at=row[9],
        expires_at=row[10],
        kid=row[11],
        decision_id=row[12],
        cnf_jkt=row[13],
        state=GrantState(row[14]),
        end_reason=row[15],
        ended_at=row[16],
    )


def _task(row: Sequence[Any]) -> Task:
    return Task(
        task_id=row[0],
        subject=row[1],
        goal=row[2],
        labels=json.loads(row[3]),
        started_at=row[4],
        deadline=row[5],
        heartbeat_interval=row[6],
        state=TaskState(row[7]),
        last_heartbeat=row[8],
        pop_jkt=row[9],
        ended_at=row[10],
        end_reason=row[11],
    )


LEASE_COLUMNS = "grant_id, task_id, broker, handle, expires_at, details, state"


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(
        broker=row[2],
        handle=row[3],
        grant_id=row[0],
        expires_at=row[4],
        details=json.loads(row[5]),
        state=row[6],
    )


_ACTOR_SQL = "SELECT principal, act FROM grant_actors WHERE grant_id = ?"
_ACTORS_SQL = (
    "SELECT a.grant_id, a.principal, a.act FROM grant_actors a JOIN grants g USING (grant_id) "
    "WHERE "
)


def _attach_actors(grants: Sequence[Grant], rows: Iterable[Sequence[Any]]) -> None:
    """Attach each delegated grant's person and `act` (rows of _ACTORS_SQL)."""
    delegated = {row[0]: row[1:] for row in rows}
    for grant in grants:
        found = delegated.get(grant.grant_id)
        _with_actor(grant, [found] if found else [])


def _with_actor(grant: Grant, rows: Sequence[Any]) -> None:
    """Attach a delegated grant's person and `act` claim (rows of _ACTOR_SQL)."""
    if rows:
        grant.principal = rows[0][0]
        grant.actor = json.loads(rows[0][1])


APPROVAL_COLUMNS = (
    "approval_id, task_id, subject, intent, intent_hash, requested_ttl, record, created_at, "
    "expires_at, state, decided_by, decision_reason"
)


def _approval(row: Sequence[Any]) -> Approval:
    intent = json.loads(row[3])
    return Approval(
        approval_id=row[0],
        task_id=row[1],
        subject=row[2],
        intent=Intent(
            intent["action"],
            intent["resource"],
            intent.get("justification", ""),
            intent.get("context", {}),
        ),
        intent_hash=row[4],
        requested_ttl=row[5],
        decision=decision_from_record(json.loads(row[6])),
        created_at=row[7],
        expires_at=row[8],
        state=ApprovalState(row[9]),
        decided_by=row[10],
        decision_reason=row[11],
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    # 4 MiB per connection (negative: KiB, https://sqlite.org/pragma.html#pragma_cache_size).
    # With 100k active grants the writer's cache is full, so its size is resident memory:
    # 8 MiB took the sidecar over the 150 MB target (docs/performance.md); the pages an
    # insert misses are read back from the OS page cache, not the disk.
    conn.execute("PRAGMA cache_size=-4096")
    return conn


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._w = _connect(path)
        self._w.executescript(SCHEMA)
        version = self._w.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None:
            self._w.execute(
                "INSERT INTO meta VALUES ('schema_version', ?), ('applied_seq', '0')",
                (str(SCHEMA_VERSION),),
            )
        elif int(version[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{path} was written by a newer jit-sidecar (schema {version[0]})")
        elif int(version[0]) < SCHEMA_VERSION:
            # Every schema change so far only adds tables (CREATE ... IF NOT EXISTS above):
            # recording the version keeps an older sidecar from ignoring them.
            self._w.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        path.chmod(0o600)
        self._r = _connect(path)
        self._r_lock = threading.Lock()
        self._handlers: dict[type[Event], Callable[[sqlite3.Connection, Any], None]] = {
            TaskBegun: self._task_begun,
            TaskCompleted: self._task_completed,
            GrantIssued: self._grant_issued,
            GrantRevoked: self._grant_ended,
            GrantExpired: self._grant_ended,
            KeyRotated: self._key_rotated,
            GrantPending: self._grant_pending,
            ApprovalDecided: self._approval_decided,
            ApprovalExpired: self._approval_expired,
            CredentialIssued: self._credential_issued,
            CredentialRevoked: self._credential_revoked,
        }

    # ------------------------------------------------------------------ write side
    def applied_seq(self) -> int:
        row = self._w.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()
        return int(row[0])

    @property
    def writer(self) -> sqlite3.Connection:
        """The write connection: for the journal's thread only (and start-up)."""
        return self._w

    def apply(
        self,
        records: Sequence[Recorded],
        touches: Sequence[tuple[str, float]],
        seq: int,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Apply audited events in one transaction; `also` runs inside it after them (a
        composing store's own writes, committed atomically with these)."""
        conn = self._w
        conn.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                handler = self._handlers.get(type(record.event))
                if handler is not None:
                    handler(conn, record.event)
                flow_store.apply_flow(conn, record.event, ts)
            if touches:
                conn.executemany(
                    "UPDATE tasks SET last_heartbeat = ? WHERE task_id = ? AND state = 'active'",
                    [(at, task_id) for task_id, at in touches],
                )
            if also is not None:
                also(conn)
            if records:
                conn.execute("UPDATE meta SET value = ? WHERE key = 'applied_seq'", (str(seq),))
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have ended the transaction (a failed COMMIT on an I/O
            # error): a ROLLBACK would then fail and hide the error that matters.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _task_begun(conn: sqlite3.Connection, e: TaskBegun) -> None:
        started = ts(e.time)
        conn.execute(
            f"INSERT OR IGNORE INTO tasks ({TASK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, NULL, '')",
            (
                e.task_id,
                e.subject,
                e.goal,
                json.dumps(e.labels, sort_keys=True),
                started,
                ts(e.expires_at),
                e.heartbeat_interval_seconds,
                started,
                e.pop_jkt or "",
            ),
        )
        if e.principal is not None:
            conn.execute(
                "INSERT OR IGNORE INTO task_principals VALUES (?, ?)",
                (e.task_id, json.dumps(e.principal, sort_keys=True)),
            )

    @staticmethod
    def _task_completed(conn: sqlite3.Connection, e: TaskCompleted) -> None:
        conn.execute(
            "UPDATE tasks SET state = ?, ended_at = ?, end_reason = ? "
            "WHERE task_id = ? AND state = 'active'",
            (e.state, ts(e.time), e.reason or "", e.task_id),
        )

    @staticmethod
    def _grant_issued(conn: sqlite3.Connection, e: GrantIssued) -> None:
        conn.execute(
            f"INSERT OR IGNORE INTO grants ({GRANT_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', '', NULL)",
            (
                e.grant_id,
                e.task_id,
                e.subject,
                e.intent["action"],
                e.intent["resource"],
                e.intent.get("justification", ""),
                e.tier,
                e.audience,
                " ".join(e.scope),
                ts(e.time),
                ts(e.expires_at),
                e.kid,
                e.decision_id or "",
                e.cnf_jkt or "",
            ),
        )
        if e.approval_id is not None:
            conn.execute(
                "UPDATE approvals SET state = 'used' WHERE approval_id = ?", (e.approval_id,)
            )
        if e.actor is not None:
            principal = (e.principal or {}).get("subject", "")
            conn.execute(
                "INSERT OR IGNORE INTO grant_actors VALUES (?, ?, ?)",
                (e.grant_id, principal, json.dumps(e.actor, sort_keys=True)),
            )

    @staticmethod
    def _grant_pending(conn: sqlite3.Connection, e: GrantPending) -> None:
        decision = {"decision": e.decision, "reasons": e.reasons, "decision_id": e.decision_id}
        conn.execute(
            "INSERT OR IGNORE INTO approvals (approval_id, task_id, subject, intent, "
            "intent_hash, requested_ttl, record, created_at, expires_at, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            (
                e.approval_id,
                e.task_id,
                e.subject,
                json.dumps(e.intent),
                e.intent_hash,
                e.ttl_seconds,
                json.dumps({k: v for k, v in decision.items() if v is not None}),
                ts(e.time),
                ts(e.expires_at),
            ),
        )

    @staticmethod
    def _approval_decided(conn: sqlite3.Connection, e: ApprovalDecided) -> None:
        conn.execute(
            "UPDATE approvals SET state = ?, decided_by = ?, decision_reason = ? "
            "WHERE approval_id = ? AND state = 'pending'",
            (
                "approved" if e.approved else "denied",
                e.approver or "",
                e.reason or "",
                e.approval_id,
            ),
        )

    @staticmethod
    def _approval_expired(conn: sqlite3.Connection, e: ApprovalExpired) -> None:
        conn.execute(
            "UPDATE approvals SET state = 'expired' WHERE approval_id = ? "
            "AND state IN ('pending', 'approved')",
            (e.approval_id,),
        )

    @staticmethod
    def _grant_ended(conn: sqlite3.Connection, e: GrantEnded) -> None:
        state = GrantState.EXPIRED if isinstance(e, GrantExpired) else GrantState.REVOKED
        conn.execute(
            "UPDATE grants SET state = ?, end_reason = ?, ended_at = ? "
            "WHERE grant_id = ? AND state = 'active'",
            (state.value, e.reason or "", ts(e.time), e.grant_id),
        )
        # Its lease, if any, is now due for revocation: durable before the broker is asked.
        conn.execute(
            "UPDATE leases SET state = 'revoking' WHERE grant_id = ? AND state = 'active'",
            (e.grant_id,),
        )

    @staticmethod
    def _credential_issued(conn: sqlite3.Connection, e: CredentialIssued) -> None:
        conn.execute(
            f"INSERT OR IGNORE INTO leases ({LEASE_COLUMNS}, issued_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'active', ?)",
            (
                e.grant_id,
                e.task_id,
                e.broker,
                e.handle,
                ts(e.expires_at),
                json.dumps(e.details or {}, sort_keys=True),
                ts(e.time),
            ),
        )

    @staticmethod
    def _credential_revoked(conn: sqlite3.Connection, e: CredentialRevoked) -> None:
        conn.execute(
            "UPDATE leases SET state = 'revoked', revoked_at = ? WHERE grant_id = ?",
            (ts(e.time), e.grant_id),
        )

    @staticmethod
    def _key_rotated(conn: sqlite3.Connection, e: KeyRotated) -> None:
        if e.previous_kid is not None and e.retire_at is not None:
            conn.execute(
                "INSERT OR REPLACE INTO keys (kid, jwk, retire_at) VALUES (?, ?, ?)",
                (e.previous_kid, json.dumps(e.previous_jwk), ts(e.retire_at)),
            )
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('current_key', ?)",
            (json.dumps(e.jwk),),
        )

    # ------------------------------------------------------------------ start-up
    def load(self) -> Snapshot:
        snap = Snapshot()
        tasks = {
            row[0]: _task(row)
            for row in self._w.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE state='active'")
        }
        for row in self._w.execute(
            f"SELECT {GRANT_COLUMNS} FROM grants WHERE state='active' ORDER BY issued_at"
        ):
            grant = _grant(row)
            grant.justification = ""  # not needed live; the store keeps it
            snap.grants.append(grant)
            task = tasks.get(grant.task_id)
            if task is not None:
                task.grant_ids.append(grant.grant_id)
        for task_id, principal in self._w.execute(
            "SELECT p.task_id, p.principal FROM task_principals p JOIN tasks t "
            "USING (task_id) WHERE t.state = 'active'"
        ):
            tasks[task_id].principal = Principal.from_record(json.loads(principal))
        _attach_actors(snap.grants, self._w.execute(_ACTORS_SQL + "g.state = 'active'"))
        live = {g.grant_id: g for g in snap.grants}
        flow_store.load_flows(self._w, tasks, live, _grant, GRANT_READ_COLUMNS)
        snap.tasks = list(tasks.values())
        for _kid, jwk, retire_at in self._w.execute("SELECT kid, jwk, retire_at FROM keys"):
            snap.retired_keys.append(PublishedKey(json.loads(jwk), retire_at))
        snap.approvals = [
            _approval(row)
            for row in self._w.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state IN ('pending', 'approved')"
            )
        ]
        by_grant = {g.grant_id: g for g in snap.grants}
        for row in self._w.execute(
            f"SELECT {LEASE_COLUMNS} FROM leases WHERE state != 'revoked' ORDER BY issued_at"
        ):
            lease = _lease(row)
            holder = by_grant.get(lease.grant_id)
            if lease.state == "active" and holder is not None:
                holder.lease = lease
            else:  # its grant ended (or never became durable): the revocation is due
                snap.due_leases.append(replace(lease, state="revoking"))
        current = self._w.execute("SELECT value FROM meta WHERE key='current_key'").fetchone()
        snap.current_key = json.loads(current[0]) if current else None
        snap.last_exp_by_kid = dict(
            self._w.execute("SELECT kid, MAX(expires_at) FROM grants GROUP BY kid").fetchall()
        )
        return snap

    # ------------------------------------------------------------------ cold reads
    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._r_lock:
            try:
                return self._r.execute(sql, args).fetchall()
            except sqlite3.Error as err:
                # A store that cannot be read is down (UNAVAILABLE), not an internal error.
                log.error("state store read failed: %s", err, extra={"reason": "store_unavailable"})
                raise Unavailable(
                    "the state store cannot be read", Reason.STORE_UNAVAILABLE
                ) from err

    async def get_task(self, task_id: str) -> Task | None:
        rows = await asyncio.to_thread(
            self._read, f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
        )
        if not rows:
            return None
        task = _task(rows[0])
        found = await asyncio.to_thread(
            self._read, "SELECT principal FROM task_principals WHERE task_id = ?", (task_id,)
        )
        if found:
            task.principal = Principal.from_record(json.loads(found[0][0]))
        return task

    async def get_grant(self, grant_id: str) -> Grant | None:
        sql = f"SELECT {GRANT_READ_COLUMNS} FROM {GRANTS_WITH_FLOWS} WHERE grant_id = ?"
        rows = await asyncio.to_thread(self._read, sql, (grant_id,))
        if not rows:
            return None
        grant = _grant(rows[0])
        leases = await asyncio.to_thread(
            self._read, f"SELECT {LEASE_COLUMNS} FROM leases WHERE grant_id = ?", (grant_id,)
        )
        grant.lease = _lease(leases[0]) if leases else None
        _with_actor(grant, await asyncio.to_thread(self._read, _ACTOR_SQL, (grant_id,)))
        return grant

    async def list_grants(self, task_id: str, include_inactive: bool) -> list[Grant]:
        sql = f"SELECT {GRANT_READ_COLUMNS} FROM {GRANTS_WITH_FLOWS} WHERE task_id = ?"
        if not include_inactive:
            sql += " AND state = 'active'"
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY issued_at", (task_id,))
        grants = [_grant(r) for r in rows]
        if grants:
            leases = await asyncio.to_thread(
                self._read, f"SELECT {LEASE_COLUMNS} FROM leases WHERE task_id = ?", (task_id,)
            )
            by_grant = {lease.grant_id: lease for lease in map(_lease, leases)}
            for grant in grants:
                grant.lease = by_grant.get(grant.grant_id)
            sql = _ACTORS_SQL + "g.task_id = ?"
            _attach_actors(grants, await asyncio.to_thread(self._read, sql, (task_id,)))
        return grants

    async def get_approval(self, approval_id: str) -> Approval | None:
        rows = await asyncio.to_thread(
            self._read,
            f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = ?",
            (approval_id,),
        )
        return _approval(rows[0]) if rows else None

    async def list_approvals(self, limit: int = 1000) -> list[Approval]:
        rows = await asyncio.to_thread(
            self._read,
            f"SELECT {APPROVAL_COLUMNS} FROM approvals ORDER BY created_at DESC LIMIT ?",
            (limit,),
        )
        return [_approval(r) for r in rows]

    def check_writable(self) -> bool:
        import os

        return os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)

    def close(self) -> None:
        self._w.close()
        self._r.close()
