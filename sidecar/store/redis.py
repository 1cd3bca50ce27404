"""Shared state on Redis for a fleet of sidecars, composed with the local SQLite store.

The local durability model does not change: the audit log is the write-ahead log and SQLite
the local state (`sidecar.journal`, `sidecar.store.sqlite`). `RedisStore` implements the same
`Store` protocol by applying every batch to SQLite first and then pushing what the fleet must
see to Redis: grant and task registrations (so operators anywhere can find them) and
revocations (so every sidecar refuses the token at once).

This module says *what* the fleet must see: it turns audited events into fleet changes
(`_ops`) and each change into Redis commands (`emit`), and reads back tasks other sidecars
registered. *How* the changes get there is the transactional outbox's
(`sidecar.store.outbox`): queued in the SQLite transaction that applies the batch, pushed in
order after the commit, replayed once Redis is back, so a revocation or a completion is
never lost. A new grant must be visible to the fleet before its token leaves, so a batch with
a `grant_issued` that could not be pushed raises: the journal reports `store_unavailable`
and the engine aborts the issue (fail closed).

Key names and Lua scripts are in `sidecar.store.redis_layout` (docs/scale-out.md, "Key
layout"); the client comes from `sidecar.store.redis_connect`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..approvals import Approval
from ..config import Config
from ..errors import Reason, Unavailable
from ..events import (
    Event,
    GrantIssued,
    GrantRevoked,
    KeyRotated,
    Recorded,
    RevocationOrdered,
    TaskBegun,
    TaskCompleted,
)
from ..metrics import Metrics
from ..model import Grant, Task, TaskState
from ..revocations import Revocation
from . import Snapshot
from .outbox import Change as _Op  # the name the event-reading code below has always used
from .outbox import Outbox
from .redis_connect import REDIS_ERRORS, connect_sync
from .redis_layout import (
    KEY_MARGIN,
    PUBLISH,
    REGISTER,
    REGISTER_KEY,
    UPDATE,
    Keys,
    key_value,
)
from .sqlite import SqliteStore

log = logging.getLogger("jit_sidecar.store.redis")
ORDERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_orders (
  member TEXT PRIMARY KEY,
  expires_at REAL NOT NULL,
  detail TEXT NOT NULL DEFAULT ''
);
"""
"""Revocations this sidecar ordered, kept to republish them if Redis loses its data."""


class SharedStateUnavailable(Unavailable):
    """A new grant could not be registered with the fleet."""

    default_reason = Reason.STORE_UNAVAILABLE


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RedisStore:
    """The local SQLite store plus the fleet's shared state on Redis (see module doc)."""

    def __init__(
        self,
        config: Config,
        local: SqliteStore,
        *,
        fleet_id: str,
        metrics: Metrics,
        client: Any = None,
    ) -> None:
        self.config = config
        self.local = local
        self.fleet_id = fleet_id
        self.keys = Keys(config.redis_prefix)
        self.metrics = metrics
        self._redis = client if client is not None else connect_sync(config, config.redis_timeout)
        self.live = False
        """Set once start-up replay is over: from then on, an unpushed grant fails its issue."""
        self.listener: Callable[[list[Revocation]], None] | None = None
        """Told (on the journal's thread) of every revocation this sidecar makes."""
        conn = local.writer
        conn.executescript(ORDERS_SCHEMA)
        self._queued_through = local.applied_seq()
        self.outbox = Outbox(local, self._redis, metrics, emit=self.emit, republish=self._republish)

    # ================================================================== Store protocol
    def applied_seq(self) -> int:
        return self.local.applied_seq()

    def load(self) -> Snapshot:
        return self.local.load()

    async def get_task(self, task_id: str) -> Task | None:
        """This sidecar's task, or one another sidecar of the fleet registered."""
        task = await self.local.get_task(task_id)
        if task is None:
            task = await asyncio.to_thread(self._remote_task, task_id)
        return task

    async def get_grant(self, grant_id: str) -> Grant | None:
        return await self.local.get_grant(grant_id)

    async def list_grants(self, task_id: str, include_inactive: bool) -> list[Grant]:
        # This sidecar's grants only: a task's grants are listed by the sidecar that owns it
        # (the engine treats grants it does not hold in memory as ended).
        return await self.local.list_grants(task_id, include_inactive)

    async def get_approval(self, approval_id: str) -> Approval | None:
        return await self.local.get_approval(approval_id)

    async def list_approvals(self, limit: int = 1000) -> list[Approval]:
        return await self.local.list_approvals(limit)

    def check_writable(self) -> bool:
        return self.local.check_writable()

    def close(self) -> None:
        self.outbox.close()
        self._redis.close()
        self.local.close()

    # ================================================================== write side
    def apply(
        self, records: Sequence[Recorded], touches: Sequence[tuple[str, float]], seq: int
    ) -> None:
        """Apply to SQLite and queue the fleet's share in the same transaction; then push.

        Called on the journal's thread (and once at start-up for replay).
        """
        ops: list[tuple[int, _Op]] = []
        revocations: list[Revocation] = []
        issued: list[str] = []

        def queue(conn: sqlite3.Connection) -> None:
            for record in records:
                rseq = record.seq
                if rseq and rseq <= self._queued_through:
                    continue  # a batch the journal re-applies after a failure
                for op in self._ops(conn, record.event):
                    ops.append((rseq, op))
                    if op.op == "grant":
                        issued.append(op.payload["grant_id"])
                    rev = _revocation_of(op)
                    if rev is not None:
                        revocations.append(rev)
            if ops:
                self.outbox.queue(conn, ops)

        self.local.apply(records, touches, seq, also=queue)
        if records:
            self._queued_through = max(self._queued_through, seq)
        if not ops:
            return
        if revocations and self.listener is not None:
            self.listener(revocations)
        pushed = self.outbox.push(len(ops))
        if issued and self.live and not pushed:
            # When the journal re-applies this batch, its records are skipped above (already
            # queued), so this fails the issue once, never the unrelated changes after it.
            raise SharedStateUnavailable(
                f"Redis is unavailable ({self.outbox.problem}); new grants are refused until it is "
                "back and the outbox is replayed"
            )

    def issuable(self) -> bool:
        """True when a new grant's registration can reach Redis at once: Redis answers and
        no replay is pending (an outage ends when its queued changes are all pushed)."""
        return self.outbox.unavailable_since is None

    # ------------------------------------------------------------------ events → fleet ops
    def _ops(self, conn: sqlite3.Connection, e: Event) -> list[_Op]:
        now = _ts(e.time)
        if isinstance(e, TaskBegun):
            return [self._task_op(e.task_id, e.subject, now, _ts(e.expires_at))]
        if isinstance(e, GrantIssued):
            registration = {
                "subject": e.subject,
                "action": e.intent.get("action", ""),
                "resource": e.intent.get("resource", ""),
                "tier": e.tier,
                "audience": e.audience,
                "scope": " ".join(e.scope),
                "kid": e.kid,
                "issued_at": now,
                "expires_at": _ts(e.expires_at),
            }
            return [self._grant_op(e.task_id, e.grant_id, registration)]
        if isinstance(e, GrantRevoked):
            row = conn.execute(
                "SELECT expires_at FROM grants WHERE grant_id = ?", (e.grant_id,)
            ).fetchone()
            exp = float(row[0]) if row else now + self.config.max_ttl
            # Published even when an order from elsewhere caused it: the order's cutoff may
            # miss a token issued here just before it arrived if the clocks disagree.
            return [self._end_op(e.task_id, e.grant_id, e.reason or "", exp, e.detail or "")]
        if isinstance(e, TaskCompleted):
            row = conn.execute(
                "SELECT deadline FROM tasks WHERE task_id = ?", (e.task_id,)
            ).fetchone()
            deadline = float(row[0]) if row else now + self.config.max_ttl
            return [
                _Op(
                    "task_end",
                    {"task_id": e.task_id, "state": e.state, "reason": e.reason or ""},
                    deadline,
                )
            ]
        if isinstance(e, RevocationOrdered):
            rev = Revocation(
                e.scope,
                e.target,
                _ts(e.cutoff) if e.cutoff else 0.0,
                e.reason,
                _ts(e.revocation_expires_at),
                self.fleet_id,
                e.detail or "",
            )
            conn.execute(
                "INSERT OR REPLACE INTO fleet_orders (member, expires_at, detail) VALUES (?, ?, ?)",
                (rev.member(), rev.expires_at, rev.detail),
            )
            return [_Op("revoke", {"member": rev.member(), "detail": rev.detail}, rev.expires_at)]
        if isinstance(e, KeyRotated):
            ops = [
                _Op(
                    "key",
                    {"jwk": e.jwk, "sidecar": self.fleet_id},
                    now + self.config.max_ttl + KEY_MARGIN,
                )
            ]
            if e.previous_jwk and e.retire_at:
                ops.append(
                    _Op("key", {"jwk": e.previous_jwk, "sidecar": self.fleet_id}, _ts(e.retire_at))
                )
            return ops
        return []

    def _task_op(self, task_id: str, subject: str, started: float, deadline: float) -> _Op:
        payload = {
            "task_id": task_id,
            "subject": subject,
            "started_at": started,
            "deadline": deadline,
            "sidecar": self.fleet_id,
        }
        return _Op("task", payload, deadline)

    def _grant_op(self, task_id: str, grant_id: str, registration: dict[str, Any]) -> _Op:
        payload = {"task_id": task_id, "grant_id": grant_id, "sidecar": self.fleet_id}
        return _Op("grant", payload | registration, float(registration["expires_at"]))

    def _end_op(self, task_id: str, grant_id: str, reason: str, exp: float, detail: str) -> _Op:
        member = Revocation("grant", grant_id, 0.0, reason, exp, self.fleet_id).member()
        payload = {
            "task_id": task_id,
            "grant_id": grant_id,
            "reason": reason,
            "member": member,
            "detail": detail,
        }
        return _Op("grant_end", payload, exp)

    # ------------------------------------------------------------------ fleet ops → Redis
    def emit(self, pipe: Any, op: str, p: dict[str, Any], expires_at: float, now: float) -> None:
        """Queue the Redis commands of one fleet op on a pipeline."""
        k = self.keys
        at = _ms(expires_at)
        now_ms = _ms(now)
        minid = _ms(now - self.config.redis_stream_retention)
        if op == "task":
            fields = {
                "subject": p["subject"],
                "started_at": p["started_at"],
                "deadline": p["deadline"],
                "sidecar": p["sidecar"],
                "state": "active",
            }
            _eval(pipe, REGISTER, 1, k.task(p["task_id"]), at, now_ms, "", *_flat(fields))
        elif op == "grant":
            fields = {key: p[key] for key in p if key not in ("task_id", "grant_id")}
            fields["state"] = "active"
            _eval(
                pipe,
                REGISTER,
                2,
                k.grant(p["task_id"], p["grant_id"]),
                k.task_grants(p["task_id"]),
                at,
                now_ms,
                p["grant_id"],
                *_flat(fields),
            )
        elif op == "grant_end":
            _eval(
                pipe, PUBLISH, 2, k.revocations, k.feed, p["member"], at, now_ms, minid, p["detail"]
            )
            _eval(
                pipe,
                UPDATE,
                1,
                k.grant(p["task_id"], p["grant_id"]),
                "state",
                "revoked",
                "reason",
                p["reason"],
            )
        elif op == "task_end":
            _eval(pipe, UPDATE, 1, k.task(p["task_id"]), "state", p["state"], "reason", p["reason"])
        elif op == "revoke":
            _eval(
                pipe, PUBLISH, 2, k.revocations, k.feed, p["member"], at, now_ms, minid, p["detail"]
            )
        elif op == "key":
            kid = p["jwk"]["kid"]
            value = key_value(p["jwk"], p["sidecar"], expires_at)
            _eval(
                pipe, REGISTER_KEY, 3, k.key(kid), k.keyset, k.feed, kid, value, at, now_ms, minid
            )
        else:
            log.error("unknown fleet op %r dropped from the outbox", op)

    # ------------------------------------------------------------------ repair
    def request_repair(self) -> None:
        """Redis lost data (its epoch changed): publish again everything of ours that the
        fleet must still know (revocations, orders, live tasks and grants)."""
        self.outbox.request_repair()

    def _republish(self, conn: sqlite3.Connection) -> list[_Op]:
        """Everything of ours the fleet must still know (on the outbox's thread)."""
        now = time.time()
        ops: list[_Op] = []
        for task_id, subject, started, deadline in conn.execute(
            "SELECT task_id, subject, started_at, deadline FROM tasks "
            "WHERE state = 'active' AND deadline > ?",
            (now,),
        ):
            ops.append(self._task_op(task_id, subject, started, deadline))
        columns = (
            "subject",
            "action",
            "resource",
            "tier",
            "audience",
            "scope",
            "kid",
            "issued_at",
            "expires_at",
        )
        for row in conn.execute(
            f"SELECT grant_id, task_id, state, end_reason, {', '.join(columns)} FROM grants "
            "WHERE expires_at > ? AND state IN ('active', 'revoked')",
            (now,),
        ):
            grant_id, task_id, state, reason = row[:4]
            registration = dict(zip(columns, row[4:], strict=True))
            if state == "active":
                ops.append(self._grant_op(task_id, grant_id, registration))
            else:
                exp = float(registration["expires_at"])
                ops.append(self._end_op(task_id, grant_id, reason, exp, ""))
        conn.execute("DELETE FROM fleet_orders WHERE expires_at <= ?", (now,))
        for member, expires_at, detail in conn.execute(
            "SELECT member, expires_at, detail FROM fleet_orders"
        ):
            ops.append(_Op("revoke", {"member": member, "detail": detail}, expires_at))
        return ops

    # ------------------------------------------------------------------ epoch
    def known_epoch(self) -> str | None:
        """The Redis epoch this sidecar last synchronised with (None: never)."""
        return self._read_meta("fleet_epoch")

    def remember_epoch(self, epoch: str) -> None:
        conn = sqlite3.connect(self.local.path, isolation_level=None, timeout=5.0)
        try:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('fleet_epoch', ?)", (epoch,)
            )
        finally:
            conn.close()

    def _read_meta(self, key: str) -> str | None:
        conn = sqlite3.connect(self.local.path, isolation_level=None, timeout=5.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
        return str(row[0]) if row else None

    # ------------------------------------------------------------------ registry reads
    def _remote_task(self, task_id: str) -> Task | None:
        """A task another sidecar registered, with its active grants in `grant_ids`."""
        keys = self.keys
        try:
            fields = self._redis.hgetall(keys.task(task_id))
            if not fields:
                return None
            ids = self._redis.zrangebyscore(keys.task_grants(task_id), _ms(time.time()), "+inf")
            pipe = self._redis.pipeline(transaction=False)
            for gid in ids:
                pipe.hget(keys.grant(task_id, gid), "state")
            states = pipe.execute() if ids else []
        except REDIS_ERRORS:
            return None
        try:
            state = TaskState(fields.get("state", "active"))
        except ValueError:
            state = TaskState.ACTIVE
        try:
            return Task(
                task_id=task_id,
                subject=fields["subject"],
                goal="",
                labels={},
                started_at=float(fields["started_at"]),
                deadline=float(fields["deadline"]),
                heartbeat_interval=self.config.heartbeat_interval,
                state=state,
                end_reason=fields.get("reason", ""),
                grant_ids=[g for g, s in zip(ids, states, strict=True) if s == "active"],
            )
        except (KeyError, ValueError):
            return None


def _eval(pipe: Any, script: str, numkeys: int, *args: Any) -> None:
    # EVAL through execute_command: redis-py's cluster pipeline has no usable eval(), and
    # both pipelines route a script by its keys.
    pipe.execute_command("EVAL", script, numkeys, *args)


def _flat(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for key, value in fields.items():
        out += [key, value]
    return out


def _revocation_of(op: _Op) -> Revocation | None:
    member = op.payload.get("member")
    if op.op not in ("grant_end", "revoke") or not member:
        return None
    return Revocation.from_member(member, op.expires_at, op.payload.get("detail", ""))
