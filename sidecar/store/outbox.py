"""The transactional outbox that carries this sidecar's changes to the fleet's Redis.

In the same SQLite transaction that applies a batch of audited events, the fleet's share of
it is queued in `fleet_outbox` (`Outbox.queue`); after the commit, `Outbox.push` sends the
whole queue to Redis in order, one pipeline per chunk, and deletes what was sent. When Redis
is unreachable the rows stay queued (durably: a crash loses nothing either, they are pushed
at the next start) and a background thread probes Redis and replays them in order once it
answers. An outage ends when its queued changes are all pushed.

The outbox knows rows, order and availability; what a change means in Redis is the `emit`
callback's (`RedisStore.emit`), and what to republish when Redis lost its data is the
`republish` callback's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..metrics import Metrics
from .redis_connect import REDIS_ERRORS
from .sqlite import SqliteStore

log = logging.getLogger("jit_sidecar.store.outbox")
DRAIN_CHUNK = 256
REPLAY_PROBE = 0.25
"""Seconds between attempts to reach Redis again while it is unavailable."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  seq INTEGER NOT NULL,
  op TEXT NOT NULL,
  payload TEXT NOT NULL,
  expires_at REAL NOT NULL,
  queued_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Change:
    """One fleet change, as queued in the outbox."""

    op: str
    """What it does in Redis: task, grant, grant_end, task_end, revoke or key."""
    payload: dict[str, Any]
    expires_at: float
    """Past it, the change no longer matters to anyone: it is dropped instead of pushed."""


Emit = Callable[[Any, str, dict[str, Any], float, float], None]
"""Queue the Redis commands of one change on a pipeline: (pipe, op, payload, expires_at, now)."""


class Outbox:
    """Fleet changes queued with the local transaction and pushed to Redis in order."""

    def __init__(
        self,
        local: SqliteStore,
        client: Any,
        metrics: Metrics,
        *,
        emit: Emit,
        republish: Callable[[sqlite3.Connection], list[Change]],
    ) -> None:
        self.local = local
        self.metrics = metrics
        self._redis = client
        self._emit = emit
        self._republish = republish
        self.unavailable_since: float | None = None
        """Monotonic time Redis stopped answering writes (None while it answers)."""
        self.problem = ""
        """Why Redis is unavailable for writes ("" while it answers)."""
        self.depth = 0
        """Changes queued and not yet pushed."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._repair = threading.Event()
        conn = local.writer
        conn.executescript(SCHEMA)
        self.depth = conn.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0]
        self.metrics.fleet_outbox_depth.set(self.depth)
        self._thread = threading.Thread(target=self._replayer, name="jit-fleet-outbox", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the replay thread (what is still queued stays queued for the next start)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(5)

    # ================================================================== queue and push
    @staticmethod
    def queue(conn: sqlite3.Connection, changes: Sequence[tuple[int, Change]]) -> None:
        """Queue (audit seq, change) pairs inside the caller's open SQLite transaction."""
        now = time.time()
        conn.executemany(
            "INSERT INTO fleet_outbox (seq, op, payload, expires_at, queued_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(s, c.op, _json(c.payload), c.expires_at, now) for s, c in changes],
        )

    def push(self, added: int) -> bool:
        """After the commit that queued `added` changes: push the whole outbox now, unless
        Redis is known to be down (then the replay thread will). True when it is empty.

        Called on the journal's thread.
        """
        self.depth += added
        self.metrics.fleet_outbox_depth.set(self.depth)
        if self.unavailable_since is None:
            with self._lock:
                return self._drain_or_open(self.local.writer, replaying=False)
        self._wake.set()
        return False

    def request_repair(self) -> None:
        """Queue everything `republish` returns (Redis lost data), then push it."""
        self._repair.set()
        self._wake.set()

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
                    self._emit(pipe, op, json.loads(payload), expires_at, now)
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

    def _queue_repair(self, conn: sqlite3.Connection) -> None:
        changes = self._republish(conn)
        self.queue(conn, [(0, c) for c in changes])
        self.depth += len(changes)
        self.metrics.fleet_outbox_depth.set(self.depth)
        log.warning(
            "Redis lost the fleet's data; republishing %d live tasks, grants and revocations",
            len(changes),
            extra={"count": len(changes)},
        )


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
