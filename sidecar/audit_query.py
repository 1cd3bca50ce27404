"""Read the audit log back: records selected by task, subject, grant, event and time.

The admin API's `QueryAudit` (and through it the console's audit trail) reads the log files
the sidecar writes (sidecar.audit), rotated ones first. It is a scan, not an index: fine for
an operator's search, which is rare and bounded by `limit`; the log stays the only record.
Records hold no token or key (sidecar.audit), so they are returned as written.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .audit import log_files

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to select; empty fields select everything."""

    task_id: str = ""
    subject: str = ""
    grant_id: str = ""
    events: frozenset[str] = frozenset()
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT

    def matches(self, record: dict[str, Any]) -> bool:
        if self.task_id and record.get("task_id") != self.task_id:
            return False
        if self.subject and record.get("subject") != self.subject:
            return False
        if self.grant_id and not _names_grant(record, self.grant_id):
            return False
        if self.events and record.get("event") not in self.events:
            return False
        if self.since is not None or self.until is not None:
            when = _timestamp(record.get("time"))
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        return True


def _names_grant(record: dict[str, Any], grant_id: str) -> bool:
    if record.get("grant_id") == grant_id:
        return True
    ids = record.get("grant_ids")
    return isinstance(ids, list) and grant_id in ids


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def select(paths: Sequence[Path], query: AuditQuery) -> tuple[list[dict[str, Any]], bool]:
    """The newest `query.limit` matching records, oldest first, and whether more matched.
    Lines that are not JSON objects (a torn tail) are skipped: `audit verify` reports them."""
    kept: deque[dict[str, Any]] = deque(maxlen=query.limit)
    matched = 0
    for path in paths:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            continue
        with f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict) and query.matches(record):
                    kept.append(record)
                    matched += 1
    return list(kept), matched > len(kept)


def query_log(path: Path, query: AuditQuery) -> tuple[list[dict[str, Any]], bool]:
    """`select` over the log at `path` and its rotated files."""
    return select(log_files(path), query)
