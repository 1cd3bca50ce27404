"""Metrics and logs as an SRE sees them: exact counters on /metrics after a scripted sequence,
and structured JSON logs that carry request facts and never a token. Real sidecar process,
real OPA."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import OpaServer, SidecarProcess, running, wait_for


def scrape(sidecar: SidecarProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(sidecar.http + "/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_are_exact_after_a_scripted_sequence(tmp_path: Path, opa: OpaServer) -> None:
    """3 standing + 2 JIT grants, 4 denials, then 1 agent revocation, 1 operator revocation,
    1 expiry and 2 completions: every counter and gauge has exactly that value."""
    process = SidecarProcess(tmp_path / "s", opa.url, "--sweep-interval", "0.2")
    with running(process) as sidecar, sidecar.client() as c, sidecar.admin() as admin:
        task = c.begin_task("metrics")
        standing = [
            c.request_grant(task.task_id, "docs.read", f"docs://{i}", ttl_seconds=120)
            for i in range(3)
        ]
        jit = [
            c.request_grant(
                task.task_id,
                "tickets.update",
                f"tickets://{i}",
                justification="closing stale ticket",
            )
            for i in range(2)
        ]
        for i in range(4):
            c.request_grant_raw(task.task_id, "payments.refund", f"payments://{i}")
        c.revoke_grant(standing[0].grant_id)
        admin.revoke(grant_id=standing[1].grant_id)
        short = c.request_grant(task.task_id, "docs.read", "docs://short", ttl_seconds=1)
        wait_for(lambda: sidecar.events("grant_expired"), 5, what="expiry")
        c.complete_task(task.task_id)  # revokes standing[2], jit[0], jit[1]
        m = scrape(sidecar)
        exposition = requests.get(sidecar.http + "/metrics", timeout=5).text
    assert short.grant_id
    assert m[("jit_grant_requests_total", (("decision", "granted"), ("tier", "standing")))] == 4
    assert m[("jit_grant_requests_total", (("decision", "granted"), ("tier", "jit")))] == 2
    assert m[("jit_grant_requests_total", (("decision", "denied"), ("tier", "")))] == 4
    assert m[("jit_revocations_total", (("reason", "revoked_by_agent"),))] == 1
    assert m[("jit_revocations_total", (("reason", "revoked_by_operator"),))] == 1
    assert m[("jit_revocations_total", (("reason", "expired"),))] == 1
    assert m[("jit_revocations_total", (("reason", "completed"),))] == 3
    assert m[("jit_active_grants", (("tier", "standing"),))] == 0
    assert m[("jit_active_grants", (("tier", "jit"),))] == 0
    assert m[("jit_active_tasks", ())] == 0
    assert m[("jit_grant_ttl_seconds_count", ())] == 6
    assert m[("jit_revocation_lag_seconds_count", (("reason", "completed"),))] == 3
    assert m[("jit_rpc_duration_seconds_count", (("code", "OK"), ("method", "RequestGrant")))] == 10
    assert m[("jit_build_info", (("version", "0.1.0"),))] == 1
    assert jit[0].token not in exposition
    assert task.task_id not in exposition


def test_logs_are_json_lines_with_request_facts_and_no_tokens(sidecar: SidecarProcess) -> None:
    """Every stderr line is a JSON object; grant lines carry task_id, grant_id and tier;
    denials carry the reason code; no token or private key appears anywhere."""
    with sidecar.client() as c:
        task = c.begin_task("logs")
        grant = c.request_grant(
            task.task_id, "tickets.update", "tickets://1", justification="closing stale ticket"
        )
        c.request_grant_raw(task.task_id, "payments.refund", "payments://1")
        c.complete_task(task.task_id)
    time.sleep(0.2)
    raw = sidecar.log()
    records = [json.loads(line) for line in raw.splitlines()]
    issued = [r for r in records if r["msg"].startswith("grant issued")]
    denied = [r for r in records if r["msg"].startswith("grant denied")]
    assert issued[0]["task_id"] == task.task_id
    assert issued[0]["grant_id"] == grant.grant_id
    assert issued[0]["tier"] == "jit"
    assert denied[0]["reason"] == "cross_domain"
    assert all({"time", "level", "logger", "msg"} <= set(r) for r in records)
    assert grant.token not in raw
    assert grant.token.split(".")[2] not in raw
    assert "PRIVATE KEY" not in raw


def test_text_log_format_for_people(tmp_path: Path, opa: OpaServer) -> None:
    """--log-format text prints one readable line per event with its facts in brackets."""
    process = SidecarProcess(tmp_path / "s", opa.url)
    process.extra += ["--log-format", "text", "--log-level", "info"]
    with running(process) as sidecar, sidecar.client() as c:
        task = c.begin_task("text")
        c.request_grant(task.task_id, "docs.read", "docs://a")
    lines = [line for line in sidecar.log().splitlines() if "grant issued" in line]
    assert lines
    assert lines[0].startswith("info")
    assert f"task_id={task.task_id}" in lines[0]
