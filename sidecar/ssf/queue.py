"""The durable side of the transmitter: streams and undelivered SETs in one SQLite file.

Each stream's SETs wait here, in order, until the receiver acknowledges them (a 202 to a push,
RFC 8935 §2.2; an `ack` in a poll, RFC 8936 §2.4) or until the tokens they speak of would
have expired anyway (`drop_after`). The file lives next to the state store, so a restart
resumes delivery where it stopped. Calls are short single statements on the event loop's
thread (WAL, synchronous=NORMAL: the same trade as the state store).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ssf_streams (
    stream_id  TEXT PRIMARY KEY,
    aud        TEXT NOT NULL UNIQUE,
    config     TEXT NOT NULL,
    secret     TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ssf_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id  TEXT NOT NULL REFERENCES ssf_streams(stream_id) ON DELETE CASCADE,
    jti        TEXT NOT NULL,
    token      TEXT NOT NULL,
    created_at REAL NOT NULL,
    drop_after REAL NOT NULL,
    UNIQUE (stream_id, jti)
);
CREATE INDEX IF NOT EXISTS ssf_events_by_stream ON ssf_events(stream_id, seq);
"""


@dataclass(frozen=True, slots=True)
class StoredStream:
    """One receiver's stream as stored."""

    stream_id: str
    aud: str
    config: Mapping[str, Any]
    """The receiver-visible configuration (SSF 1.0 §8.1.1), without the push secret."""
    secret: str
    """The `authorization_header` pushes carry (RFC 8935 §2): never logged or returned."""
    status: str
    reason: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Pending:
    """A SET waiting for its receiver."""

    seq: int
    jti: str
    token: str
    created_at: float


class EventQueue:
    """Streams and their pending SETs (thread-safe; one connection)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        path.chmod(0o600)  # push secrets live here

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ streams
    def streams(self) -> list[StoredStream]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT stream_id, aud, config, secret, status, reason, created_at "
                "FROM ssf_streams ORDER BY created_at"
            ).fetchall()
        return [
            StoredStream(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6])
            for row in rows
        ]

    def put_stream(self, stream: StoredStream, now: float) -> None:
        """Insert or replace a stream (its pending SETs stay)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO ssf_streams "
                "(stream_id, aud, config, secret, status, reason, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(stream_id) DO UPDATE SET "
                "aud = excluded.aud, config = excluded.config, secret = excluded.secret, "
                "status = excluded.status, reason = excluded.reason, "
                "updated_at = excluded.updated_at",
                (
                    stream.stream_id,
                    stream.aud,
                    json.dumps(dict(stream.config), separators=(",", ":")),
                    stream.secret,
                    stream.status,
                    stream.reason,
                    stream.created_at,
                    now,
                ),
            )

    def delete_stream(self, stream_id: str) -> None:
        """Forget a stream and everything still queued for it."""
        with self._lock:
            self._conn.execute("DELETE FROM ssf_streams WHERE stream_id = ?", (stream_id,))

    # ------------------------------------------------------------------ events
    def append(self, rows: list[tuple[str, str, str, float, float]]) -> None:
        """Queue SETs: (stream_id, jti, token, created_at, drop_after), in this order, in
        one transaction."""
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO ssf_events "
                    "(stream_id, jti, token, created_at, drop_after) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def pending(self, stream_id: str, now: float, limit: int) -> list[Pending]:
        """The oldest `limit` SETs of a stream, after dropping those past `drop_after`."""
        with self._lock:
            self._conn.execute(
                "DELETE FROM ssf_events WHERE stream_id = ? AND drop_after <= ?", (stream_id, now)
            )
            rows = self._conn.execute(
                "SELECT seq, jti, token, created_at FROM ssf_events WHERE stream_id = ? "
                "ORDER BY seq LIMIT ?",
                (stream_id, limit),
            ).fetchall()
        return [Pending(*row) for row in rows]

    def ack(self, stream_id: str, jtis: list[str]) -> int:
        """Remove acknowledged SETs; returns how many were pending."""
        if not jtis:
            return 0
        with self._lock:
            cursor = self._conn.executemany(
                "DELETE FROM ssf_events WHERE stream_id = ? AND jti = ?",
                [(stream_id, jti) for jti in jtis],
            )
            return cursor.rowcount

    def clear(self, stream_id: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM ssf_events WHERE stream_id = ?", (stream_id,))

    def depth(self, stream_id: str) -> tuple[int, float | None]:
        """(pending SETs, creation time of the oldest) of a stream."""
        with self._lock:
            count, oldest = self._conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM ssf_events WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
        return int(count), oldest
