"""Shared state on Redis for a fleet of sidecars, composed with the local SQLite store.

The local durability model does not change: the audit log is the write-ahead log and SQLite
the local state (`sidecar.journal`, `sidecar.store.sqlite`). `RedisStore` implements the same
`Store` protocol by applying every batch to SQLite first and then pushing what the fleet must
see to Redis: grant and task registrations (so operators anywhere can find them) and
revocations (so every sidecar refuses the token at once).

The push goes through a transactional outbox. In the same SQLite transaction that applies a
batch, its fleet changes are queued in `fleet_outbox`; after the commit they are pushed to
Redis in order and deleted. When Redis is unreachable they stay queued (durably) and a
background thread replays them in order once it is back, so a revocation or a completion is
never lost. A new grant must be visible to the fleet before its token leaves, so a batch with
a `grant_issued` that could not be pushed raises: the journal reports `store_unavailable`
and the engine aborts the issue (fail closed).

Every key's layout, type and lifetime is in docs/scale-out.md; in short, per task (one hash
slot in a Redis Cluster, through the `{t:TASK}` hash tag) a task hash, a grant index and one
hash per grant, each expiring with what it describes; and fleet-wide (one slot, `{PREFIX}`)
the revocation index, the revocation stream, the public-key index and keys, and the epoch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from ..approvals import Approval
from ..config import Config
from ..errors import ConfigError, Reason, Unavailable
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
from .sqlite import SqliteStore

log = logging.getLogger("jit_sidecar.store.redis")
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)
"""What an unreachable, failing-over or misbehaving Redis raises."""

KEY_MARGIN = 60.0
"""Seconds a current signing key stays registered beyond max_ttl without a refresh."""
DRAIN_CHUNK = 256
REPLAY_PROBE = 0.25
"""Seconds between attempts to reach Redis again while it is unavailable."""

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  seq INTEGER NOT NULL,
  op TEXT NOT NULL,
  payload TEXT NOT NULL,
  expires_at REAL NOT NULL,
  queued_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_orders (
  member TEXT PRIMARY KEY,
  expires_at REAL NOT NULL,
  detail TEXT NOT NULL DEFAULT ''
);
"""

# Lua: each script touches keys of one hash slot only, so it is atomic on a Cluster too.
_EXTEND = """
local function extend(key, at)
  if redis.call('PEXPIRETIME', key) < at then redis.call('PEXPIREAT', key, at) end
end
"""
REGISTER = (
    _EXTEND
    + """
-- KEYS: hash [, index]  ARGV: expires_ms, now_ms, index member, field, value, ...
local at = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], at)
if #KEYS > 1 then
  redis.call('ZADD', KEYS[2], at, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
  extend(KEYS[2], at)
end
return 1
"""
)
UPDATE = """
-- KEYS: hash  ARGV: field, value, ...  (never creates a key that would not expire)
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return 1
end
return 0
"""
PUBLISH = (
    _EXTEND
    + """
-- KEYS: revocation index, stream  ARGV: member, expires_ms, now_ms, minid, detail
local at = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
extend(KEYS[1], at)
return redis.call('XADD', KEYS[2], 'MINID', ARGV[4], '*',
  'kind', 'rev', 'm', ARGV[1], 'x', ARGV[2], 'd', ARGV[5])
"""
)
REGISTER_KEY = (
    _EXTEND
    + """
-- KEYS: key, key index, stream  ARGV: kid, value, expires_ms, now_ms, minid
local at = tonumber(ARGV[3])
local old = redis.call('SET', KEYS[1], ARGV[2], 'PXAT', at, 'GET')
redis.call('ZADD', KEYS[2], at, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
extend(KEYS[2], at)
if not old then
  redis.call('XADD', KEYS[3], 'MINID', ARGV[5], '*', 'kind', 'key', 'kid', ARGV[1])
end
return 1
"""
)
SNAPSHOT = """
-- KEYS: revocation index, stream, epoch, key index  ARGV: now_ms, epoch candidate, full
redis.call('SET', KEYS[3], ARGV[2], 'NX')
local epoch = redis.call('GET', KEYS[3])
local last, first = '', ''
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
    if info[i] == 'recorded-first-entry-id' then first = info[i + 1] end
  end
end
local revs, kids = {}, {}
if ARGV[3] == '1' then
  revs = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES')
  kids = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[1], '+inf')
end
return {epoch, last, first, revs, kids}
"""


class Keys:
    """Every Redis key name (docs/scale-out.md, "Key layout")."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        fleet = "{" + prefix + "}"
        self.feed = f"{fleet}:feed"
        self.revocations = f"{fleet}:revocations"
        self.keyset = f"{fleet}:keys"
        self.epoch = f"{fleet}:epoch"
        self._fleet = fleet

    def key(self, kid: str) -> str:
        return f"{self._fleet}:key:{kid}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{task_id}}}:task"

    def task_grants(self, task_id: str) -> str:
        return f"{self.prefix}:{{t:{task_id}}}:grants"

    def grant(self, task_id: str, grant_id: str) -> str:
        return f"{self.prefix}:{{t:{task_id}}}:grant:{grant_id}"


class SharedStateUnavailable(Unavailable):
    """A new grant could not be registered with the fleet."""

    default_reason = Reason.STORE_UNAVAILABLE


def redis_password(config: Config) -> str | None:
    if config.redis_password_file is None:
        return None
    try:
        return config.redis_password_file.read_text().strip() or None
    except OSError as err:
        raise ConfigError(f"cannot read redis_password_file: {err.strerror}") from err


def _options(config: Config, timeout: float, connect_timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": True,
        "password": redis_password(config),
    }
    if config.redis_ca_file is not None and config.state.startswith("rediss://"):
        options["ssl_ca_certs"] = str(config.redis_ca_file)
    return options


def connect_sync(config: Config, timeout: float) -> Any:
    """A thread-safe (pooled) client; one quick retry (a pooled connection may be stale)."""
    kwargs = _options(config, timeout, timeout)
    if config.redis_cluster:
        return redis.cluster.RedisCluster.from_url(
            config.state, cluster_error_retry_attempts=1, **kwargs
        )
    return redis.Redis.from_url(config.state, retry=Retry(NoBackoff(), 1), **kwargs)


def connect_async(config: Config, timeout: float) -> Any:
    kwargs = _options(config, timeout, min(timeout, 2.0))
    if config.redis_cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(
            config.state, cluster_error_retry_attempts=1, **kwargs
        )
    return redis.asyncio.Redis.from_url(config.state, retry=AsyncRetry(NoBackoff(), 0), **kwargs)


def redacted(url: str) -> str:
    """The state URL without its password, for logs and /readyz."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = creds.partition(":")
    hidden = f"{user}:***" if colon and user else (user or "***")
    return f"{scheme}{sep}{hidden}@{host}"


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(frozen=True, slots=True)
class _Op:
    op: str
    payload: dict[str, Any]
    expires_at: float


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
        self.unavailable_since: float | None = None
        """Monotonic time Redis stopped answering writes (None while it answers)."""
        self.problem = ""
        self.depth = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._repair = threading.Event()
        conn = local.writer
        conn.executescript(OUTBOX_SCHEMA)
        self._queued_through = local.applied_seq()
        self.depth = conn.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0]
        self.metrics.fleet_outbox_depth.set(self.depth)
        self._thread = threading.Thread(target=self._replayer, name="jit-fleet-outbox", daemon=True)
        self._thread.start()

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
        self._closing.set()
        self._wake.set()
        self._thread.join(5)
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
                now = time.time()
                conn.executemany(
                    "INSERT INTO fleet_outbox (seq, op, payload, expires_at, queued_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(s, op.op, _json(op.payload), op.expires_at, now) for s, op in ops],
                )

        self.local.apply(records, touches, seq, also=queue)
        if records:
            self._queued_through = max(self._queued_through, seq)
        if not ops:
            return
        self.depth += len(ops)
        self.metrics.fleet_outbox_depth.set(self.depth)
        if revocations and self.listener is not None:
            self.listener(revocations)
        pushed = False
        if self.unavailable_since is None:
            with self._lock:
                pushed = self._drain_or_open(self.local.writer, replaying=False)
        else:
            self._wake.set()
        if issued and self.live and not pushed:
            # When the journal re-applies this batch, its records are skipped above (already
            # queued), so this fails the issue once, never the unrelated changes after it.
            raise SharedStateUnavailable(
                f"Redis is unavailable ({self.problem}); new grants are refused until it is "
                "back and the outbox is replayed"
            )

    def issuable(self) -> bool:
        """True when a new grant's registration can reach Redis at once: Redis answers and
        no replay is pending (an outage ends when its queued changes are all pushed)."""
        return self.unavailable_since is None

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

    # ------------------------------------------------------------------ pushing
    def _drain_or_open(self, conn: sqlite3.Connection, *, replaying: bool) -> bool:
        """Push the whole outbox in order (the caller holds the lock); True when empty.

        On failure the rows stay queued and Redis counts as unavailable until the replay
        thread gets through.
        """
        try:
            self._drain(conn, replaying=replaying)
        except REDIS_ERRORS as err:
            self._unavailable(err)
            return False
        except Exception as err:  # a bug must not fail the journal: keep the rows, retry
            log.exception("fleet outbox push failed")
            self._unavailable(err)
            return False
        return True

    def _drain(self, conn: sqlite3.Connection, *, replaying: bool) -> int:
        pushed = 0
        while True:
            rows = conn.execute(
                "SELECT id, op, payload, expires_at, queued_at FROM fleet_outbox "
                "ORDER BY id LIMIT ?",
                (DRAIN_CHUNK,),
            ).fetchall()
            if not rows:
                break
            now = time.time()
            pipe = self._redis.pipeline(transaction=False)
            for _id, op, payload, expires_at, _queued in rows:
                if expires_at > now:  # past it, the change no longer matters to anyone
                    self.emit(pipe, op, json.loads(payload), expires_at, now)
            pipe.execute()
            conn.execute("DELETE FROM fleet_outbox WHERE id <= ?", (rows[-1][0],))
            pushed += len(rows)
            done = time.time()
            if replaying:
                for row in rows:
                    self.metrics.fleet_replay_lag.observe(max(0.0, done - row[4]))
            self.depth = max(0, self.depth - len(rows))
            self.metrics.fleet_outbox_depth.set(self.depth)
        self.depth = conn.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0]
        self.metrics.fleet_outbox_depth.set(self.depth)
        return pushed

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

    def _unavailable(self, err: Exception) -> None:
        self.problem = f"{type(err).__name__}: {err}"
        if self.unavailable_since is None:
            self.unavailable_since = time.monotonic()
            self.metrics.fleet_redis_errors.labels(side="write").inc()
            log.error(
                "Redis unavailable for writes (%s); fleet changes queue in the outbox and new "
                "grants are refused",
                self.problem,
                extra={"reason": "store_unavailable"},
            )
        self._wake.set()

    # ------------------------------------------------------------------ replay thread
    def _replayer(self) -> None:
        conn = sqlite3.connect(self.local.path, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        try:
            while not self._closing.is_set():
                down = self.unavailable_since is not None
                self._wake.wait(REPLAY_PROBE if down or self.depth else 5.0)
                self._wake.clear()
                if self._closing.is_set():
                    return
                if self._repair.is_set():
                    self._repair.clear()
                    with self._lock:
                        self._queue_repair(conn)
                if self.unavailable_since is None and self.depth == 0:
                    continue
                self._replay_once(conn)
        except Exception:  # never let the thread die silently
            log.exception("fleet outbox replay thread failed")
        finally:
            conn.close()

    def _replay_once(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            started = time.perf_counter()
            try:
                if self.unavailable_since is not None:
                    self._redis.ping()
                count = self._drain(conn, replaying=True)
            except REDIS_ERRORS as err:
                self._unavailable(err)
                return
            except Exception as err:
                log.exception("fleet outbox replay failed")
                self._unavailable(err)
                return
            if self.unavailable_since is not None:
                down = time.monotonic() - self.unavailable_since
                self.unavailable_since = None
                self.problem = ""
                log.warning(
                    "Redis reachable again after %.1f s; %d queued fleet changes replayed in "
                    "%.3f s",
                    down,
                    count,
                    time.perf_counter() - started,
                    extra={"count": count},
                )

    # ------------------------------------------------------------------ repair
    def request_repair(self) -> None:
        """Redis lost data (its epoch changed): publish again everything of ours that the
        fleet must still know (revocations, orders, live tasks and grants)."""
        self._repair.set()
        self._wake.set()

    def _queue_repair(self, conn: sqlite3.Connection) -> None:
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
        conn.executemany(
            "INSERT INTO fleet_outbox (seq, op, payload, expires_at, queued_at) "
            "VALUES (0, ?, ?, ?, ?)",
            [(op.op, _json(op.payload), op.expires_at, now) for op in ops],
        )
        self.depth += len(ops)
        self.metrics.fleet_outbox_depth.set(self.depth)
        log.warning(
            "Redis lost the fleet's data; republishing %d live tasks, grants and revocations",
            len(ops),
            extra={"count": len(ops)},
        )

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


def key_value(jwk: Mapping[str, str], owner: str, expires_at: float) -> str:
    """The registration of a public key: the JWK, who holds its private half, its expiry."""
    public = {k: v for k, v in jwk.items() if k != "d"}  # never a private member, whatever
    return json.dumps(
        {"jwk": public, "sidecar": owner, "exp": round(expires_at, 3)}, separators=(",", ":")
    )


def _eval(pipe: Any, script: str, numkeys: int, *args: Any) -> None:
    # EVAL through execute_command: redis-py's cluster pipeline has no usable eval(), and
    # both pipelines route a script by its keys.
    pipe.execute_command("EVAL", script, numkeys, *args)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


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
