"""The flow state of tasks in the SQLite store (model.TaskFlow): schema version 4.

Tables of their own (`grant_flows`, `task_plans`, `task_denials` in sqlite.SCHEMA) keep the
class and flow labels the policy reported for each grant, each task's declared plan and its
denials, so that a task's history, labels, plan and recent denials
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

FLOW_COLUMNS = "flow_class, flow_labels"
"""Read from GRANTS_WITH_FLOWS after the grant's own columns (NULL for a grant without)."""
GRANTS_WITH_FLOWS = "grants LEFT JOIN grant_flows USING (grant_id)"


def apply_flow(conn: sqlite3.Connection, event: Any, ts: Callable[[str], float]) -> None:
    """The flow part of one audited event, after the store's own handler applied it."""
    if isinstance(event, GrantIssued) and (event.flow_class or event.flow_labels):
        conn.execute(
            "INSERT OR REPLACE INTO grant_flows VALUES (?, ?, ?)",
            (event.grant_id, event.flow_class or "", " ".join(event.flow_labels or ())),
        )
    elif isinstance(event, GrantDenied):
        conn.execute("INSERT INTO task_denials VALUES (?, ?)", (event.task_id, ts(event.time)))
    elif isinstance(event, TaskBegun) and event.plan:
        conn.execute(
            "INSERT OR REPLACE INTO task_plans VALUES (?, ?)",
            (event.task_id, json.dumps(event.plan)),
        )
    elif isinstance(event, TaskCompleted):
        # Only an active task's denials are ever asked about.
        conn.execute("DELETE FROM task_denials WHERE task_id = ?", (event.task_id,))


def set_flow(grant: Grant, flow_class: str | None, flow_labels: str | None) -> Grant:
    """A grant read with FLOW_COLUMNS: its class and labels (none before schema 4)."""
    grant.flow_class = flow_class or ""
    grant.flow_labels = tuple(flow_labels.split(" ")) if flow_labels else ()
    return grant


def load_flows(
    conn: sqlite3.Connection,
    tasks: Mapping[str, Task],
    live: Mapping[str, Grant],
    grant_from_row: Callable[[Sequence[Any]], Grant],
    read_columns: str,
) -> None:
    """Give each active task its history (the active grants are `live`'s own objects, so
    the history sees them end), labels, plan and recent denials. `grant_from_row` reads
    `read_columns` (the grant's columns, then FLOW_COLUMNS)."""
    if not tasks:
        return
    for row in conn.execute(
        f"SELECT {read_columns} FROM {GRANTS_WITH_FLOWS} WHERE task_id IN "
        "(SELECT task_id FROM tasks WHERE state = 'active') ORDER BY issued_at"
    ):
        stored = grant_from_row(row)
        grant = live.get(stored.grant_id)
        if grant is None:
            grant = stored
        else:
            set_flow(grant, stored.flow_class, " ".join(stored.flow_labels))
        tasks[grant.task_id].flow.record_grant(grant)
    for task_id, plan in conn.execute(
        "SELECT p.task_id, p.plan FROM task_plans p JOIN tasks t ON t.task_id = p.task_id "
        "WHERE t.state = 'active'"
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
