"""Typed audit events: each kind writes exactly the JSON record the engine wrote as a dict
before events were typed, reads back from it unchanged, and an audit log written in that
format replays into the real SQLite store through the real journal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sidecar.audit import AuditFile, records_after
from sidecar.events import KINDS, Event, Unrecognised, from_record
from sidecar.journal import CommitError, Journal
from sidecar.store.sqlite import SqliteStore

T0 = "2027-01-15T08:00:00.000000Z"
SUBJECT = "spiffe://t/agent/me"
INTENT = {"action": "x.write", "resource": "x://1", "justification": "j", "context": {}}
JWK = {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "k1"}

#: One record of every kind, as the dict-building engine wrote it (fields left out are None).
LEGACY: list[dict[str, Any]] = [
    {"event": "task_begun", "time": T0, "task_id": "t1", "subject": SUBJECT, "goal": "g",
     "labels": {"team": "a"}, "expires_at": "2027-01-15T09:00:00.000000Z",
     "heartbeat_interval_seconds": 5, "identity_method": "dev"},
    {"event": "grant_pending", "time": T0, "approval_id": "a-1", "task_id": "t1",
     "subject": SUBJECT, "intent": INTENT, "intent_hash": "h", "reasons": ["r: x"],
     "decision": {"tier": "jit", "ttl_seconds": 60, "audience": "x", "scope": ["x.write"]},
     "ttl_seconds": 60, "expires_at": "2027-01-15T08:05:00.000000Z"},
    {"event": "approval_decided", "time": T0, "approval_id": "a-1", "task_id": "t1",
     "subject": SUBJECT, "approved": True, "approver": "ops"},
    {"event": "grant_issued", "time": T0, "task_id": "t1", "grant_id": "g1", "subject": SUBJECT,
     "intent": INTENT, "decision_id": "d1", "tier": "jit", "scope": ["x.write"],
     "audience": "x", "ttl_seconds": 60, "ttl_limited_by": "requested",
     "expires_at": "2027-01-15T08:01:00.000000Z", "reasons": [], "kid": "k1",
     "approval_id": "a-1"},
    {"event": "grant_issued", "time": T0, "task_id": "t1", "grant_id": "g2", "subject": SUBJECT,
     "intent": INTENT, "tier": "jit", "scope": ["x.write"], "audience": "x", "ttl_seconds": 60,
     "ttl_limited_by": "policy", "expires_at": "2027-01-15T08:01:00.000000Z", "reasons": [],
     "kid": "k1", "cnf_jkt": "jkt", "cached": True},
    {"event": "grant_denied", "time": T0, "task_id": "t1", "subject": SUBJECT, "intent": INTENT,
     "reasons": ["no: never"]},
    {"event": "policy_error", "time": T0, "task_id": "t1", "subject": SUBJECT, "intent": INTENT,
     "reason": "policy_unavailable", "cause": "connect"},
    {"event": "request_rejected", "time": T0, "rpc": "RequestGrant", "task_id": "t9",
     "subject": SUBJECT, "reason": "task_not_found", "detail": "no task t9",
     "intent": {"action": "a", "resource": "r", "justification": ""}},
    {"event": "grant_revoked", "time": T0, "task_id": "t1", "grant_id": "g1", "subject": SUBJECT,
     "tier": "jit", "reason": "revoked_by_operator", "detail": "why", "origin": "b"},
    {"event": "grant_expired", "time": T0, "task_id": "t1", "grant_id": "g2", "subject": SUBJECT,
     "tier": "jit", "reason": "expired"},
    {"event": "approval_expired", "time": T0, "approval_id": "a-2", "task_id": "t1",
     "subject": SUBJECT, "reason": "task_ended"},
    {"event": "task_completed", "time": T0, "task_id": "t1", "subject": SUBJECT,
     "state": "succeeded", "reason": "completed", "revoked_grants": 0},
    {"event": "key_rotated", "time": T0, "kid": "k2", "jwk": JWK | {"kid": "k2"},
     "previous_kid": "k1", "previous_jwk": JWK, "retire_at": "2027-01-15T08:15:00.000000Z"},
    {"event": "revocation_ordered", "time": T0, "scope": "subject", "subject": SUBJECT,
     "cutoff": T0, "revocation_expires_at": "2027-01-15T08:15:00.000000Z",
     "reason": "kill_switch"},
    {"event": "authzen_decision", "time": T0, "subject": "spiffe://jit.local/agent/dev",
     "authzen": {"subject_type": "agent", "action": "docs.read", "resource_type": "docs",
                 "resource": "docs://a"},
     "decision": True, "request_id": "r-1"},
    {"event": "egress_usage", "time": T0, "task_id": "t1", "grant_id": "g1",
     "subject": SUBJECT, "upstream": "ticket-api", "requests": 3, "denials": 1,
     "bytes_sent": 120, "bytes_received": 4096, "streams_cut": 0, "reason": "completed"},
    {"event": "credential_issued", "time": T0, "task_id": "t1", "grant_id": "g1",
     "broker": "postgres", "handle": "jit_00ff", "expires_at": "2027-01-15T08:01:00.000000Z",
     "subject": SUBJECT, "details": {"database": "crm", "privileges": "SELECT"}},
    {"event": "credential_revoked", "time": T0, "grant_id": "g1", "broker": "postgres",
     "handle": "jit_00ff", "task_id": "t1", "reason": "completed", "attempts": 2},
    {"event": "ssf_stream_changed", "time": T0, "stream_id": "s-1", "change": "created",
     "aud": "https://rs.example/", "delivery_method": "urn:ietf:rfc:8935",
     "endpoint_url": "https://rs.example/ssf/push", "status": "enabled",
     "events_delivered": ["https://schemas.openid.net/secevent/caep/event-type/session-revoked"]},
    {"event": "flow_flagged", "time": T0, "task_id": "t-1", "subject": SUBJECT,
     "intent": {"action": "email.send", "resource": "email://customer/c-42",
                "justification": "reply", "context": {}},
     "task_flow_labels": ["private_data", "untrusted_input"],
     "intent_flow_labels": ["external_egress"], "rules": ["flow_trifecta"],
     "plan_deviation": False, "decision_id": "d-1"},
]  # fmt: skip


def test_every_kind_writes_the_record_it_was_read_from() -> None:
    """from_record(r).record() == r for one record of every kind (the audit format is
    unchanged), each read as its own type."""
    events = [from_record(r) for r in LEGACY]
    assert [e.record() for e in events] == LEGACY
    assert {type(e) for e in events} == set(KINDS.values())
    assert all(type(e).__doc__ for e in events)


def test_chain_fields_and_unknown_kinds_are_ignored() -> None:
    """A sealed record (seq, prev_hash, hash) reads as the same event; a kind this version
    does not know reads as Unrecognised, keeping its place in a batch."""
    sealed = LEGACY[0] | {"seq": 7, "prev_hash": "0" * 64, "hash": "f" * 64}
    newer = {"event": "grant_renewed", "time": T0, "grant_id": "g1"}
    assert from_record(sealed) == from_record(LEGACY[0])
    assert from_record(newer) == Unrecognised(time=T0, kind="grant_renewed")


def test_an_existing_audit_log_replays_into_the_store(tmp_path: Path) -> None:
    """Records in today's format, written to a real audit file, replay through the journal
    into a fresh SQLite store: the task, grants, approval and keys end as they recorded."""
    audit = AuditFile(tmp_path / "audit.jsonl")
    audit.write([dict(r) for r in LEGACY])
    audit.close()
    store = SqliteStore(tmp_path / "state.db")
    journal = Journal(AuditFile(tmp_path / "audit.jsonl"), store)
    try:
        replayed = journal.replay()
        db = store.writer
        tasks = db.execute("SELECT task_id, state, labels FROM tasks").fetchall()
        grants = db.execute("SELECT grant_id, state, end_reason FROM grants ORDER BY 1").fetchall()
        approvals = db.execute("SELECT approval_id, state, decided_by FROM approvals").fetchall()
        keys = db.execute("SELECT kid FROM keys").fetchall()
        current = db.execute("SELECT value FROM meta WHERE key = 'current_key'").fetchone()
        applied = store.applied_seq()
    finally:
        journal.close()
        store.close()
    assert len(replayed) == len(LEGACY) == applied
    assert tasks == [("t1", "succeeded", json.dumps({"team": "a"}))]
    assert grants == [("g1", "revoked", "revoked_by_operator"), ("g2", "expired", "expired")]
    assert approvals == [("a-1", "used", "ops")]
    assert keys == [("k1",)]
    assert json.loads(current[0])["kid"] == "k2"


def test_the_journal_writes_event_records(tmp_path: Path) -> None:
    """Events committed through the journal land in the audit log as their records, chained
    (seq from 1), and in the store."""

    async def commit(journal: Journal, events: list[Event]) -> None:
        await journal.commit(events)

    store = SqliteStore(tmp_path / "state.db")
    journal = Journal(AuditFile(tmp_path / "audit.jsonl"), store)
    journal.start()
    try:
        asyncio.run(commit(journal, [from_record(LEGACY[0])]))
        task = store.writer.execute("SELECT task_id, subject FROM tasks").fetchone()
    finally:
        journal.close()
        store.close()
    (written,) = records_after(tmp_path / "audit.jsonl", 0)
    assert {k: v for k, v in written.items() if k not in ("seq", "prev_hash", "hash")} == LEGACY[0]
    assert written["seq"] == 1
    assert task == ("t1", SUBJECT)


class _FailingOnce(SqliteStore):
    """The real SQLite store, failing its first batch (a fault SQLite cannot produce on
    demand here) and noting the seq of every event it is handed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failed = False
        self.seen: list[list[int]] = []

    def apply(self, records: Any, touches: Any, seq: int, also: Any = None) -> None:
        self.seen.append([r.seq for r in records])
        if not self.failed and records:
            self.failed = True
            raise OSError("injected")
        super().apply(records, touches, seq, also)


def test_each_event_reaches_the_store_with_its_audit_seq(tmp_path: Path) -> None:
    """The store gets every event with the seq its audit record has, also when a failed
    batch is retried as backlog ahead of the next one."""

    async def commit(journal: Journal, events: list[Event]) -> list[str]:
        outcomes = []
        for batch in (events[:2], events[2:]):
            try:
                await journal.commit(batch)
                outcomes.append("ok")
            except CommitError as err:  # the first batch's store write is the injected fault
                outcomes.append(f"{err.reason.value} durable={err.durable}")
        return outcomes

    store = _FailingOnce(tmp_path / "state.db")
    journal = Journal(AuditFile(tmp_path / "audit.jsonl"), store)
    journal.start()
    try:
        outcomes = asyncio.run(commit(journal, [from_record(r) for r in LEGACY[:4]]))
    finally:
        journal.close()
        store.close()
    audited = [r["seq"] for r in records_after(tmp_path / "audit.jsonl", 0)]
    assert outcomes == ["store_unavailable durable=True", "ok"]
    assert audited == [1, 2, 3, 4]
    assert store.seen == [[1, 2], [1, 2, 3, 4]]
