"""The flow state of tasks in the SQLite store (sidecar.flows): schema version 2.

Grants keep the class and flow labels the policy reported, tasks their declared plan, and a
table holds each task's denials, so that a task's history, labels, plan and recent denials
survive a restart (`load_flows`). Every write here is a projection of an audit record, like
the rest of the store, so a replay of the log rebuilds it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..events import GrantDenied, GrantIssued, TaskBegun, TaskCompleted
from ..model import Grant, Intent, Task

MIGRATION = """
ALTER TABLE grants ADD COLUMN flow_class TEXT NOT NULL DEFAULT '';
ALTER TABLE grants ADD COLUMN flow_labels TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN plan TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS task_denials (task_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS task_denials_by_task ON task_denials (task_id, at);
"""
"""Schema version 1 to 2."""

FLOW_COLUMNS = "flow_class, flow_labels"


def apply_flow(conn: sqlite3.Connection, event: Any, ts: Callable[[str], float]) -> None:
    """The flow part of one audited event, after the store's own handler applied it."""
    if isinstance(event, GrantIssued) and (event.flow_class or event.flow_labels):
        conn.execute(
            "UPDATE grants SET flow_class = ?, flow_labels = ? WHERE grant_id = ?",
            (event.flow_class or "", " ".join(event.flow_labels or ()), event.grant_id),
        )
    elif isinstance(event, GrantDenied):
        conn.execute("INSERT INTO task_denials VALUES (?, ?)", (event.task_id, ts(event.time)))
    elif isinstance(event, TaskBegun) and event.plan:
        conn.execute(
            "UPDATE tasks SET plan = ? WHERE task_id = ?", (json.dumps(event.plan), event.task_id)
        )
    elif isinstance(event, TaskCompleted):
        # Only an active task's denials are ever asked about.
        conn.execute("DELETE FROM task_denials WHERE task_id = ?", (event.task_id,))


def set_flow(grant: Grant, flow_class: str, flow_labels: str) -> Grant:
    grant.flow_class = flow_class
    grant.flow_labels = tuple(flow_labels.split(" ")) if flow_labels else ()
    return grant


def load_flows(
    conn: sqlite3.Connection,
    tasks: Mapping[str, Task],
    live: Mapping[str, Grant],
    grant_from_row: Callable[[Sequence[Any]], Grant],
    grant_columns: str,
) -> None:
    """Give each active task its history (the active grants are `live`'s own objects, so
    the history sees them end), labels, plan and recent denials."""
    if not tasks:
        return
    width = len(grant_columns.split(","))
    for row in conn.execute(
        f"SELECT {', '.join('g.' + c.strip() for c in grant_columns.split(','))}, "
        "g.flow_class, g.flow_labels FROM grants g JOIN tasks t ON t.task_id = g.task_id "
        "WHERE t.state = 'active' ORDER BY g.issued_at"
    ):
        grant = live.get(row[0]) or grant_from_row(row[:width])
        set_flow(grant, row[width], row[width + 1])
        tasks[grant.task_id].flow.record_grant(grant)
    for task_id, plan in conn.execute(
        "SELECT task_id, plan FROM tasks WHERE state = 'active' AND plan != ''"
    ):
        tasks[task_id].flow.plan = tuple(
            Intent(i["action"], i["resource"], i.get("justification", ""), i.get("context", {}))
            for i in json.loads(plan)
        )
    for task_id, at in conn.execute(
        "SELECT d.task_id, d.at FROM task_denials d JOIN tasks t ON t.task_id = d.task_id "
        "WHERE t.state = 'active' ORDER BY d.at"
    ):
        tasks[task_id].flow.record_denial(at)
