"""Flows (sidecar/model.py, sidecar/store/flows.py): the flow report is type-checked, a
task's history is bounded without losing labels, the cache key follows the flow, and an
older SQLite store (schema 3, and schema 1) is migrated with its rows intact."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecar.cache import DecisionCache
from sidecar.errors import PolicyResultInvalid
from sidecar.model import HISTORY_CAP, Grant, GrantState, Identity, Intent, TaskFlow, Tier
from sidecar.policy import parse_decision, parse_plan
from sidecar.store.sqlite import SCHEMA_VERSION, SqliteStore

FLOW = {
    "class": "write",
    "labels": ["external_egress"],
    "task_labels": ["private_data", "untrusted_input"],
    "rules": ["flow_trifecta"],
    "plan_deviation": False,
}
ALLOW = {
    "allow": True,
    "tier": "jit",
    "approval_required": True,
    "ttl_seconds": 60,
    "audience": "email",
    "scope": ["email.send"],
    "reasons": ["flow_trifecta: …"],
    "cache_seconds": 0,
}


def parse(result: Any) -> Any:
    return parse_decision(json.dumps({"result": result}).encode(), action="email.send")


def grant(n: int, labels: tuple[str, ...] = ()) -> Grant:
    return Grant(
        f"g{n}", "t-1", "s", "docs.read", f"docs://p/{n}", Tier.STANDING, "docs", (), n, n + 9, "k",
        flow_class="read", flow_labels=labels,
    )  # fmt: skip


def test_flow_report_is_parsed_on_allow_and_deny() -> None:
    """The flow report of an allowed and of a denied decision is kept, field by field."""
    allowed = parse(ALLOW | {"flow": FLOW})
    denied = parse({"allow": False, "reasons": ["x: y"], "flow": FLOW | {"rules": []}})
    assert allowed.flow.cls == "write"
    assert allowed.flow.labels == ("external_egress",)
    assert allowed.flow.task_labels == ("private_data", "untrusted_input")
    assert allowed.flow.rules == ("flow_trifecta",)
    assert allowed.flow.flagged
    assert denied.flow.labels == ("external_egress",)
    assert not denied.flow.flagged
    assert parse(ALLOW).flow is None


@pytest.mark.parametrize(
    "flow",
    [
        "labels",
        {"class": 3},
        {"labels": "private_data"},
        {"labels": [""]},
        {"labels": ["x" * 129]},
        {"task_labels": [1]},
        {"rules": ["r"] * 65},
        {"plan_deviation": "yes"},
    ],
)
def test_a_malformed_flow_report_is_policy_result_invalid(flow: Any) -> None:
    """A flow report of the wrong shape is policy_result_invalid (shape): no token."""
    with pytest.raises(PolicyResultInvalid) as err:
        parse(ALLOW | {"flow": flow})
    assert err.value.cause == "shape"


def test_plan_evaluation_needs_one_decision_per_step() -> None:
    """plan_evaluation parses one decision per step, in order, and refuses a count that
    does not match the plan."""
    body = json.dumps({"result": {"steps": [ALLOW, {"allow": False}]}}).encode()
    steps = parse_plan(body, actions=["email.send", "docs.read"])
    assert [s.allow for s in steps] == [True, False]
    with pytest.raises(PolicyResultInvalid) as err:
        parse_plan(body, actions=["email.send"])
    assert err.value.cause == "shape"


def test_history_is_bounded_and_labels_outlive_it() -> None:
    """Past HISTORY_CAP the oldest entries leave the history and are counted; their labels
    stay on the task, and an ended grant is reported as ended."""
    flow = TaskFlow()
    flow.record_grant(grant(0, ("untrusted_input",)))
    for n in range(1, HISTORY_CAP + 5):
        flow.record_grant(grant(n))
    flow.history[-1].state, flow.history[-1].end_reason = GrantState.EXPIRED, "expired"
    sent = flow.as_input()
    assert len(sent["history"]) == HISTORY_CAP
    assert sent["history_dropped"] == 5
    assert sent["history"][0]["resource"] == "docs://p/5"
    assert sent["history"][-1] | {"time": ""} == {
        "action": "docs.read", "resource": f"docs://p/{HISTORY_CAP + 4}", "class": "read",
        "tier": "standing", "labels": [], "time": "", "state": "expired", "end_reason": "expired",
    }  # fmt: skip
    assert sent["flow_labels"] == ["untrusted_input"]


def test_cache_key_follows_labels_plan_and_denials() -> None:
    """A standing decision cached for a task is not reused once the task holds another
    label, declared another plan or was denied again."""
    me = Identity("spiffe://t/a", "t", "dev")
    read = Intent("docs.read", "docs://handbook/intro")
    flow = TaskFlow()
    keys = [DecisionCache.key(me, read, {}, flow.cache_key())]
    flow.record_grant(grant(1, ("private_data",)))
    keys.append(DecisionCache.key(me, read, {}, flow.cache_key()))
    flow.record_grant(grant(2, ("private_data",)))  # same labels: same key
    keys.append(DecisionCache.key(me, read, {}, flow.cache_key()))
    flow.record_denial(5.0)
    keys.append(DecisionCache.key(me, read, {}, flow.cache_key()))
    flow.plan = (read,)
    keys.append(DecisionCache.key(me, read, {}, flow.cache_key()))
    assert keys[0] == DecisionCache.key(me, read, {})
    assert keys[1] == keys[2]
    assert len({keys[0], keys[1], keys[3], keys[4]}) == 4


SCHEMAS = Path(__file__).parent / "schemas"
FAR = 4102444800.0  # 2100-01-01: the task and its grant are still active when the test runs


def old_store(path: Path, version: int) -> sqlite3.Connection:
    """A state file as a sidecar of `version` (1 or 3) wrote it (its schema, verbatim)."""
    conn = sqlite3.connect(path)
    schema = (SCHEMAS / "sqlite-v3.sql").read_text()
    if version == 1:  # before brokers' and delegation's tables (see the file's comment)
        schema = schema.split("-- schema 2:")[0]
    conn.executescript(schema)
    conn.execute(
        "INSERT INTO meta VALUES ('schema_version', ?), ('applied_seq', '7')", (str(version),)
    )
    conn.execute(
        "INSERT INTO tasks VALUES ('t-1', 's', 'goal', '{}', 1, ?, 10, 'active', 1, '', NULL, '')",
        (FAR,),
    )
    conn.execute(
        "INSERT INTO grants VALUES ('g1', 't-1', 's', 'docs.read', 'docs://x', '', 'standing', "
        "'docs', 'docs.read', 1, 2, 'k', '', '', 'expired', 'expired', 2)"
    )
    conn.execute(
        "INSERT INTO grants VALUES ('g2', 't-1', 's', 'tickets.read', 'tickets://t-1', '', "
        "'jit', 'tickets', 'tickets.read', 3, ?, 'k', '', '', 'active', '', NULL)",
        (FAR,),
    )
    return conn


def schema_of(store: SqliteStore) -> tuple[str, set[str]]:
    """The schema version a store records, and the names of its tables and indexes."""
    (version,) = store.writer.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'"
    ).fetchone()
    return version, {r[0] for r in store.writer.execute("SELECT name FROM sqlite_master")}


def test_a_schema_3_store_is_migrated_to_4_with_its_rows(tmp_path: Path) -> None:
    """A real schema-3 state file (leases, delegation) opens as schema 4: its rows, lease and
    principal are kept, the flow tables exist, and the task's history holds its ended and
    active grants (without labels: none were recorded before flows)."""
    path = tmp_path / "state.db"
    conn = old_store(path, 3)
    conn.execute(
        "INSERT INTO leases VALUES ('g2', 't-1', 'postgres', 'jit_g2', ?, '{}', 'active', 3, NULL)",
        (FAR,),
    )
    principal = {"subject": "alice", "issuer": "https://idp.example", "claims": {}}
    conn.execute("INSERT INTO task_principals VALUES ('t-1', ?)", (json.dumps(principal),))
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        version, tables = schema_of(store)
        snap = store.load()
        applied = store.applied_seq()
    finally:
        store.close()
    assert version == str(SCHEMA_VERSION)
    assert SCHEMA_VERSION == 4
    assert {"grant_flows", "task_plans", "task_denials", "leases", "task_principals"} <= tables
    assert applied == 7
    (task,) = snap.tasks
    assert task.principal is not None and task.principal.subject == "alice"
    assert [(g.grant_id, g.state.value, g.flow_labels) for g in task.flow.history] == [
        ("g1", "expired", ()),
        ("g2", "active", ()),
    ]
    assert task.flow.history[1] is snap.grants[0]  # the live grant: the history sees it end
    assert snap.grants[0].lease is not None and snap.grants[0].lease.handle == "jit_g2"
    assert task.flow.labels == set()
    assert task.flow.plan == ()
    reopened = SqliteStore(path)  # opening again changes nothing
    try:
        assert schema_of(reopened) == (version, tables)
    finally:
        reopened.close()


def test_a_schema_1_store_is_migrated_all_the_way(tmp_path: Path) -> None:
    """A schema-1 state file (before brokers, delegation and flows) opens as the current
    schema with every table of the versions between, and its grants keep their values."""
    path = tmp_path / "state.db"
    conn = old_store(path, 1)
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        version, tables = schema_of(store)
        row = store.writer.execute(
            "SELECT action, state FROM grants WHERE grant_id = 'g1'"
        ).fetchone()
    finally:
        store.close()
    assert version == str(SCHEMA_VERSION)
    assert {"leases", "task_principals", "grant_actors", "grant_flows", "task_plans",
            "task_denials"} <= tables  # fmt: skip
    assert row == ("docs.read", "expired")
