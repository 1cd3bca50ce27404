"""OPA as it is run in operation, against the real `opa` binary and a real sidecar process
over its Unix socket: decision ids end to end, metric series that exist from start-up, and
`jit-sidecar policy explain` over TCP and OPA's Unix socket."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sidecar.client import AccessDenied
from sidecar.metrics import REJECTION_REASONS, rpc_methods
from sidecar.model import RevocationReason
from sidecar.policy import CAUSES
from tests.harness import OpaServer, SidecarProcess, running, wait_for


def decision_log(opa: OpaServer) -> dict[str, dict[str, Any]]:
    """OPA's console decision log (JSON lines on its stderr), by decision_id."""
    entries = {}
    for line in opa.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("msg") == "Decision Log":
                entries[entry["decision_id"]] = entry
    return entries


def test_grant_and_denial_carry_opas_decision_id(tmp_path: Path, own_opa: OpaServer) -> None:
    """RequestGrant's answer, AccessDenied and the audit records carry the decision_id that
    OPA's console decision log shows for that very decision."""
    with running(SidecarProcess(tmp_path / "s", own_opa.url)) as sidecar, sidecar.client() as c:
        task = c.begin_task("triage", labels={"purpose": "support"})
        granted = c.request_grant_raw(
            task.task_id, "tickets.update", "tickets://T-7", justification="asked to close"
        )
        with pytest.raises(AccessDenied) as denied:
            c.request_grant(task.task_id, "payments.refund", "payments://orders/1")
        (issued,) = sidecar.events("grant_issued")
        (refused,) = sidecar.events("grant_denied")
    wanted = {granted.decision_id, denied.value.decision_id}

    def logged_both() -> dict[str, dict[str, Any]] | None:
        log = decision_log(own_opa)
        return log if wanted <= set(log) else None

    logged = wait_for(logged_both, 10, what="OPA's decision log")
    assert granted.decision_id != ""
    assert denied.value.decision_id not in ("", granted.decision_id)
    assert issued["decision_id"] == granted.decision_id
    assert refused["decision_id"] == denied.value.decision_id
    assert logged[granted.decision_id]["path"] == "jit/decision"
    assert logged[granted.decision_id]["result"]["allow"] is True
    assert logged[granted.decision_id]["input"]["intent"]["resource"] == "tickets://T-7"
    assert logged[denied.value.decision_id]["result"]["allow"] is False


def _samples(sidecar: SidecarProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(sidecar.http + "/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_fresh_sidecar_exposes_every_known_series_at_zero(sidecar: SidecarProcess) -> None:
    """Before any request, policy errors, rejections, RPC durations (code OK) and revocation
    lag exist for every known label combination, at 0."""
    samples = _samples(sidecar)
    expected = [
        *(
            ("jit_policy_errors_total", {"reason": r.value, "cause": c})
            for r, causes in CAUSES.items()
            for c in causes
        ),
        *(("jit_rejected_requests_total", {"reason": r}) for r in REJECTION_REASONS),
        *(("jit_rpc_duration_seconds_count", {"method": m, "code": "OK"}) for m in rpc_methods()),
        *(("jit_revocation_lag_seconds_count", {"reason": r.value}) for r in RevocationReason),
    ]
    keys = [(name, frozenset(labels.items())) for name, labels in expected]
    missing = [key for key in keys if key not in samples]
    values = {samples[key] for key in keys if key in samples}
    assert missing == []
    assert values == {0.0}
    assert len(expected) == 7 + len(REJECTION_REASONS) + len(rpc_methods()) + 10
    assert {"RequestGrant", "BeginTask", "Admin.Revoke"} <= set(rpc_methods())
