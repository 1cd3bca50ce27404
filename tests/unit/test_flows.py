"""Flows (sidecar/flows.py, sidecar/store/flows.py): the flow report is type-checked, a
task's history is bounded without losing labels, the cache key follows the flow, and an
older SQLite store is migrated with its rows intact."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecar.cache import DecisionCache
from sidecar.errors import PolicyResultInvalid
from sidecar.flows import HISTORY_CAP, TaskFlow
from sidecar.model import Grant, GrantState, Identity, Intent, Tier
from sidecar.policy import parse_decision, parse_plan
from sidecar.store.sqlite import SCHEMA, SqliteStore

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


def test_a_schema_1_store_is_migrated_with_its_rows(tmp_path: Path) -> None:
    """A store written before flows (schema 1) opens as schema 2: its grants keep their
    values and gain empty flow columns, and the denials table exists."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('applied_seq', '7')")
    conn.execute(
        "INSERT INTO grants VALUES ('g1', 't-1', 's', 'docs.read', 'docs://x', '', 'standing', "
        "'docs', 'docs.read', 1, 2, 'k', '', '', 'expired', 'expired', 2)"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        version = store.writer.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        row = store.writer.execute(
            "SELECT action, state, flow_class, flow_labels FROM grants"
        ).fetchone()
        denials = store.writer.execute("SELECT COUNT(*) FROM task_denials").fetchone()
        applied = store.applied_seq()
    finally:
        store.close()
    assert version == ("2",)
    assert row == ("docs.read", "expired", "", "")
    assert denials == (0,)
    assert applied == 7
    reopened = SqliteStore(path)  # migrating again is a no-op
    reopened.close()
